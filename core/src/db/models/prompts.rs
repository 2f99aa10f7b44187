//! Prompts and their immutable, numbered versions (git-like: each version
//! points at its parent and carries a content hash and a commit message).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::Page;
use super::events::{self, NewEvent};
use crate::db::schema::{prompt_versions, prompts};
use crate::domain::PromptContent;
use crate::ids::{PromptId, TenantId, VersionId};

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = prompts, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prompt {
    pub id: PromptId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize)]
#[diesel(table_name = prompt_versions, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptVersion {
    pub id: VersionId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub version: i32,
    pub parent_id: Option<VersionId>,
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
    tenant_id: TenantId,
    actor: &str,
    name: &str,
    description: Option<&str>,
) -> QueryResult<Prompt> {
    conn.transaction(async |conn| {
        let prompt: Prompt = diesel::insert_into(prompts::table)
            .values((
                prompts::id.eq(PromptId::now_v7()),
                prompts::tenant_id.eq(tenant_id),
                prompts::name.eq(name),
                prompts::description.eq(description),
            ))
            .returning(Prompt::as_returning())
            .get_result(conn)
            .await?;
        // Every prompt has `main`; it stays empty until the first commit.
        super::branches::insert(conn, tenant_id, prompt.id, super::branches::MAIN, None).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.created",
                resource_type: "prompt",
                resource_id: prompt.id.uuid(),
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
    tenant_id: TenantId,
    id: PromptId,
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
    tenant_id: TenantId,
    after: Option<PromptId>,
    limit: i64,
) -> QueryResult<Page<Prompt>> {
    let query = super::tenant_page_newest_first!(prompts, Prompt, tenant_id, after, limit);
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("prompt not found")]
    PromptNotFound,
    #[error("branch {0:?} not found")]
    BranchNotFound(String),
    /// `expected_head` names no version of this prompt.
    #[error("expected_head is not a version of this prompt")]
    UnknownExpectedHead,
    /// Compare-and-set failed: the branch head is no longer `expected_head`.
    #[error("the head of branch {branch:?} has moved")]
    HeadMoved {
        branch: String,
        current: Option<Box<PromptVersion>>,
    },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// What a commit did.
#[derive(Debug, Clone)]
pub enum Committed {
    /// A new version, now the branch head.
    Created(PromptVersion),
    /// The content equals the head's: nothing was written; this is the head.
    Unchanged(PromptVersion),
}

impl Committed {
    pub fn version(&self) -> &PromptVersion {
        match self {
            Committed::Created(version) | Committed::Unchanged(version) => version,
        }
    }

    pub fn into_version(self) -> PromptVersion {
        match self {
            Committed::Created(version) | Committed::Unchanged(version) => version,
        }
    }
}

/// A commit: content onto a branch, optionally guarded by the head the
/// caller last saw.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub branch: &'a str,
    /// Compare-and-set: commit only if the branch head is this version.
    pub expected_head: Option<VersionRef>,
    pub content: &'a PromptContent,
    pub commit_message: &'a str,
    /// For a revert: the version whose content this is (recorded in the event).
    pub reverts: Option<VersionId>,
}

/// Locks the prompt row: every change to a prompt's branches, labels and
/// version numbers happens under it, so they are serialised per prompt.
pub(crate) async fn lock_prompt(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
) -> QueryResult<bool> {
    Ok(prompts::table
        .filter(prompts::tenant_id.eq(tenant_id))
        .filter(prompts::id.eq(prompt_id))
        .select(prompts::id)
        .for_update()
        .first::<PromptId>(conn)
        .await
        .optional()?
        .is_some())
}

/// Appends a version to a branch: its parent is the branch head, its number
/// the prompt's latest plus one, and the head moves to it. With
/// `expected_head`, the head moves only if it still is that version
/// (compare-and-set, under the prompt's row lock). Content equal to the
/// head's writes nothing and returns the head; so does retrying a commit
/// that already succeeded (the head's parent is `expected_head` and its
/// content is this content).
pub async fn commit(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    actor: &str,
    prompt_id: PromptId,
    commit: Commit<'_>,
) -> Result<Committed, CommitError> {
    conn.transaction(async |conn| {
        if !lock_prompt(conn, tenant_id, prompt_id).await? {
            return Err(CommitError::PromptNotFound);
        }
        let branch = super::branches::get_locked(conn, tenant_id, prompt_id, commit.branch)
            .await?
            .ok_or_else(|| CommitError::BranchNotFound(commit.branch.to_owned()))?;
        let head = match branch.head_version_id {
            Some(id) => get_version(conn, tenant_id, prompt_id, VersionRef::Id(id)).await?,
            None => None,
        };
        let hash = commit.content.content_hash();
        if let Some(expected) = commit.expected_head {
            let expected = get_version(conn, tenant_id, prompt_id, expected)
                .await?
                .ok_or(CommitError::UnknownExpectedHead)?;
            if head.as_ref().map(|head| head.id) != Some(expected.id) {
                return match head {
                    Some(head)
                        if head.parent_id == Some(expected.id) && head.content_hash == hash =>
                    {
                        Ok(Committed::Unchanged(head))
                    }
                    current => Err(CommitError::HeadMoved {
                        branch: branch.name,
                        current: current.map(Box::new),
                    }),
                };
            }
        }
        if let Some(head) = head
            && head.content_hash == hash
        {
            return Ok(Committed::Unchanged(head));
        }
        let latest: Option<i32> = prompt_versions::table
            .filter(prompt_versions::tenant_id.eq(tenant_id))
            .filter(prompt_versions::prompt_id.eq(prompt_id))
            .select(diesel::dsl::max(prompt_versions::version))
            .first(conn)
            .await?;
        let version: PromptVersion = diesel::insert_into(prompt_versions::table)
            .values((
                prompt_versions::id.eq(VersionId::now_v7()),
                prompt_versions::tenant_id.eq(tenant_id),
                prompt_versions::prompt_id.eq(prompt_id),
                prompt_versions::version.eq(latest.map_or(1, |number| number + 1)),
                prompt_versions::parent_id.eq(branch.head_version_id),
                prompt_versions::messages
                    .eq(serde_json::to_value(&commit.content.messages).expect("serializable")),
                prompt_versions::params
                    .eq(serde_json::to_value(&commit.content.params).expect("serializable")),
                prompt_versions::content_hash.eq(hash),
                prompt_versions::commit_message.eq(commit.commit_message),
            ))
            .returning(PromptVersion::as_returning())
            .get_result(conn)
            .await?;
        super::branches::set_head(conn, &branch, version.id).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.version_committed",
                resource_type: "prompt",
                resource_id: prompt_id.uuid(),
                data: serde_json::json!({
                    "version_id": version.id,
                    "version": version.version,
                    "branch": branch.name,
                    "branch_id": branch.id,
                    "previous_head": branch.head_version_id,
                    "reverts": commit.reverts,
                }),
            },
        )
        .await?;
        Ok(Committed::Created(version))
    })
    .await
}

