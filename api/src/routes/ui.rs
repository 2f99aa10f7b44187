//! The web viewer: static files embedded in the binary (nothing fetched from
//! elsewhere, so it works air-gapped), served under `/ui/`. Every page is
//! the same `index.html`; its script routes by path and reads everything
//! through the public `/v1` API with the key the user pasted.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics::counter;

/// No inline script or style, nothing from another origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../../ui/index.html");

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/api.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/charts.js"),
    },
    Asset {
        name: "format.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/format.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/icon.svg"),
    },
];

pub(super) fn secured(
    mut response: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        // Assets are small and change with the binary: revalidating is cheap,
        // and a stale script never meets a newer API.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    response
}

/// The root: to the viewer.
#[utoipa::path(
    get,
    operation_id = "ui.root",
    path = "/",
    tag = "ui",
    responses((status = 302, description = "Redirect to `/ui/`", headers(("Location" = String)))),
)]
pub async fn root() -> HttpResponse {
    to_viewer().await
}

/// To the viewer.
#[utoipa::path(
    get,
    operation_id = "ui.to_viewer",
    path = "/ui",
    tag = "ui",
    responses((status = 302, description = "Redirect to `/ui/`", headers(("Location" = String)))),
)]
pub async fn to_viewer() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

/// A file of the viewer (scripts, style, icon), embedded in the binary.
#[utoipa::path(
    get,
    operation_id = "ui.asset",
    path = "/ui/assets/{name}",
    tag = "ui",
    params(("name" = String, Path, description = "File name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file (JavaScript, CSS or SVG)", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
            (String = "image/svg+xml"),
        )),
        (status = 404, description = "No such file", content_type = "text/plain; charset=utf-8", body = String),
    ),
)]
pub async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|asset| asset.name == name.as_str()) {
        Some(asset) => {
            counter!("assay_ui_requests_total", "kind" => "asset").increment(1);
            secured(HttpResponse::Ok())
                .content_type(asset.content_type)
                .body(asset.body)
        }
        None => {
            counter!("assay_ui_requests_total", "kind" => "missing").increment(1);
            secured(HttpResponse::NotFound())
                .content_type("text/plain; charset=utf-8")
                .body("no such asset")
        }
    }
}

/// Any other path under `/ui/`: the page shell (its script picks the view
/// from the path and reads the `/v1` API with the key the user pastes).
#[utoipa::path(
    get,
    operation_id = "ui.page",
    path = "/ui/{tail}",
    tag = "ui",
    params(("tail" = String, Path, description = "The viewer's own route, e.g. `evaluations/<id>`")),
    responses((status = 200, description = "The viewer's HTML page", content_type = "text/html; charset=utf-8", body = String)),
)]
pub async fn page(_request: HttpRequest) -> HttpResponse {
    counter!("assay_ui_requests_total", "kind" => "page").increment(1);
    secured(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX)
}
