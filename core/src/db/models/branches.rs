//! Branches of a prompt: named, movable pointers at versions (`main` is
//! created with the prompt). A head moves only by a commit (or a revert),
//! under the prompt's row lock, so concurrent commits with the same
//! expected head cannot both win. Deleting a branch keeps its versions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use super::events::{self, NewEvent};
use super::prompts::{self, VersionRef};
use crate::db::schema::{prompt_branches, prompt_versions};
use crate::domain::InvalidInput;
use crate::ids::{PromptId, TenantId, VersionId};

/// The branch every prompt has, and the default of commits.
pub const MAIN: &str = "main";

/// Checks a branch name: 1 to 64 of `a-z 0-9 _ . -` (it appears in URLs).
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            field,
            "a branch name is 1 to 64 characters of a-z, 0-9, `_`, `.` and `-`",
        ))
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = prompt_branches, check_for_backend(diesel::pg::Pg))]
pub struct Branch {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub name: String,
    pub head_version_id: Option<VersionId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A branch as the API shows it: with its head's number.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BranchView {
    pub name: String,
    pub prompt_id: PromptId,
    pub head_version_id: Option<VersionId>,
    pub head_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) async fn insert(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
    head: Option<VersionId>,
) -> QueryResult<Branch> {
    diesel::insert_into(prompt_branches::table)
        .values((
            prompt_branches::id.eq(Uuid::now_v7()),
            prompt_branches::tenant_id.eq(tenant_id),
            prompt_branches::prompt_id.eq(prompt_id),
            prompt_branches::name.eq(name),
            prompt_branches::head_version_id.eq(head),
        ))
        .returning(Branch::as_returning())
        .get_result(conn)
        .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
) -> QueryResult<Option<Branch>> {
    prompt_branches::table
        .filter(prompt_branches::tenant_id.eq(tenant_id))
        .filter(prompt_branches::prompt_id.eq(prompt_id))
        .filter(prompt_branches::name.eq(name))
        .select(Branch::as_select())
        .first(conn)
        .await
        .optional()
}

/// The branch, for a commit that holds the prompt's lock. A prompt created
/// by code older than branches gets its `main` here, at its latest version.
pub(crate) async fn get_locked(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
) -> QueryResult<Option<Branch>> {
    if let Some(branch) = get(conn, tenant_id, prompt_id, name).await? {
        return Ok(Some(branch));
    }
    if name != MAIN {
        return Ok(None);
    }
    let latest: Option<VersionId> = prompt_versions::table
        .filter(prompt_versions::tenant_id.eq(tenant_id))
        .filter(prompt_versions::prompt_id.eq(prompt_id))
        .order(prompt_versions::version.desc())
        .select(prompt_versions::id)
        .first(conn)
        .await
        .optional()?;
    insert(conn, tenant_id, prompt_id, MAIN, latest)
        .await
        .map(Some)
}

