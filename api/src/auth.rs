//! Bearer API keys: the extractor that turns `Authorization: Bearer <key>`
//! into the calling tenant, or a 401.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use assay_core::db::models::api_keys::{self, Caller};

use crate::errors::ApiError;
use crate::startup::AppState;

/// The authenticated caller of a request.
pub struct Authenticated(pub Caller);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })
            .filter(|token| !token.is_empty());
        let state = request.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let key = key.ok_or(ApiError::Unauthorized)?;
            let state = state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no app state")))?;
            let mut conn = state.pool.get().await?;
            let caller = api_keys::authenticate(&mut conn, &key)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            // Every later line of the request names its tenant.
            tracing::Span::current().record("tenant", tracing::field::display(caller.tenant_id));
            Ok(Authenticated(caller))
        })
    }
}
