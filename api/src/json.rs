//! The JSON body extractor of every route: actix's `Json` (size limit,
//! content type and error mapping from the app's `JsonConfig`), plus a
//! refusal of NUL characters anywhere in the body with a 422 naming the
//! field. PostgreSQL stores NUL in neither `text` nor `jsonb`, so such a
//! body would otherwise fail its write with a 500. A body still arriving
//! after the total body time (`ASSAY_BODY_TIMEOUT`) is a 408.

use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::{ApiError, json_error};

/// A request body of type `T`, checked for NUL characters.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Json::<Value>::from_request(request, payload);
        // A body that trickles in is cut off after the total body time.
        let limit = request
            .app_data::<web::Data<crate::startup::AppState>>()
            .map(|state| state.body_timeouts.total);
        Box::pin(async move {
            let web::Json(value) = match limit {
                None => body.await?,
                Some(limit) => tokio::time::timeout(limit, body).await.map_err(|_| {
                    ::metrics::counter!("assay_request_body_timeouts_total").increment(1);
                    ApiError::BodyTimeout(format!("the request body took more than {limit:?}"))
                })??,
            };
            assay_core::domain::reject_nul("", &value).map_err(ApiError::from)?;
            let typed = serde_json::from_value(value).map_err(|error| json_error(&error))?;
            Ok(Json(typed))
        })
    }
}
