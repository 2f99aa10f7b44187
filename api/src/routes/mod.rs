//! Routes: one file per resource.

mod branches;
mod budget;
mod compare;
mod datasets;
mod docs;
mod evaluations;
mod events;
mod health;
mod history;
mod keys;
mod labels;
mod limits;
mod models;
pub mod openapi;
mod optimizations;
mod progress;
mod promotions;
mod prompts;
pub mod ui;
mod webhooks;

use actix_web::dev::HttpServiceFactory;
use actix_web::http::Method;
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder, web};
use assay_core::db::models::MAX_PAGE_SIZE;
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

/// One path and the handlers of its methods: the single list that both
/// registers the routes with actix ([`configure`]) and is checked against
/// the OpenAPI document (the `openapi` tests), so neither can lack a route.
pub struct ApiResource {
    /// actix's pattern (`{tail:.*}` style); [`ApiResource::openapi_path`] drops the regexes.
    pattern: &'static str,
    methods: Vec<Method>,
    resource: actix_web::Resource,
}

impl ApiResource {
    fn new(pattern: &'static str) -> Self {
        Self {
            pattern,
            methods: Vec::new(),
            resource: web::resource(pattern),
        }
    }

    fn method<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::method(method.clone()).to(handler));
        self.methods.push(method);
        self
    }

    fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::GET, handler)
    }

    fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::POST, handler)
    }

    fn put<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::PUT, handler)
    }

    fn delete<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.method(Method::DELETE, handler)
    }

    /// The path as OpenAPI writes it: `{tail:.*}` becomes `{tail}`.
    pub fn openapi_path(&self) -> String {
        let mut path = String::with_capacity(self.pattern.len());
        let mut in_regex = false;
        for c in self.pattern.chars() {
            match c {
                ':' if !in_regex => in_regex = true,
                '}' => {
                    in_regex = false;
                    path.push(c);
                }
                _ if !in_regex => path.push(c),
                _ => {}
            }
        }
        path
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// The actix resource, answering 405 (with `Allow`) to other methods.
    fn into_service(self) -> impl HttpServiceFactory {
        let allow: Vec<&'static str> = self.methods.iter().map(method_name).collect();
        self.resource
            .default_service(web::to(move |request: HttpRequest| {
                let allow = allow.clone();
                async move {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                        method: request.method().to_string(),
                        allow,
                    })
                }
            }))
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "OPTIONS",
    }
}

