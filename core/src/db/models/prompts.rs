//! Prompts and their immutable, numbered versions (git-like: each version
//! points at its parent and carries a content hash and a commit message).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use super::events::{self, NewEvent};
use crate::db::schema::{prompt_versions, prompts};
use crate::domain::PromptContent;

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = prompts, check_for_backend(diesel::pg::Pg))]
pub struct Prompt {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = prompt_versions, check_for_backend(diesel::pg::Pg))]
pub struct PromptVersion {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub prompt_id: Uuid,
    pub version: i32,
    pub parent_id: Option<Uuid>,
    pub messages: Value,
    pub params: Value,
    pub content_hash: String,
    pub commit_message: String,
    pub created_at: DateTime<Utc>,
}

impl PromptVersion {
    /// The stored content, parsed back into domain types.
    pub fn content(&self) -> Result<PromptContent, serde_json::Error> {
        Ok(PromptContent {
            messages: serde_json::from_value(self.messages.clone())?,
            params: serde_json::from_value(self.params.clone())?,
        })
    }
}

/// Creates a prompt. `Err(DatabaseError(UniqueViolation, ..))` when the
/// tenant already has a prompt of that name.
pub async fn create(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    actor: &str,
    name: &str,
    description: Option<&str>,
) -> QueryResult<Prompt> {
    conn.transaction(async |conn| {
        let prompt: Prompt = diesel::insert_into(prompts::table)
            .values((
                prompts::id.eq(Uuid::now_v7()),
                prompts::tenant_id.eq(tenant_id),
                prompts::name.eq(name),
                prompts::description.eq(description),
            ))
            .returning(Prompt::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.created",
                resource_type: "prompt",
                resource_id: prompt.id,
                data: serde_json::json!({ "name": name }),
            },
        )
        .await?;
        Ok(prompt)
    })
    .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Prompt>> {
    prompts::table
        .filter(prompts::tenant_id.eq(tenant_id))
        .filter(prompts::id.eq(id))
        .select(Prompt::as_select())
        .first(conn)
        .await
        .optional()
}

/// Newest first; `after` is the id of the last prompt of the previous page.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Page<Prompt>> {
    let mut query = prompts::table
        .filter(prompts::tenant_id.eq(tenant_id))
        .order(prompts::id.desc())
        .limit(limit + 1)
        .select(Prompt::as_select())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(prompts::id.lt(after));
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("prompt not found")]
    PromptNotFound,
    #[error("parent version {0} is not a version of this prompt")]
    UnknownParent(Uuid),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Appends a version. Its parent is `parent` or, by default, the latest
/// version; its number is the latest number plus one. Commits to one prompt
/// are serialised by a row lock on the prompt.
pub async fn commit_version(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    actor: &str,
    prompt_id: Uuid,
    content: &PromptContent,
    commit_message: &str,
    parent: Option<Uuid>,
) -> Result<PromptVersion, CommitError> {
    conn.transaction(async |conn| {
        prompts::table
            .filter(prompts::tenant_id.eq(tenant_id))
            .filter(prompts::id.eq(prompt_id))
            .select(prompts::id)
            .for_update()
            .first::<Uuid>(conn)
            .await
            .optional()?
            .ok_or(CommitError::PromptNotFound)?;
        let latest: Option<(Uuid, i32)> = prompt_versions::table
            .filter(prompt_versions::tenant_id.eq(tenant_id))
            .filter(prompt_versions::prompt_id.eq(prompt_id))
            .order(prompt_versions::version.desc())
            .select((prompt_versions::id, prompt_versions::version))
            .first(conn)
            .await
            .optional()?;
        let parent_id = match parent {
            None => latest.map(|(id, _)| id),
            Some(parent) => {
                let belongs = prompt_versions::table
                    .filter(prompt_versions::tenant_id.eq(tenant_id))
                    .filter(prompt_versions::prompt_id.eq(prompt_id))
                    .filter(prompt_versions::id.eq(parent))
                    .count()
                    .get_result::<i64>(conn)
                    .await?;
                if belongs == 0 {
                    return Err(CommitError::UnknownParent(parent));
                }
                Some(parent)
            }
        };
        let version: PromptVersion = diesel::insert_into(prompt_versions::table)
            .values((
                prompt_versions::id.eq(Uuid::now_v7()),
                prompt_versions::tenant_id.eq(tenant_id),
                prompt_versions::prompt_id.eq(prompt_id),
                prompt_versions::version.eq(latest.map_or(1, |(_, number)| number + 1)),
                prompt_versions::parent_id.eq(parent_id),
                prompt_versions::messages
                    .eq(serde_json::to_value(&content.messages).expect("serializable")),
                prompt_versions::params
                    .eq(serde_json::to_value(&content.params).expect("serializable")),
                prompt_versions::content_hash.eq(content.content_hash()),
                prompt_versions::commit_message.eq(commit_message),
            ))
            .returning(PromptVersion::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.version_committed",
                resource_type: "prompt",
                resource_id: prompt_id,
                data: serde_json::json!({ "version_id": version.id, "version": version.version }),
            },
        )
        .await?;
        Ok(version)
    })
    .await
}

/// Newest first; `after` is the number of the last version of the previous page.
pub async fn list_versions(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    prompt_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> QueryResult<Page<PromptVersion>> {
    let mut query = prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::prompt_id.eq(prompt_id))
        .order(prompt_versions::version.desc())
        .limit(limit + 1)
        .select(PromptVersion::as_select())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(prompt_versions::version.lt(after));
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// How a version is named in a URL: by number within its prompt, or by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(i32),
    Id(Uuid),
}

pub async fn get_version(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    prompt_id: Uuid,
    version: VersionRef,
) -> QueryResult<Option<PromptVersion>> {
    let query = prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::prompt_id.eq(prompt_id))
        .select(PromptVersion::as_select())
        .into_boxed();
    let query = match version {
        VersionRef::Number(number) => query.filter(prompt_versions::version.eq(number)),
        VersionRef::Id(id) => query.filter(prompt_versions::id.eq(id)),
    };
    query.first(conn).await.optional()
}

/// A version by id alone (evaluations name versions by id).
pub async fn get_version_by_id(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<PromptVersion>> {
    prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::id.eq(id))
        .select(PromptVersion::as_select())
        .first(conn)
        .await
        .optional()
}