pub(crate) async fn set_head(
    conn: &mut AsyncPgConnection,
    branch: &Branch,
    head: VersionId,
) -> QueryResult<()> {
    diesel::update(prompt_branches::table)
        .filter(prompt_branches::id.eq(branch.id))
        .set((
            prompt_branches::head_version_id.eq(head),
            prompt_branches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

fn view(branch: Branch, head_version: Option<i32>) -> BranchView {
    BranchView {
        name: branch.name,
        prompt_id: branch.prompt_id,
        head_version_id: branch.head_version_id,
        head_version,
        created_at: branch.created_at,
        updated_at: branch.updated_at,
    }
}

/// The branches of a prompt with their heads' numbers, as a boxed query
/// (a macro, because the query's type is long to spell).
macro_rules! with_heads {
    ($tenant_id:expr, $prompt_id:expr) => {
        prompt_branches::table
            .left_join(
                prompt_versions::table.on(prompt_versions::id
                    .nullable()
                    .eq(prompt_branches::head_version_id)),
            )
            .filter(prompt_branches::tenant_id.eq($tenant_id))
            .filter(prompt_branches::prompt_id.eq($prompt_id))
            .select((Branch::as_select(), prompt_versions::version.nullable()))
            .into_boxed()
    };
}

/// One branch with its head's number.
pub async fn get_view(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
) -> QueryResult<Option<BranchView>> {
    Ok(with_heads!(tenant_id, prompt_id)
        .filter(prompt_branches::name.eq(name.to_owned()))
        .first::<(Branch, Option<i32>)>(conn)
        .await
        .optional()?
        .map(|(branch, number)| view(branch, number)))
}

/// By name; `after` is the last name of the previous page.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Page<BranchView>> {
    let mut query = with_heads!(tenant_id, prompt_id)
        .order(prompt_branches::name.asc())
        .limit(limit + 1);
    if let Some(after) = after {
        query = query.filter(prompt_branches::name.gt(after.to_owned()));
    }
    let rows: Vec<(Branch, Option<i32>)> = query.load(conn).await?;
    Ok(Page::from_overfetched(
        rows.into_iter()
            .map(|(branch, number)| view(branch, number))
            .collect(),
        limit,
    ))
}

/// Why a branch change was refused.
#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error("prompt not found")]
    PromptNotFound,
    #[error("branch {0:?} not found")]
    NotFound(String),
    #[error("version not found")]
    VersionNotFound,
    #[error("a branch named {0:?} exists already")]
    Exists(String),
    #[error("the main branch cannot be deleted")]
    Main,
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Creates a branch at `at` (default: the head of `main`).
pub async fn create(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    actor: &str,
    prompt_id: PromptId,
    name: &str,
    at: Option<VersionRef>,
) -> Result<BranchView, BranchError> {
    conn.transaction(async |conn| {
        if !prompts::lock_prompt(conn, tenant_id, prompt_id).await? {
            return Err(BranchError::PromptNotFound);
        }
        if get(conn, tenant_id, prompt_id, name).await?.is_some() {
            return Err(BranchError::Exists(name.to_owned()));
        }
        let head = match at {
            Some(at) => Some(
                prompts::get_version(conn, tenant_id, prompt_id, at)
                    .await?
                    .ok_or(BranchError::VersionNotFound)?,
            ),
            None => match get_locked(conn, tenant_id, prompt_id, MAIN)
                .await?
                .and_then(|main| main.head_version_id)
            {
                Some(id) => {
                    prompts::get_version(conn, tenant_id, prompt_id, VersionRef::Id(id)).await?
                }
                None => None,
            },
        };
        let branch = insert(
            conn,
            tenant_id,
            prompt_id,
            name,
            head.as_ref().map(|head| head.id),
        )
        .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.branch_created",
                resource_type: "prompt_branch",
                resource_id: branch.id,
                data: serde_json::json!({
                    "prompt_id": prompt_id,
                    "branch": name,
                    "head_version_id": branch.head_version_id,
                }),
            },
        )
        .await?;
        Ok(view(branch, head.map(|head| head.version)))
    })
    .await
}

/// Deletes a branch (not `main`); its versions stay.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    actor: &str,
    prompt_id: PromptId,
    name: &str,
) -> Result<(), BranchError> {
    conn.transaction(async |conn| {
        if !prompts::lock_prompt(conn, tenant_id, prompt_id).await? {
            return Err(BranchError::PromptNotFound);
        }
        if name == MAIN {
            return Err(BranchError::Main);
        }
        let branch = get(conn, tenant_id, prompt_id, name)
            .await?
            .ok_or_else(|| BranchError::NotFound(name.to_owned()))?;
        diesel::delete(prompt_branches::table)
            .filter(prompt_branches::id.eq(branch.id))
            .execute(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.branch_deleted",
                resource_type: "prompt_branch",
                resource_id: branch.id,
                data: serde_json::json!({
                    "prompt_id": prompt_id,
                    "branch": name,
                    "head_version_id": branch.head_version_id,
                }),
            },
        )
        .await?;
        Ok(())
    })
    .await
}
