//! Prompts and their versions: create, read, commit to a branch (with
//! compare-and-set on its head), revert.

use actix_web::{HttpResponse, web};
use assay_core::db::models::branches;
use assay_core::db::models::prompts::{
    self, Commit, CommitError, Committed, Prompt, PromptVersion, VersionRef,
};
use assay_core::domain::{
    ChatMessage, ModelParams, PromptContent, validate_description, validate_name,
};
use assay_core::ids::PromptId;
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrompt {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// When given, version 1 is committed with the prompt.
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    params: Option<ModelParams>,
    #[serde(default)]
    commit_message: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PromptBody {
    #[serde(flatten)]
    prompt: Prompt,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest_version: Option<PromptVersion>,
}

fn is_unique_violation(error: &diesel::result::Error) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

pub(super) fn validate_commit_message(message: &str) -> Result<(), ApiError> {
    use assay_core::domain::limits::MAX_COMMIT_MESSAGE_CHARS;
    if message.trim().is_empty() || message.chars().count() > MAX_COMMIT_MESSAGE_CHARS {
        return Err(ApiError::invalid(
            "commit_message",
            format!("must be 1 to {MAX_COMMIT_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    operation_id = "prompts.create",
    path = "/v1/prompts",
    tag = "prompts",
    request_body = CreatePrompt,
    responses(
        (status = 201, description = "Created (with version 1 when `messages` were given)", body = PromptBody, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "A prompt with this name exists"),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    body: Json<CreatePrompt>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate_name("name", &body.name)?;
    validate_description("description", body.description.as_deref())?;
    let content = match body.messages {
        Some(messages) => Some(PromptContent::validate(
            messages,
            body.params.unwrap_or_default(),
        )?),
        None if body.params.is_some() => {
            return Err(ApiError::invalid("params", "params need messages"));
        }
        None => None,
    };
    let commit_message = body
        .commit_message
        .unwrap_or_else(|| "Initial version".to_owned());
    validate_commit_message(&commit_message)?;
    let actor = caller.actor();
    let mut conn = state.pool.get().await?;
    let created = conn
        .transaction(async |conn| {
            let prompt = prompts::create(
                conn,
                caller.tenant_id,
                &actor,
                &body.name,
                body.description.as_deref(),
            )
            .await?;
            let version = match &content {
                Some(content) => Some(
                    prompts::commit(
                        conn,
                        caller.tenant_id,
                        &actor,
                        prompt.id,
                        Commit {
                            branch: branches::MAIN,
                            expected_head: None,
                            content,
                            commit_message: &commit_message,
                            reverts: None,
                        },
                    )
                    .await?
                    .into_version(),
                ),
                None => None,
            };
            Ok::<_, CommitError>((prompt, version))
        })
        .await;
    let (prompt, latest_version) = match created {
        Ok(created) => created,
        Err(CommitError::Database(error)) if is_unique_violation(&error) => {
            return Err(ApiError::Conflict(format!(
                "a prompt named {:?} exists already",
                body.name
            )));
        }
        Err(error) => return Err(commit_error(error)),
    };
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/prompts/{}", prompt.id)))
        .json(PromptBody {
            prompt,
            latest_version,
        }))
}

pub(super) fn commit_error(error: CommitError) -> ApiError {
    match error {
        CommitError::PromptNotFound => ApiError::NotFound("prompt"),
        CommitError::BranchNotFound(_) => ApiError::NotFound("branch"),
        CommitError::UnknownExpectedHead => {
            ApiError::invalid("expected_head", "not a version of this prompt")
        }
        CommitError::HeadMoved { branch, current } => {
            metrics::counter!("assay_prompt_commits_total", "outcome" => "conflict").increment(1);
            let detail = match &current {
                Some(head) => format!(
                    "the head of branch {branch:?} is now version {} ({}): fetch it, then commit with it as expected_head",
                    head.version, head.id
                ),
                None => format!("branch {branch:?} has no version yet"),
            };
            ApiError::Stale(
                detail,
                serde_json::json!({ "branch": branch, "head": current }),
            )
        }
        CommitError::Database(error) => error.into(),
    }
}

#[utoipa::path(
    get,
    operation_id = "prompts.list",
    path = "/v1/prompts",
    tag = "prompts",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of prompts", body = PageBody<Prompt>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    let page = prompts::list(&mut conn, caller.tenant_id, query.after_id()?, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |prompt| prompt.id.to_string())))
}

#[utoipa::path(
    get,
    operation_id = "prompts.get",
    path = "/v1/prompts/{prompt_id}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id")),
    responses(
        (status = 200, description = "The prompt and its latest version", body = PromptBody),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let prompt = prompts::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let latest_version = prompts::list_versions(&mut conn, caller.tenant_id, prompt.id, None, 1)
        .await?
        .data
        .pop();
    Ok(HttpResponse::Ok().json(PromptBody {
        prompt,
        latest_version,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitVersion {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    params: Option<ModelParams>,
    commit_message: String,
    /// Default `main`.
    #[serde(default)]
    branch: Option<String>,
    /// Compare-and-set: the head (number or id) the caller last saw.
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::VersionRefSchema>)]
    expected_head: Option<VersionRef>,
}

/// A version and the branch a commit put it on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CommittedBody {
    #[serde(flatten)]
    version: PromptVersion,
    branch: String,
    /// False when the content equalled the head's and nothing was written.
    created: bool,
}

/// Answers a commit: 201 for a new version, 200 for an unchanged head.
pub(super) fn committed(prompt_id: PromptId, branch: String, committed: Committed) -> HttpResponse {
    let location = format!(
        "/v1/prompts/{prompt_id}/versions/{}",
        committed.version().version
    );
    let (mut response, created, outcome) = match committed {
        Committed::Created(_) => (HttpResponse::Created(), true, "created"),
        Committed::Unchanged(_) => (HttpResponse::Ok(), false, "unchanged"),
    };
    metrics::counter!("assay_prompt_commits_total", "outcome" => outcome).increment(1);
    response
        .insert_header(("Location", location))
        .json(CommittedBody {
            version: committed.into_version(),
            branch,
            created,
        })
}

/// `POST /v1/prompts/{id}/versions`: commits onto `branch` (default main).
#[utoipa::path(
    post,
    operation_id = "prompts.commit_version",
    path = "/v1/prompts/{prompt_id}/versions",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id")),
    request_body = CommitVersion,
    responses(
        (status = 201, description = "A new version", body = CommittedBody, headers(("Location" = String, description = "The new resource"))),
        (status = 200, description = "Same content as the head: nothing written", body = CommittedBody),
        (status = 409, description = "`expected_head` is not the head any more (`current` says what is)"),
    ),
)]
pub async fn commit_version(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    body: Json<CommitVersion>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let content = PromptContent::validate(body.messages, body.params.unwrap_or_default())?;
    validate_commit_message(&body.commit_message)?;
    let branch = body.branch.unwrap_or_else(|| branches::MAIN.to_owned());
    branches::validate_name("branch", &branch)?;
    let prompt_id = *path;
    let mut conn = state.pool.get().await?;
    let result = prompts::commit(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        prompt_id,
        Commit {
            branch: &branch,
            expected_head: body.expected_head,
            content: &content,
            commit_message: &body.commit_message,
            reverts: None,
        },
    )
    .await
    .map_err(commit_error)?;
    Ok(committed(prompt_id, branch, result))
}

#[utoipa::path(
    get,
    operation_id = "prompts.list_versions",
    path = "/v1/prompts/{prompt_id}/versions",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), PageQuery),
    responses(
        (status = 200, description = "A page of versions, newest first", body = PageBody<PromptVersion>),
    ),
)]
pub async fn list_versions(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let after = query.after_number("a version number")?;
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let page = prompts::list_versions(&mut conn, caller.tenant_id, *path, after, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |version| version.version.to_string())))
}

/// `{version}` is a version number (`3`) or a version id.
#[utoipa::path(
    get,
    operation_id = "prompts.get_version",
    path = "/v1/prompts/{prompt_id}/versions/{version}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("version" = String, Path, description = "A version number (`3`) or a version id")),
    responses(
        (status = 200, description = "The version", body = PromptVersion),
    ),
)]
pub async fn get_version(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, version) = path.into_inner();
    let version: VersionRef = version
        .parse()
        .map_err(|_| ApiError::NotFound("prompt version"))?;
    let mut conn = state.pool.get().await?;
    let version = prompts::get_version(&mut conn, caller.tenant_id, prompt_id, version)
        .await?
        .ok_or(ApiError::NotFound("prompt version"))?;
    Ok(HttpResponse::Ok().json(version))
}
