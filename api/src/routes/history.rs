//! History queries over a prompt's versions: ancestry (`log`), children,
//! common ancestor, diff, and resolving a label or branch to a version.

use actix_web::{HttpResponse, web};
use assay_core::db::models::prompts::{self, Pointer, PromptVersion, ResolveError, VersionRef};
use assay_core::domain::diff;
use assay_core::ids::{PromptId, TenantId, VersionId};
use serde::{Deserialize, Serialize};

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::startup::AppState;

/// A version named in a path or query, or 404.
async fn version(
    conn: &mut diesel_async::AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    named: &str,
) -> Result<PromptVersion, ApiError> {
    let reference: VersionRef = named
        .parse()
        .map_err(|_| ApiError::NotFound("prompt version"))?;
    prompts::get_version(conn, tenant_id, prompt_id, reference)
        .await?
        .ok_or(ApiError::NotFound("prompt version"))
}

/// `GET /v1/prompts/{id}/versions/{v}/log`: the version, its parent, and so
/// on, newest first; `after` is the last version of the previous page.
#[utoipa::path(
    get,
    operation_id = "history.log",
    path = "/v1/prompts/{prompt_id}/versions/{version}/log",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("version" = String, Path, description = "A version number (`3`) or a version id"), PageQuery),
    responses(
        (status = 200, description = "The version and its ancestors, newest first", body = PageBody<PromptVersion>),
    ),
)]
pub async fn log(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, named) = path.into_inner();
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    let start = version(&mut conn, caller.tenant_id, prompt_id, &named).await?;
    let after = match query.after.as_deref() {
        Some(after) => Some(
            version(&mut conn, caller.tenant_id, prompt_id, after)
                .await
                .map_err(|_| {
                    ApiError::InvalidQuery(
                        "after must be a version from a previous page".to_owned(),
                    )
                })?
                .id,
        ),
        None => None,
    };
    let page = prompts::log(
        &mut conn,
        caller.tenant_id,
        prompt_id,
        start.id,
        after,
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |version| version.id.to_string())))
}

/// `GET /v1/prompts/{id}/versions/{v}/children`: oldest first; `after` is a version number.
#[utoipa::path(
    get,
    operation_id = "history.children",
    path = "/v1/prompts/{prompt_id}/versions/{version}/children",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("version" = String, Path, description = "A version number (`3`) or a version id"), PageQuery),
    responses(
        (status = 200, description = "Versions whose parent it is", body = PageBody<PromptVersion>),
    ),
)]
pub async fn children(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, named) = path.into_inner();
    let limit = query.limit()?;
    let after = query.after_number("a version number")?;
    let mut conn = state.pool.get().await?;
    let parent = version(&mut conn, caller.tenant_id, prompt_id, &named).await?;
    let page = prompts::children(
        &mut conn,
        caller.tenant_id,
        prompt_id,
        parent.id,
        after,
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |version| version.version.to_string())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PairQuery {
    a: String,
    b: String,
}

/// `GET /v1/prompts/{id}/common-ancestor?a=&b=`.
#[utoipa::path(
    get,
    operation_id = "history.common_ancestor",
    path = "/v1/prompts/{prompt_id}/common-ancestor",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), PairQuery),
    responses(
        (status = 200, description = "The newest common ancestor, or null", body = CommonAncestorBody),
    ),
)]
pub async fn common_ancestor(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    query: web::Query<PairQuery>,
) -> Result<HttpResponse, ApiError> {
    let prompt_id = *path;
    let mut conn = state.pool.get().await?;
    let a = version(&mut conn, caller.tenant_id, prompt_id, &query.a).await?;
    let b = version(&mut conn, caller.tenant_id, prompt_id, &query.b).await?;
    let ancestor =
        prompts::common_ancestor(&mut conn, caller.tenant_id, prompt_id, a.id, b.id).await?;
    Ok(HttpResponse::Ok().json(CommonAncestorBody {
        common_ancestor: ancestor,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: String,
    to: String,
}

/// A version in a diff: enough to name it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Named {
    id: VersionId,
    version: i32,
}

impl From<&PromptVersion> for Named {
    fn from(version: &PromptVersion) -> Self {
        Self {
            id: version.id,
            version: version.version,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DiffBody {
    from: Named,
    to: Named,
    common_ancestor: Option<Named>,
    messages: Vec<diff::MessageDiff>,
    params: Vec<diff::ParamChange>,
}

/// `GET /v1/prompts/{id}/diff?from=&to=`: message by message, and `params` as JSON.
#[utoipa::path(
    get,
    operation_id = "history.diff",
    path = "/v1/prompts/{prompt_id}/diff",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), DiffQuery),
    responses(
        (status = 200, description = "Message and parameter differences", body = DiffBody),
    ),
)]
pub async fn diff(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    query: web::Query<DiffQuery>,
) -> Result<HttpResponse, ApiError> {
    let prompt_id = *path;
    let mut conn = state.pool.get().await?;
    let from = version(&mut conn, caller.tenant_id, prompt_id, &query.from).await?;
    let to = version(&mut conn, caller.tenant_id, prompt_id, &query.to).await?;
    let ancestor =
        prompts::common_ancestor(&mut conn, caller.tenant_id, prompt_id, from.id, to.id).await?;
    let parse = |version: &PromptVersion| {
        version.content().map_err(|error| {
            ApiError::Internal(anyhow::anyhow!(
                "stored prompt version does not parse: {error}"
            ))
        })
    };
    let (old, new) = (parse(&from)?, parse(&to)?);
    Ok(HttpResponse::Ok().json(DiffBody {
        from: Named::from(&from),
        to: Named::from(&to),
        common_ancestor: ancestor.as_ref().map(Named::from),
        messages: diff::diff_messages(&old.messages, &new.messages),
        params: diff::diff_json(&from.params, &to.params),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResolveQuery {
    label: Option<String>,
    branch: Option<String>,
}

/// `GET /v1/prompts/{name or id}/resolve?label=production` (or `?branch=main`).
#[utoipa::path(
    get,
    operation_id = "history.resolve",
    path = "/v1/prompts/{prompt}/resolve",
    tag = "prompts",
    params(("prompt" = String, Path, description = "Prompt name or id"), ResolveQuery),
    responses(
        (status = 200, description = "The version a label or branch (default: head of main) points at", body = PromptVersion),
        (status = 422, description = "Both `label` and `branch`"),
        (status = 409, description = "The branch has no version yet"),
    ),
)]
pub async fn resolve(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<String>,
    query: web::Query<ResolveQuery>,
) -> Result<HttpResponse, ApiError> {
    let pointer = match (&query.label, &query.branch) {
        (Some(label), None) => Pointer::Label(label),
        (None, Some(branch)) => Pointer::Branch(branch),
        _ => {
            return Err(ApiError::InvalidQuery(
                "give exactly one of label and branch".to_owned(),
            ));
        }
    };
    let mut conn = state.pool.get().await?;
    let prompt = prompts::find(&mut conn, caller.tenant_id, &path)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let version = prompts::resolve(&mut conn, caller.tenant_id, prompt.id, pointer)
        .await
        .map_err(|error| match error {
            ResolveError::NoLabel(_) => ApiError::NotFound("label"),
            ResolveError::NoBranch(_) => ApiError::NotFound("branch"),
            ResolveError::EmptyBranch(name) => {
                ApiError::Conflict(format!("branch {name:?} has no version yet"))
            }
            ResolveError::Database(error) => error.into(),
        })?;
    Ok(HttpResponse::Ok().json(version))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CommonAncestorBody {
    /// Null when the two versions share no ancestor.
    common_ancestor: Option<PromptVersion>,
}