/// A version by number or id, or why not.
pub async fn require_version(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    version: VersionRef,
) -> QueryResult<PromptVersion> {
    get_version(conn, tenant_id, prompt_id, version)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

/// The ancestry of a version, itself first, then its parent, and so on
/// (newest first). `after` is the last version of the previous page: the
/// page starts at its parent.
pub async fn log(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    start: VersionId,
    after: Option<VersionId>,
    limit: i64,
) -> QueryResult<Page<PromptVersion>> {
    use diesel::sql_types::{BigInt, Integer, Uuid as SqlUuid};
    let (anchor, skip) = match after {
        Some(after) => (after, 1),
        None => (start, 0),
    };
    // PostgreSQL evaluates a recursive CTE lazily: the LIMIT stops the walk.
    let rows: Vec<PromptVersion> = diesel::sql_query(
        "WITH RECURSIVE chain AS ( \
             SELECT v.*, 0 AS depth FROM prompt_versions v \
             WHERE v.tenant_id = $1 AND v.prompt_id = $2 AND v.id = $3 \
             UNION ALL \
             SELECT p.*, chain.depth + 1 FROM prompt_versions p JOIN chain ON p.id = chain.parent_id \
         ) \
         SELECT id, tenant_id, prompt_id, version, parent_id, messages, params, content_hash, \
                commit_message, created_at \
         FROM chain WHERE depth >= $4 ORDER BY depth LIMIT $5",
    )
    .bind::<SqlUuid, _>(tenant_id)
    .bind::<SqlUuid, _>(prompt_id)
    .bind::<SqlUuid, _>(anchor)
    .bind::<Integer, _>(skip)
    .bind::<BigInt, _>(limit + 1)
    .load(conn)
    .await?;
    Ok(Page::from_overfetched(rows, limit))
}

/// Versions whose parent is `parent`, oldest first; `after` is a version number.
pub async fn children(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    parent: VersionId,
    after: Option<i32>,
    limit: i64,
) -> QueryResult<Page<PromptVersion>> {
    let mut query = prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::prompt_id.eq(prompt_id))
        .filter(prompt_versions::parent_id.eq(parent))
        .order(prompt_versions::version.asc())
        .limit(limit + 1)
        .select(PromptVersion::as_select())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(prompt_versions::version.gt(after));
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// The nearest version that is an ancestor of both (a version is its own
/// ancestor). Versions have one parent, so the common ancestors form one
/// chain and the nearest to `a` is also the nearest to `b`.
pub async fn common_ancestor(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    a: VersionId,
    b: VersionId,
) -> QueryResult<Option<PromptVersion>> {
    use diesel::sql_types::Uuid as SqlUuid;
    let rows: Vec<PromptVersion> = diesel::sql_query(
        "WITH RECURSIVE \
         a AS ( \
             SELECT id, parent_id, 0 AS depth FROM prompt_versions \
             WHERE tenant_id = $1 AND prompt_id = $2 AND id = $3 \
             UNION ALL \
             SELECT p.id, p.parent_id, a.depth + 1 FROM prompt_versions p JOIN a ON p.id = a.parent_id \
         ), \
         b AS ( \
             SELECT id, parent_id FROM prompt_versions \
             WHERE tenant_id = $1 AND prompt_id = $2 AND id = $4 \
             UNION ALL \
             SELECT p.id, p.parent_id FROM prompt_versions p JOIN b ON p.id = b.parent_id \
         ), \
         nearest AS (SELECT a.id FROM a JOIN b ON a.id = b.id ORDER BY a.depth LIMIT 1) \
         SELECT v.id, v.tenant_id, v.prompt_id, v.version, v.parent_id, v.messages, v.params, \
                v.content_hash, v.commit_message, v.created_at \
         FROM prompt_versions v JOIN nearest ON v.id = nearest.id",
    )
    .bind::<SqlUuid, _>(tenant_id)
    .bind::<SqlUuid, _>(prompt_id)
    .bind::<SqlUuid, _>(a)
    .bind::<SqlUuid, _>(b)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// A prompt named by id (when `name_or_id` parses as one) or by name.
pub async fn find(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    name_or_id: &str,
) -> QueryResult<Option<Prompt>> {
    if let Ok(id) = name_or_id.parse::<PromptId>()
        && let Some(prompt) = get(conn, tenant_id, id).await?
    {
        return Ok(Some(prompt));
    }
    prompts::table
        .filter(prompts::tenant_id.eq(tenant_id))
        .filter(prompts::name.eq(name_or_id))
        .select(Prompt::as_select())
        .first(conn)
        .await
        .optional()
}

/// What a label or a branch points at now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointer<'a> {
    Label(&'a str),
    Branch(&'a str),
}

/// Why a pointer did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("label {0:?} not found")]
    NoLabel(String),
    #[error("branch {0:?} not found")]
    NoBranch(String),
    #[error("branch {0:?} has no version yet")]
    EmptyBranch(String),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// The version a label or branch of a prompt points at.
pub async fn resolve(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    pointer: Pointer<'_>,
) -> Result<PromptVersion, ResolveError> {
    let version_id = match pointer {
        Pointer::Label(name) => {
            super::labels::get(conn, tenant_id, prompt_id, name)
                .await?
                .ok_or_else(|| ResolveError::NoLabel(name.to_owned()))?
                .version_id
        }
        Pointer::Branch(name) => super::branches::get(conn, tenant_id, prompt_id, name)
            .await?
            .ok_or_else(|| ResolveError::NoBranch(name.to_owned()))?
            .head_version_id
            .ok_or_else(|| ResolveError::EmptyBranch(name.to_owned()))?,
    };
    Ok(require_version(conn, tenant_id, prompt_id, VersionRef::Id(version_id)).await?)
}

/// Newest first; `after` is the number of the last version of the previous page.
pub async fn list_versions(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
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

/// How a version is named in a URL or a body: by number within its prompt, or by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(i32),
    Id(VersionId),
}

impl std::str::FromStr for VersionRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match (text.parse::<i32>(), text.parse::<VersionId>()) {
            (Ok(number), _) => Ok(VersionRef::Number(number)),
            (_, Ok(id)) => Ok(VersionRef::Id(id)),
            _ => Err(format!(
                "{text:?} is neither a version number nor a version id"
            )),
        }
    }
}

/// In JSON a version is a number (`3`) or a string (an id, or `"3"`).
impl<'de> serde::Deserialize<'de> for VersionRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i32),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            <D::Error as serde::de::Error>::custom("expected a version number or a version id")
        })? {
            Raw::Number(number) => Ok(VersionRef::Number(number)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

pub async fn get_version(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
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
    tenant_id: TenantId,
    id: VersionId,
) -> QueryResult<Option<PromptVersion>> {
    prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::id.eq(id))
        .select(PromptVersion::as_select())
        .first(conn)
        .await
        .optional()
}
