//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the domain types' `ToSchema` derives (core feature
//! `openapi`), served at `GET /openapi.json`.
//!
//! The error responses every route shares (401 and 429 from the key check,
//! 503 when PostgreSQL is down, the body and query failures of the
//! extractors, the `Idempotency-Key` outcomes of POSTs) come from the same
//! middleware and extractors for every route, so [`SharedErrors`] adds them
//! here by rule rather than 50 handlers repeating them. Each error response
//! is `application/problem+json` whose `code` lists exactly the codes of
//! [`crate::errors::CODES`] with that status which the operation can send.

use actix_web::HttpResponse;
use utoipa::openapi::OpenApi as Document;

use shared::SharedErrors;
pub use shared::VersionRefSchema;

/// `Bearer <key>` on everything under `/v1`.
pub const SECURITY_SCHEME: &str = "api_key";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Assay API",
        description = "Prompt versioning and LLM evaluations. Everything under `/v1` needs \
            `Authorization: Bearer <key>`; errors are RFC 9457 problem details \
            (`application/problem+json`) with a stable `code`.",
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
        super::docs::page,
        super::docs::asset,
        super::ui::root,
        super::ui::to_viewer,
        super::ui::asset,
        super::ui::page,
        super::prompts::list,
        super::prompts::create,
        super::prompts::get,
        super::prompts::list_versions,
        super::prompts::commit_version,
        super::prompts::get_version,
        super::history::log,
        super::history::children,
        super::history::common_ancestor,
        super::history::diff,
        super::history::resolve,
        super::branches::list,
        super::branches::create,
        super::branches::get,
        super::branches::delete,
        super::branches::revert,
        super::labels::list,
        super::labels::get,
        super::labels::put,
        super::labels::history,
        super::promotions::create,
        super::promotions::get,
        super::promotions::cancel,
        super::optimizations::create,
        super::optimizations::get,
        super::optimizations::cancel,
        super::budget::get,
        super::budget::put,
        super::keys::list,
        super::keys::create,
        super::keys::get,
        super::keys::revoke,
        super::limits::get,
        super::models::list,
        super::datasets::list,
        super::datasets::create,
        super::datasets::get,
        super::datasets::items,
        super::evaluations::list,
        super::evaluations::create,
        super::evaluations::get,
        super::evaluations::cancel,
        super::evaluations::resume,
        super::evaluations::retry_errors,
        super::evaluations::regrade,
        super::progress::progress,
        super::events::events,
        super::evaluations::latency,
        super::evaluations::results,
        super::compare::compare,
        super::compare::changes,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::get,
        super::webhooks::delete,
        super::webhooks::deliveries,
    ),
    modifiers(&SharedErrors),
    tags(
        (name = "prompts", description = "Prompts, their versions, history, branches and labels"),
        (name = "datasets", description = "Datasets of items (JSON, JSON Lines or CSV)"),
        (name = "evaluations", description = "Evaluations: submit, follow, results, compare"),
        (name = "automation", description = "Promotions and optimizations"),
        (name = "tenant", description = "Keys, limits, budget, models, webhooks"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "ui", description = "The web viewer and the API docs page (HTML, not JSON)"),
    )
)]
pub struct ApiDoc;

/// The document, built once per process.
pub fn document() -> &'static Document {
    static DOCUMENT: std::sync::OnceLock<Document> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(<ApiDoc as utoipa::OpenApi>::openapi)
}

/// This document.
#[utoipa::path(
    get,
    operation_id = "openapi.openapi_json",
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(
        document()
            .to_json()
            .expect("the OpenAPI document serializes"),
    )
}

/// The rules the [`ApiDoc`] modifier applies (a module of its own so that the
/// derive's generated paths meet none of these imports).
mod shared {
    use utoipa::Modify;
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    use utoipa::openapi::{OpenApi as Document, RefOr, Required, Schema};

    use super::SECURITY_SCHEME;
    use crate::errors::CODES;

    /// Adds the security scheme and the error responses every route shares.
    pub struct SharedErrors;

