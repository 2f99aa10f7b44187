//! Routes: one file per resource.

mod branches;
mod budget;
mod compare;
mod datasets;
mod evaluations;
mod events;
mod health;
mod history;
mod keys;
mod labels;
mod limits;
mod models;
mod optimizations;
mod progress;
mod promotions;
mod prompts;
pub mod ui;
mod webhooks;

use actix_web::{HttpRequest, HttpResponse, web};
use assay_core::db::models::MAX_PAGE_SIZE;
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/", web::get().to(ui::to_viewer))
        .route("/ui", web::get().to(ui::to_viewer))
        .route("/ui/assets/{name}", web::get().to(ui::asset))
        .route("/ui/{tail:.*}", web::get().to(ui::page))
        .service(
            web::scope("/v1")
                .service(
                    web::resource("/prompts")
                        .get(prompts::list)
                        .post(prompts::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}")
                        .get(prompts::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/versions")
                        .get(prompts::list_versions)
                        .post(prompts::commit_version)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/versions/{version}")
                        .get(prompts::get_version)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/versions/{version}/log")
                        .get(history::log)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/versions/{version}/children")
                        .get(history::children)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/common-ancestor")
                        .get(history::common_ancestor)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/diff")
                        .get(history::diff)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt}/resolve")
                        .get(history::resolve)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/branches")
                        .get(branches::list)
                        .post(branches::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/branches/{name}")
                        .get(branches::get)
                        .delete(branches::delete)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/branches/{name}/revert")
                        .post(branches::revert)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/labels")
                        .get(labels::list)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/labels/{name}")
                        .get(labels::get)
                        .put(labels::put)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/labels/{name}/history")
                        .get(labels::history)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/promotions")
                        .post(promotions::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/promotions/{promotion_id}")
                        .get(promotions::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/promotions/{promotion_id}/cancel")
                        .post(promotions::cancel)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/prompts/{prompt_id}/optimizations")
                        .post(optimizations::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/optimizations/{optimization_id}")
                        .get(optimizations::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/optimizations/{optimization_id}/cancel")
                        .post(optimizations::cancel)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/budget")
                        .get(budget::get)
                        .put(budget::put)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/keys")
                        .get(keys::list)
                        .post(keys::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/keys/{key_id}")
                        .get(keys::get)
                        .delete(keys::revoke)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/limits")
                        .get(limits::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/models")
                        .get(models::list)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/datasets")
                        .get(datasets::list)
                        .post(datasets::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/datasets/{dataset_id}")
                        .get(datasets::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/datasets/{dataset_id}/items")
                        .get(datasets::items)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations")
                        .get(evaluations::list)
                        .post(evaluations::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}")
                        .get(evaluations::get)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/cancel")
                        .post(evaluations::cancel)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/resume")
                        .post(evaluations::resume)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/retry-errors")
                        .post(evaluations::retry_errors)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/regrade")
                        .post(evaluations::regrade)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/progress")
                        .get(progress::progress)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/events")
                        .get(events::events)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/latency")
                        .get(evaluations::latency)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{evaluation_id}/results")
                        .get(evaluations::results)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{a}/compare/{b}")
                        .get(compare::compare)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/evaluations/{a}/compare/{b}/changes")
                        .get(compare::changes)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/webhooks")
                        .get(webhooks::list)
                        .post(webhooks::create)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/webhooks/{webhook_id}")
                        .get(webhooks::get)
                        .delete(webhooks::delete)
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/webhooks/{webhook_id}/deliveries")
                        .get(webhooks::deliveries)
                        .default_service(web::to(method_not_allowed)),
                ),
        )
        .default_service(web::to(no_route));
}

async fn no_route(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute(format!(
        "{} {}",
        request.method(),
        request.path()
    )))
}

async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(request.method().to_string()))
}

/// `?after=<cursor>&limit=<n>` on every list endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
}

impl PageQuery {
    pub const DEFAULT_LIMIT: i64 = 100;

    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
            Some(_) => Err(ApiError::InvalidQuery(format!(
                "limit must be between 1 and {MAX_PAGE_SIZE}"
            ))),
        }
    }

    /// `after` parsed as a number (a position or a version); `what` names it in the error.
    pub fn after_number(&self, what: &str) -> Result<Option<i32>, ApiError> {
        self.after
            .as_deref()
            .map(|after| {
                after
                    .parse::<i32>()
                    .map_err(|_| ApiError::InvalidQuery(format!("after must be {what}")))
            })
            .transpose()
    }

    /// `after` parsed as a resource id.
    pub fn after_id(&self) -> Result<Option<uuid::Uuid>, ApiError> {
        self.after
            .as_deref()
            .map(|after| {
                after.parse().map_err(|_| {
                    ApiError::InvalidQuery("after must be an id from a previous page".to_owned())
                })
            })
            .transpose()
    }
}

/// A page as the API returns it: the rows, whether more follow, and the
/// cursor to pass as `after` for the next page.
#[derive(Debug, Serialize)]
pub struct PageBody<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    pub next_after: Option<String>,
}

impl<T> PageBody<T> {
    pub fn new(page: assay_core::db::models::Page<T>, cursor: impl Fn(&T) -> String) -> Self {
        let next_after = if page.has_more {
            page.data.last().map(cursor)
        } else {
            None
        };
        Self {
            data: page.data,
            has_more: page.has_more,
            next_after,
        }
    }
}
