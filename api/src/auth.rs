//! Bearer API keys: the extractor that turns `Authorization: Bearer <key>`
//! into the calling tenant, or a 401. The key is checked once per request,
//! by the [`crate::rate_limit`] middleware; the extractor reads its answer.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use assay_core::db::models::api_keys::{self, Caller, KeyScope};

use crate::errors::ApiError;
use crate::rate_limit::{ResolvedCaller, bearer_token};
use crate::startup::AppState;

/// The authenticated caller of a request.
pub struct Authenticated(pub Caller);

impl Authenticated {
    /// The caller, if its key has the admin scope; else 403.
    pub fn admin(self, action: &str) -> Result<Caller, ApiError> {
        match self.0.scope {
            KeyScope::Admin => Ok(self.0),
            KeyScope::Member => Err(ApiError::Forbidden(format!(
                "only an admin key may {action}"
            ))),
        }
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let resolved = request.extensions().get::<ResolvedCaller>().copied();
        let key = bearer_token(request.headers());
        let state = request.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let caller = match resolved {
                Some(ResolvedCaller(caller)) => caller,
                // Not through the middleware (a route outside `/v1`): check here.
                None => {
                    let key = key.ok_or(ApiError::Unauthorized)?;
                    let state =
                        state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no app state")))?;
                    let mut conn = state.pool.get().await?;
                    api_keys::authenticate(&mut conn, &key).await?
                }
            };
            let caller = caller.ok_or(ApiError::Unauthorized)?;
            // Every later line of the request names its tenant.
            tracing::Span::current().record("tenant", tracing::field::display(caller.tenant_id));
            Ok(Authenticated(caller))
        })
    }
}
