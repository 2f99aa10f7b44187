//! Branches of a prompt: list, create at a version, read, delete, revert.

use actix_web::{HttpResponse, web};
use assay_core::db::models::branches::{self, BranchError};
use assay_core::db::models::prompts::{self, Commit, VersionRef};
use assay_core::ids::PromptId;
use serde::Deserialize;

use super::prompts::CommittedBody;
use super::prompts::{commit_error, committed, validate_commit_message};
use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;
use assay_core::db::models::branches::BranchView;

fn branch_error(error: BranchError) -> ApiError {
    match error {
        BranchError::PromptNotFound => ApiError::NotFound("prompt"),
        BranchError::NotFound(_) => ApiError::NotFound("branch"),
        BranchError::VersionNotFound => ApiError::invalid("from", "not a version of this prompt"),
        BranchError::Exists(name) => {
            ApiError::Conflict(format!("a branch named {name:?} exists already"))
        }
        BranchError::Main => ApiError::Conflict(
            "main is the default branch of every prompt and cannot be deleted".to_owned(),
        ),
        BranchError::Database(error) => error.into(),
    }
}

/// `GET /v1/prompts/{id}/branches`: by name; `after` is a branch name.
#[utoipa::path(
    get,
    operation_id = "branches.list",
    path = "/v1/prompts/{prompt_id}/branches",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), PageQuery),
    responses(
        (status = 200, description = "A page of branches", body = PageBody<BranchView>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let page = branches::list(
        &mut conn,
        caller.tenant_id,
        *path,
        query.after.as_deref(),
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |branch| branch.name.clone())))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    name: String,
    /// The version it starts at (number or id); default: the head of main.
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::VersionRefSchema>)]
    from: Option<VersionRef>,
}

/// `POST /v1/prompts/{id}/branches`.
#[utoipa::path(
    post,
    operation_id = "branches.create",
    path = "/v1/prompts/{prompt_id}/branches",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id")),
    request_body = CreateBranch,
    responses(
        (status = 201, description = "The branch", body = BranchView, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "A branch with this name exists"),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    body: Json<CreateBranch>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    branches::validate_name("name", &body.name)?;
    let mut conn = state.pool.get().await?;
    let branch = branches::create(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        *path,
        &body.name,
        body.from,
    )
    .await
    .map_err(branch_error)?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/v1/prompts/{}/branches/{}", *path, branch.name),
        ))
        .json(branch))
}

/// `GET /v1/prompts/{id}/branches/{name}`.
#[utoipa::path(
    get,
    operation_id = "branches.get",
    path = "/v1/prompts/{prompt_id}/branches/{name}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Branch name")),
    responses(
        (status = 200, description = "The branch", body = BranchView),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    let branch = branches::get_view(&mut conn, caller.tenant_id, prompt_id, &name)
        .await?
        .ok_or(ApiError::NotFound("branch"))?;
    Ok(HttpResponse::Ok().json(branch))
}

/// `DELETE /v1/prompts/{id}/branches/{name}`: the versions stay.
#[utoipa::path(
    delete,
    operation_id = "branches.delete",
    path = "/v1/prompts/{prompt_id}/branches/{name}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Branch name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`main` cannot be deleted"),
    ),
)]
pub async fn delete(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    branches::delete(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        prompt_id,
        &name,
    )
    .await
    .map_err(branch_error)?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revert {
    /// The earlier version whose content the new version takes.
    #[schema(value_type = super::openapi::VersionRefSchema)]
    to: VersionRef,
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::VersionRefSchema>)]
    expected_head: Option<VersionRef>,
    #[serde(default)]
    commit_message: Option<String>,
}

/// `POST /v1/prompts/{id}/branches/{name}/revert`: a new version on the
/// branch with the content of `to` (200 and nothing new when the head
/// already has that content).
#[utoipa::path(
    post,
    operation_id = "branches.revert",
    path = "/v1/prompts/{prompt_id}/branches/{name}/revert",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Branch name")),
    request_body = Revert,
    responses(
        (status = 201, description = "A new head with the earlier content", body = CommittedBody, headers(("Location" = String, description = "The new resource"))),
        (status = 200, description = "The head has that content already", body = CommittedBody),
        (status = 409, description = "`expected_head` is not the head any more"),
    ),
)]
pub async fn revert(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
    body: Json<Revert>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let body = body.into_inner();
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, prompt_id)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let target = prompts::get_version(&mut conn, caller.tenant_id, prompt_id, body.to)
        .await?
        .ok_or_else(|| ApiError::invalid("to", "not a version of this prompt"))?;
    let content = target.content().map_err(|error| {
        ApiError::Internal(anyhow::anyhow!(
            "stored prompt version does not parse: {error}"
        ))
    })?;
    let message = body
        .commit_message
        .unwrap_or_else(|| format!("Revert to version {}", target.version));
    validate_commit_message(&message)?;
    let result = prompts::commit(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        prompt_id,
        Commit {
            branch: &name,
            expected_head: body.expected_head,
            content: &content,
            commit_message: &message,
            reverts: Some(target.id),
        },
    )
    .await
    .map_err(commit_error)?;
    Ok(committed(prompt_id, name, result))
}