    impl Modify for SharedErrors {
        fn modify(&self, openapi: &mut Document) {
            let components = openapi.components.get_or_insert_with(Default::default);
            components.add_security_scheme(
                SECURITY_SCHEME,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API key (`assay_...`), made with `assay-api keys create` or `POST /v1/keys`",
                        ))
                        .build(),
                ),
            );
            for (path, item) in openapi.paths.paths.iter_mut() {
                let operations = [
                    ("GET", &mut item.get),
                    ("PUT", &mut item.put),
                    ("POST", &mut item.post),
                    ("DELETE", &mut item.delete),
                    ("PATCH", &mut item.patch),
                ];
                for (method, operation) in operations {
                    if let Some(operation) = operation {
                        shared_errors(path, method, operation);
                    }
                }
            }
        }
    }

    /// Operations that submit work: budgets and tenant quotas apply to them.
    fn submits_work(path: &str, method: &str) -> bool {
        method == "POST"
            && (path == "/v1/evaluations"
                || path.ends_with("/resume")
                || path.ends_with("/retry-errors")
                || path.ends_with("/regrade")
                || path.ends_with("/promotions")
                || path.ends_with("/optimizations"))
    }

    fn shared_errors(path: &str, method: &str, operation: &mut Operation) {
        let under_v1 = path.starts_with("/v1/");
        let has_body = operation.request_body.is_some();
        let params = operation.parameters.get_or_insert_with(Vec::new);
        let has_query = params
            .iter()
            .any(|param| param.parameter_in == ParameterIn::Query);
        let has_path = path.contains('{');
        let idempotent = under_v1 && method == "POST";
        if idempotent {
            params.push(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Up to 255 characters. The same key with the same request within 24 h \
                         returns the first response (with `Idempotent-Replayed: true`) without \
                         doing the work again; with another request, 422 `idempotency_mismatch`; \
                         while the first is still running, 409 `idempotency_in_progress`.",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .min_length(Some(1))
                            .max_length(Some(crate::idempotency::MAX_KEY_LENGTH))
                            .pattern(Some("^[!-~]+$")),
                    ))
                    .build(),
            );
        }
        if params.is_empty() {
            operation.parameters = None;
        }
        // Which codes the operation can answer, by the rules of the middleware
        // and extractors; the handler's own attribute adds its specific statuses.
        let mut codes: Vec<&str> = Vec::new();
        if under_v1 {
            codes.extend(["unauthorized", "rate_limited", "unavailable"]);
            if has_path {
                codes.push("not_found");
            }
            operation.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                SECURITY_SCHEME,
                Vec::<String>::new(),
            )]);
        }
        if has_query {
            // 422: a NUL in a parameter (`refuse_nul`), named as `field`.
            codes.extend(["invalid_query", "invalid_input"]);
        }
        if has_body {
            codes.extend([
                "malformed_json",
                "invalid_input",
                "unsupported_media_type",
                "payload_too_large",
                "body_timeout",
            ]);
        }
        if idempotent {
            // A malformed key is invalid input; the body is hashed under the size limit.
            codes.extend([
                "idempotency_mismatch",
                "idempotency_in_progress",
                "invalid_input",
                "payload_too_large",
            ]);
        }
        if submits_work(path, method) {
            codes.extend([
                "over_budget",
                "quota_runs_per_evaluation",
                "quota_active_evaluations",
            ]);
        }
        // Statuses the handler declared keep their description and gain the
        // problem body with the codes of that status.
        // (Outside `/v1`, the viewer's and docs' files answer plain text,
        // not problems: their declared errors stay as written.)
        let declared: Vec<u16> = operation
            .responses
            .responses
            .keys()
            .filter_map(|status| status.parse().ok())
            .filter(|status| *status >= 400 && under_v1)
            .collect();
        for status in &declared {
            for (code, code_status) in CODES {
                if code_status == status && is_generic(code) && !codes.contains(code) {
                    codes.push(code);
                }
            }
        }
        let mut statuses: Vec<u16> = codes
            .iter()
            .filter_map(|code| CODES.iter().find(|(c, _)| c == code).map(|(_, s)| *s))
            .chain(declared.iter().copied())
            .collect();
        statuses.sort_unstable();
        statuses.dedup();
        for status in statuses {
            let status_codes: Vec<&str> = CODES
                .iter()
                .filter(|(code, code_status)| *code_status == status && codes.contains(code))
                .map(|(code, _)| *code)
                .collect();
            let key = status.to_string();
            let description = match operation.responses.responses.get(&key) {
                Some(RefOr::T(response)) => response.description.clone(),
                _ => default_description(status).to_owned(),
            };
            let mut response = ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(problem_schema(&status_codes)))
                    .build(),
            );
            if status == 429 {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                );
                for (name, what) in [
                    (
                        "RateLimit-Limit",
                        "Requests of this class allowed per minute",
                    ),
                    ("RateLimit-Remaining", "Requests left now"),
                    ("RateLimit-Reset", "Seconds until the bucket is full again"),
                ] {
                    response = response.header(
                        name,
                        HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::Integer))
                            .description(Some(what))
                            .build(),
                    );
                }
            }
            if status == 401 {
                response = response.header(
                    "WWW-Authenticate",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some("`Bearer`"))
                        .build(),
                );
            }
            operation
                .responses
                .responses
                .insert(key, RefOr::T(response.build()));
        }
    }

    /// Codes a handler's declared status implies; the others (quota, budget,
    /// idempotency, transport) are added by rule only where they can happen.
    fn is_generic(code: &str) -> bool {
        matches!(
            code,
            "not_found" | "conflict" | "forbidden" | "invalid_input" | "invalid_query"
        )
    }

    fn default_description(status: u16) -> &'static str {
        match status {
            400 => "The body is not JSON, or the query string is invalid",
            401 => "No valid API key (missing, unknown, expired or revoked)",
            403 => "The key's scope does not allow this",
            404 => "No such resource (or not this tenant's)",
            408 => "The body arrived too slowly",
            409 => "Conflicts with the current state",
            413 => "The body is larger than the limit (`ASSAY_MAX_BODY_BYTES`)",
            415 => "The body's content type is not accepted",
            422 => "The request is well-formed but invalid; `field` names the culprit",
            429 => "Over this key's request rate, or the tenant's quota of active evaluations",
            503 => "A dependency (PostgreSQL, Redis) is unavailable",
            _ => "Error",
        }
    }

    /// RFC 9457 problem details with the codes this response may carry.
    fn problem_schema(codes: &[&str]) -> Schema {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .property("type", string().description(Some("`/problems/<code>`")))
            .property("title", string())
            .property("status", ObjectBuilder::new().schema_type(Type::Integer))
            .property("detail", string())
            .property(
                "code",
                string()
                    .description(Some("Stable, machine-readable"))
                    .enum_values(Some(codes.iter().copied())),
            )
            .property(
                "field",
                string().description(Some("For `invalid_input`: the field at fault")),
            )
            .property(
                "current",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some("For a lost compare-and-set: what is there now")),
            )
            .required("type")
            .required("title")
            .required("status")
            .required("detail")
            .required("code")
            .into()
    }

    /// The schema of `VersionRef` (a domain type whose `Deserialize` is written
    /// by hand): a version number, or a version id (a string, which may also be
    /// a number: `"3"`).
    pub struct VersionRefSchema;

    impl utoipa::PartialSchema for VersionRefSchema {
        fn schema() -> RefOr<Schema> {
            utoipa::openapi::schema::OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Integer).format(Some(
                    utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int32),
                )))
                .item(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("A version number (`3`) or a version id"))
                .into()
        }
    }

    impl utoipa::ToSchema for VersionRefSchema {
        fn name() -> std::borrow::Cow<'static, str> {
            "VersionRef".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::{Operation, ParameterIn, PathItem};

    use super::document;
    use crate::routes::resources;

    fn operations(item: &PathItem) -> Vec<(&'static str, &Operation)> {
        [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ]
        .into_iter()
        .filter_map(|(method, operation)| operation.as_ref().map(|op| (method, op)))
        .collect()
    }

    /// The routes actix is given (the same list `configure` registers) and
    /// the document's operations are the same set: a route added without its
    /// `#[utoipa::path]` in `ApiDoc`, or documented and not served, fails here.
    #[test]
    fn the_document_covers_exactly_the_registered_routes() {
        let registered: BTreeSet<(String, String)> = resources()
            .iter()
            .flat_map(|resource| {
                resource
                    .methods()
                    .iter()
                    .map(|method| (resource.openapi_path(), method.as_str().to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let documented: BTreeSet<(String, String)> = document()
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                operations(item)
                    .into_iter()
                    .map(|(method, _)| (path.clone(), method.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented operations no route serves: {unserved:?}"
        );
        assert!(registered.len() >= 60, "only {} routes", registered.len());
        // Unique operation ids: clients and tools (schemathesis' links) key on them.
        let mut ids = BTreeSet::new();
        for item in document().paths.paths.values() {
            for (method, operation) in operations(item) {
                let id = operation.operation_id.clone().expect("operation id");
                assert!(ids.insert(id.clone()), "{method}: operation id {id} twice");
            }
        }
    }

    #[test]
    fn every_operation_declares_its_path_parameters_and_errors() {
        for (path, item) in &document().paths.paths {
            let names: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|part| part.split('}').next())
                .collect();
            for (method, operation) in operations(item) {
                let params = operation.parameters.as_deref().unwrap_or_default();
                for name in &names {
                    assert!(
                        params
                            .iter()
                            .any(|param| param.name == *name
                                && param.parameter_in == ParameterIn::Path),
                        "{method} {path}: path parameter {name} undeclared"
                    );
                }
                let responses = &operation.responses.responses;
                assert!(
                    responses
                        .keys()
                        .any(|status| status.starts_with('2') || status.starts_with('3')),
                    "{method} {path}: no success response"
                );
                for (status, response) in responses {
                    let RefOr::T(response) = response else {
                        panic!("{method} {path}: {status} is a reference")
                    };
                    if !status.starts_with('4') && !status.starts_with('5') {
                        continue;
                    }
                    if !path.starts_with("/v1/") {
                        continue;
                    }
                    let problem = response
                        .content
                        .get("application/problem+json")
                        .unwrap_or_else(|| panic!("{method} {path}: {status} is not a problem"));
                    let schema = serde_json::to_value(&problem.schema).unwrap();
                    let codes = schema["properties"]["code"]["enum"].as_array().unwrap();
                    assert!(!codes.is_empty(), "{method} {path}: {status} has no code");
                }
                if path.starts_with("/v1/") {
                    assert!(operation.security.is_some(), "{method} {path}: no security");
                    for status in ["401", "429", "503"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path}: no {status}"
                        );
                    }
                    let limited = serde_json::to_value(&responses["429"]).unwrap();
                    assert!(limited["headers"]["Retry-After"].is_object());
                    assert!(limited["headers"]["RateLimit-Remaining"].is_object());
                }
                if path.starts_with("/v1/") && method == "POST" {
                    assert!(
                        params.iter().any(|param| param.name == "Idempotency-Key"),
                        "{method} {path}: no Idempotency-Key"
                    );
                }
            }
        }
    }

    /// The quota and idempotency codes are documented where they happen.
    #[test]
    fn submissions_document_their_quota_and_idempotency_codes() {
        let json = serde_json::to_value(document()).unwrap();
        let create = &json["paths"]["/v1/evaluations"]["post"]["responses"];
        let codes = |status: &str| {
            create[status]["content"]["application/problem+json"]["schema"]["properties"]["code"]
                ["enum"]
                .clone()
        };
        for (status, code) in [
            ("422", "quota_runs_per_evaluation"),
            ("422", "idempotency_mismatch"),
            ("422", "over_budget"),
            ("409", "idempotency_in_progress"),
            ("429", "quota_active_evaluations"),
            ("429", "rate_limited"),
            ("413", "payload_too_large"),
            ("408", "body_timeout"),
            ("415", "unsupported_media_type"),
        ] {
            assert!(
                codes(status)
                    .as_array()
                    .is_some_and(|codes| codes.contains(&serde_json::json!(code))),
                "POST /v1/evaluations {status} lacks {code}: {}",
                codes(status)
            );
        }
        assert_eq!(json["openapi"], "3.1.0");
        assert_eq!(
            json["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
        if let Ok(path) = std::env::var("ASSAY_WRITE_OPENAPI") {
            std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        }
    }
}
