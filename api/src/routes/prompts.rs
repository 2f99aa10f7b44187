//! Prompts and their versions.

use actix_web::{HttpResponse, web};
use assay_core::db::models::prompts::{self, CommitError, Prompt, PromptVersion, VersionRef};
use assay_core::domain::{ChatMessage, ModelParams, PromptContent, validate_name};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::startup::AppState;

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Serialize)]
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

fn validate_commit_message(message: &str) -> Result<(), ApiError> {
    if message.trim().is_empty() || message.chars().count() > 10_000 {
        return Err(ApiError::invalid(
            "commit_message",
            "must be 1 to 10,000 characters",
        ));
    }
    Ok(())
}

pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    body: web::Json<CreatePrompt>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate_name("name", &body.name)?;
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
                    prompts::commit_version(
                        conn,
                        caller.tenant_id,
                        &actor,
                        prompt.id,
                        content,
                        &commit_message,
                        None,
                    )
                    .await?,
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

fn commit_error(error: CommitError) -> ApiError {
    match error {
        CommitError::PromptNotFound => ApiError::NotFound("prompt"),
        CommitError::UnknownParent(parent) => ApiError::invalid(
            "parent_version_id",
            format!("{parent} is not a version of this prompt"),
        ),
        CommitError::Database(error) => error.into(),
    }
}

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

pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitVersion {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    params: Option<ModelParams>,
    commit_message: String,
    /// Defaults to the latest version.
    #[serde(default)]
    parent_version_id: Option<Uuid>,
}

pub async fn commit_version(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
    body: web::Json<CommitVersion>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let content = PromptContent::validate(body.messages, body.params.unwrap_or_default())?;
    validate_commit_message(&body.commit_message)?;
    let prompt_id = *path;
    let mut conn = state.pool.get().await?;
    let version = prompts::commit_version(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        prompt_id,
        &content,
        &body.commit_message,
        body.parent_version_id,
    )
    .await
    .map_err(commit_error)?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/v1/prompts/{prompt_id}/versions/{}", version.version),
        ))
        .json(version))
}

pub async fn list_versions(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
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
pub async fn get_version(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(Uuid, String)>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, version) = path.into_inner();
    let version = match (version.parse::<i32>(), version.parse::<Uuid>()) {
        (Ok(number), _) => VersionRef::Number(number),
        (_, Ok(id)) => VersionRef::Id(id),
        _ => return Err(ApiError::NotFound("prompt version")),
    };
    let mut conn = state.pool.get().await?;
    let version = prompts::get_version(&mut conn, caller.tenant_id, prompt_id, version)
        .await?
        .ok_or(ApiError::NotFound("prompt version"))?;
    Ok(HttpResponse::Ok().json(version))
}