/// Every route the API serves.
pub fn resources() -> Vec<ApiResource> {
    vec![
        ApiResource::new("/healthz").get(health::healthz),
        ApiResource::new("/readyz").get(health::readyz),
        ApiResource::new("/metrics").get(health::metrics),
        ApiResource::new("/openapi.json").get(openapi::openapi_json),
        ApiResource::new("/docs").get(docs::page),
        ApiResource::new("/docs/assets/{name}").get(docs::asset),
        ApiResource::new("/").get(ui::root),
        ApiResource::new("/ui").get(ui::to_viewer),
        ApiResource::new("/ui/assets/{name}").get(ui::asset),
        ApiResource::new("/ui/{tail:.*}").get(ui::page),
        ApiResource::new("/v1/prompts")
            .get(prompts::list)
            .post(prompts::create),
        ApiResource::new("/v1/prompts/{prompt_id}").get(prompts::get),
        ApiResource::new("/v1/prompts/{prompt_id}/versions")
            .get(prompts::list_versions)
            .post(prompts::commit_version),
        ApiResource::new("/v1/prompts/{prompt_id}/versions/{version}").get(prompts::get_version),
        ApiResource::new("/v1/prompts/{prompt_id}/versions/{version}/log").get(history::log),
        ApiResource::new("/v1/prompts/{prompt_id}/versions/{version}/children")
            .get(history::children),
        ApiResource::new("/v1/prompts/{prompt_id}/common-ancestor").get(history::common_ancestor),
        ApiResource::new("/v1/prompts/{prompt_id}/diff").get(history::diff),
        ApiResource::new("/v1/prompts/{prompt}/resolve").get(history::resolve),
        ApiResource::new("/v1/prompts/{prompt_id}/branches")
            .get(branches::list)
            .post(branches::create),
        ApiResource::new("/v1/prompts/{prompt_id}/branches/{name}")
            .get(branches::get)
            .delete(branches::delete),
        ApiResource::new("/v1/prompts/{prompt_id}/branches/{name}/revert").post(branches::revert),
        ApiResource::new("/v1/prompts/{prompt_id}/labels").get(labels::list),
        ApiResource::new("/v1/prompts/{prompt_id}/labels/{name}")
            .get(labels::get)
            .put(labels::put),
        ApiResource::new("/v1/prompts/{prompt_id}/labels/{name}/history").get(labels::history),
        ApiResource::new("/v1/prompts/{prompt_id}/promotions").post(promotions::create),
        ApiResource::new("/v1/promotions/{promotion_id}").get(promotions::get),
        ApiResource::new("/v1/promotions/{promotion_id}/cancel").post(promotions::cancel),
        ApiResource::new("/v1/prompts/{prompt_id}/optimizations").post(optimizations::create),
        ApiResource::new("/v1/optimizations/{optimization_id}").get(optimizations::get),
        ApiResource::new("/v1/optimizations/{optimization_id}/cancel").post(optimizations::cancel),
        ApiResource::new("/v1/budget")
            .get(budget::get)
            .put(budget::put),
        ApiResource::new("/v1/keys")
            .get(keys::list)
            .post(keys::create),
        ApiResource::new("/v1/keys/{key_id}")
            .get(keys::get)
            .delete(keys::revoke),
        ApiResource::new("/v1/limits").get(limits::get),
        ApiResource::new("/v1/models").get(models::list),
        ApiResource::new("/v1/datasets")
            .get(datasets::list)
            .post(datasets::create),
        ApiResource::new("/v1/datasets/{dataset_id}").get(datasets::get),
        ApiResource::new("/v1/datasets/{dataset_id}/items").get(datasets::items),
        ApiResource::new("/v1/evaluations")
            .get(evaluations::list)
            .post(evaluations::create),
        ApiResource::new("/v1/evaluations/{evaluation_id}").get(evaluations::get),
        ApiResource::new("/v1/evaluations/{evaluation_id}/cancel").post(evaluations::cancel),
        ApiResource::new("/v1/evaluations/{evaluation_id}/resume").post(evaluations::resume),
        ApiResource::new("/v1/evaluations/{evaluation_id}/retry-errors")
            .post(evaluations::retry_errors),
        ApiResource::new("/v1/evaluations/{evaluation_id}/regrade").post(evaluations::regrade),
        ApiResource::new("/v1/evaluations/{evaluation_id}/progress").get(progress::progress),
        ApiResource::new("/v1/evaluations/{evaluation_id}/events").get(events::events),
        ApiResource::new("/v1/evaluations/{evaluation_id}/latency").get(evaluations::latency),
        ApiResource::new("/v1/evaluations/{evaluation_id}/results").get(evaluations::results),
        ApiResource::new("/v1/evaluations/{a}/compare/{b}").get(compare::compare),
        ApiResource::new("/v1/evaluations/{a}/compare/{b}/changes").get(compare::changes),
        ApiResource::new("/v1/webhooks")
            .get(webhooks::list)
            .post(webhooks::create),
        ApiResource::new("/v1/webhooks/{webhook_id}")
            .get(webhooks::get)
            .delete(webhooks::delete),
        ApiResource::new("/v1/webhooks/{webhook_id}/deliveries").get(webhooks::deliveries),
    ]
}

pub fn configure(config: &mut web::ServiceConfig) {
    for resource in resources() {
        config.service(resource.into_service());
    }
    config.default_service(web::to(no_route));
}

/// A NUL (`%00`) in a `/v1` path or query string: PostgreSQL cannot hold it
/// in text, and no name, id or cursor contains one. A path with it names
/// nothing (404); a query parameter with it is invalid input (422 naming the
/// parameter, as for a body field), so no handler needs its own check.
pub async fn refuse_nul(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let has_nul = |text: &str| text.contains("%00");
    // (The viewer's pages outside `/v1` touch no database: they are left alone.)
    let under_v1 = request.path().starts_with("/v1/");
    let error = if !under_v1 {
        None
    } else if has_nul(request.path()) {
        Some(ApiError::NotFound("resource"))
    } else if has_nul(request.query_string()) {
        // Named like a NUL in a body field: 422 with the parameter as `field`.
        let field = request
            .query_string()
            .split('&')
            .find(|pair| has_nul(pair))
            .map(|pair| pair.split('=').next().unwrap_or(pair))
            .filter(|name| !name.is_empty() && !has_nul(name))
            .unwrap_or("query")
            .to_owned();
        Some(ApiError::invalid(field, "must not contain NUL (\\u0000)"))
    } else {
        None
    };
    match error {
        Some(error) => Ok(crate::rate_limit::error_response(request, error)),
        None => Ok(next.call(request).await?.map_into_boxed_body()),
    }
}

async fn no_route(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute(format!(
        "{} {}",
        request.method(),
        request.path()
    )))
}

/// `?after=<cursor>&limit=<n>` on every list endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_after` of the previous page.
    pub after: Option<String>,
    /// Rows per page (1 to 1000, default 100).
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

    /// `after` parsed as the id of a resource of the listed kind.
    pub fn after_id<Id: std::str::FromStr>(&self) -> Result<Option<Id>, ApiError> {
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageBody<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    /// Pass as `after` for the next page; null on the last.
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
