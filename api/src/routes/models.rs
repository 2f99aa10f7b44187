//! `GET /v1/models`: the models jobs may name, from the registry, without keys.

use actix_web::{HttpResponse, web};
use assay_core::providers::Model;
use serde::Serialize;
use serde_json::json;

use crate::auth::Authenticated;
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelBody<'a> {
    name: &'a str,
    provider: &'static str,
    upstream_model: &'a str,
    /// Dollars per million tokens.
    price: serde_json::Value,
    limits: serde_json::Value,
    #[schema(value_type = u64)]
    timeout_ms: u128,
    max_attempts: u32,
    #[schema(value_type = Vec<String>)]
    fallbacks: &'a [String],
}

impl<'a> From<&'a Model> for ModelBody<'a> {
    fn from(model: &'a Model) -> Self {
        Self {
            name: &model.name,
            provider: model.provider.provider_name(),
            upstream_model: &model.upstream,
            price: json!({
                "input": model.price.input_per_million,
                "output": model.price.output_per_million,
                "cached": model.price.cached_input_per_million,
            }),
            limits: json!({
                "requests_per_minute": model.limits.requests_per_minute,
                "tokens_per_minute": model.limits.tokens_per_minute,
                "concurrency": model.limits.concurrency,
                "burst": model.limits.burst,
            }),
            timeout_ms: model.timeout.as_millis(),
            max_attempts: model.max_attempts,
            fallbacks: &model.fallbacks,
        }
    }
}

#[utoipa::path(
    get,
    operation_id = "models.list",
    path = "/v1/models",
    tag = "tenant",
    responses(
        (status = 200, description = "The models of the registry", body = ModelsBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, _caller: Authenticated) -> HttpResponse {
    let models: Vec<_> = state.catalog.models().map(ModelBody::from).collect();
    HttpResponse::Ok().json(ModelsBody {
        data: models,
        builtin: "mock and mock:<options> (see the README) are always available",
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelsBody<'a> {
    data: Vec<ModelBody<'a>>,
    /// The models that need no registry entry.
    builtin: &'static str,
}
