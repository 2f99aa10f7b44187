//! `GET /docs`: a page that reads `/openapi.json` and lists every operation
//! with its parameters, bodies and responses. Its three files are embedded
//! in the binary (no CDN, works air-gapped) and served with the viewer's
//! strict headers (no inline script or style, same origin only).

use actix_web::{HttpResponse, web};
use metrics::counter;

use super::ui::secured;

const INDEX: &[u8] = include_bytes!("../../apidocs/index.html");

/// `(name, content type, body)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../apidocs/docs.js"),
    ),
    (
        "docs.css",
        "text/css; charset=utf-8",
        include_bytes!("../../apidocs/docs.css"),
    ),
];

/// The API reference, rendered in the browser from `/openapi.json`.
#[utoipa::path(
    get,
    operation_id = "docs.page",
    path = "/docs",
    tag = "ui",
    responses((status = 200, description = "The docs page", content_type = "text/html; charset=utf-8", body = String)),
)]
pub async fn page() -> HttpResponse {
    counter!("assay_ui_requests_total", "kind" => "docs").increment(1);
    secured(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX)
}

/// A file of the docs page, embedded in the binary.
#[utoipa::path(
    get,
    operation_id = "docs.asset",
    path = "/docs/assets/{name}",
    tag = "ui",
    params(("name" = String, Path, description = "`docs.js` or `docs.css`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
        )),
        (status = 404, description = "No such file", content_type = "text/plain; charset=utf-8", body = String),
    ),
)]
pub async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(asset, ..)| *asset == name.as_str()) {
        Some((_, content_type, body)) => {
            counter!("assay_ui_requests_total", "kind" => "docs_asset").increment(1);
            secured(HttpResponse::Ok())
                .content_type(*content_type)
                .body(*body)
        }
        None => {
            counter!("assay_ui_requests_total", "kind" => "docs_missing").increment(1);
            secured(HttpResponse::NotFound())
                .content_type("text/plain; charset=utf-8")
                .body("no such asset")
        }
    }
}
