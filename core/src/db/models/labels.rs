//! Labels of a prompt (`production`, `staging`, ...): named pointers at
//! versions that people move by hand, with compare-and-set.
//!
//! Rules that hold here:
//! - every move runs under the prompt's row lock, checks `expected_version`
//!   against the current version, and writes exactly one `prompt.label_moved`
//!   event (who, from, to, why) in the same transaction; a move to the
//!   version the label already names writes nothing;
//! - a protected label moves only for a promotion job or an admin key with
//!   `force`; anyone may protect a label, only such a caller unprotects it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use super::events::{self, NewEvent};
use super::prompts::{self, PromptVersion, VersionRef};
use crate::db::schema::{prompt_labels, prompt_versions};
use crate::domain::InvalidInput;
use crate::ids::{PromptId, TenantId, VersionId};

/// Checks a label name: 1 to 36 of `a-z 0-9 _ . -`.
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    let ok = (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            field,
            "a label is 1 to 36 characters of a-z, 0-9, `_`, `.` and `-`",
        ))
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = prompt_labels, check_for_backend(diesel::pg::Pg))]
pub struct Label {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub name: String,
    pub version_id: VersionId,
    pub protected: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A label as the API shows it: with its version's number.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LabelView {
    pub name: String,
    pub prompt_id: PromptId,
    pub version_id: VersionId,
    pub version: i32,
    pub protected: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn view(label: Label, version: i32) -> LabelView {
    LabelView {
        name: label.name,
        prompt_id: label.prompt_id,
        version_id: label.version_id,
        version,
        protected: label.protected,
        created_at: label.created_at,
        updated_at: label.updated_at,
    }
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
) -> QueryResult<Option<Label>> {
    prompt_labels::table
        .filter(prompt_labels::tenant_id.eq(tenant_id))
        .filter(prompt_labels::prompt_id.eq(prompt_id))
        .filter(prompt_labels::name.eq(name))
        .select(Label::as_select())
        .first(conn)
        .await
        .optional()
}

/// The labels of a prompt with their versions' numbers, as a boxed query.
macro_rules! with_versions {
    ($tenant_id:expr, $prompt_id:expr) => {
        prompt_labels::table
            .inner_join(
                prompt_versions::table.on(prompt_versions::id.eq(prompt_labels::version_id)),
            )
            .filter(prompt_labels::tenant_id.eq($tenant_id))
            .filter(prompt_labels::prompt_id.eq($prompt_id))
            .select((Label::as_select(), prompt_versions::version))
            .into_boxed()
    };
}

pub async fn get_view(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    name: &str,
) -> QueryResult<Option<LabelView>> {
    Ok(with_versions!(tenant_id, prompt_id)
        .filter(prompt_labels::name.eq(name.to_owned()))
        .first::<(Label, i32)>(conn)
        .await
        .optional()?
        .map(|(label, version)| view(label, version)))
}

/// By name; `after` is the last name of the previous page.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    prompt_id: PromptId,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Page<LabelView>> {
    let mut query = with_versions!(tenant_id, prompt_id)
        .order(prompt_labels::name.asc())
        .limit(limit + 1);
    if let Some(after) = after {
        query = query.filter(prompt_labels::name.gt(after.to_owned()));
    }
    let rows: Vec<(Label, i32)> = query.load(conn).await?;
    Ok(Page::from_overfetched(
        rows.into_iter()
            .map(|(label, version)| view(label, version))
            .collect(),
        limit,
    ))
}

/// On whose authority a label moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// An ordinary API key.
    Member,
    /// An API key with the admin scope (still needs `force` for a protected label).
    Admin,
    /// A promotion job, whose own checks decided the move.
    Promotion,
}

/// A label move (or creation, when the label does not exist).
#[derive(Debug, Clone)]
pub struct Move<'a> {
    pub name: &'a str,
    pub to: VersionRef,
    /// Compare-and-set: `None` = no check; `Some(None)` = the label must not
    /// exist yet; `Some(Some(v))` = it must name `v` now.
    pub expected: Option<Option<VersionRef>>,
    pub reason: Option<&'a str>,
    pub force: bool,
    /// Set or clear protection with the move.
    pub protect: Option<bool>,
    pub authority: Authority,
}

/// What a move did.
#[derive(Debug, Clone)]
pub struct Moved {
    pub label: LabelView,
    /// Whether anything changed (and an event was written).
    pub changed: bool,
    /// Whether the label was created by this move.
    pub created: bool,
}

/// Why a move was refused.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("prompt not found")]
    PromptNotFound,
    #[error("the target version is not a version of this prompt")]
    UnknownVersion,
    #[error("expected_version is not a version of this prompt")]
    UnknownExpected,
    /// Compare-and-set failed: `current` is what the label names now.
    #[error("label {name:?} does not name the expected version")]
    Mismatch {
        name: String,
        current: Option<Box<LabelView>>,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Creates or moves a label; see the module rules.
pub async fn move_label(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    actor: &str,
    prompt_id: PromptId,
    request: Move<'_>,
) -> Result<Moved, MoveError> {
    conn.transaction(async |conn| {
        if !prompts::lock_prompt(conn, tenant_id, prompt_id).await? {
            return Err(MoveError::PromptNotFound);
        }
        let target: PromptVersion = prompts::get_version(conn, tenant_id, prompt_id, request.to)
            .await?
            .ok_or(MoveError::UnknownVersion)?;
        let current = get(conn, tenant_id, prompt_id, request.name).await?;
        let privileged = match request.authority {
            Authority::Promotion => true,
            Authority::Admin => request.force,
            Authority::Member => false,
        };
        if let Some(label) = &current {
            let unprotecting = label.protected && request.protect == Some(false);
            if (label.protected || unprotecting) && !privileged {
                return Err(MoveError::Forbidden(match request.authority {
                    Authority::Admin => format!(
                        "label {:?} is protected: an admin key must pass \"force\": true to change it",
                        request.name
                    ),
                    _ => format!(
                        "label {:?} is protected: only a promotion job or an admin key with \"force\" may change it",
                        request.name
                    ),
                }));
            }
        }
        if let Some(expected) = request.expected {
            let expected_id = match expected {
                Some(expected) => Some(
                    prompts::get_version(conn, tenant_id, prompt_id, expected)
                        .await?
                        .ok_or(MoveError::UnknownExpected)?
                        .id,
                ),
                None => None,
            };
            if current.as_ref().map(|label| label.version_id) != expected_id {
                let current = match &current {
                    Some(label) => {
                        let number = prompts::require_version(
                            conn,
                            tenant_id,
                            prompt_id,
                            VersionRef::Id(label.version_id),
                        )
                        .await?
                        .version;
                        Some(Box::new(view(label.clone(), number)))
                    }
                    None => None,
                };
                return Err(MoveError::Mismatch {
                    name: request.name.to_owned(),
                    current,
                });
            }
        }
        let from = current.as_ref().map(|label| label.version_id);
        let protected = request
            .protect
            .unwrap_or_else(|| current.as_ref().is_some_and(|label| label.protected));
        if let Some(label) = &current
            && label.version_id == target.id
            && label.protected == protected
        {
            return Ok(Moved {
                label: view(label.clone(), target.version),
                changed: false,
                created: false,
            });
        }
        let label: Label = match &current {
            Some(label) => {
                diesel::update(prompt_labels::table)
                    .filter(prompt_labels::id.eq(label.id))
                    .set((
                        prompt_labels::version_id.eq(target.id),
                        prompt_labels::protected.eq(protected),
                        prompt_labels::updated_at.eq(diesel::dsl::now),
                    ))
                    .returning(Label::as_returning())
                    .get_result(conn)
                    .await?
            }
            None => {
                diesel::insert_into(prompt_labels::table)
                    .values((
                        prompt_labels::id.eq(Uuid::now_v7()),
                        prompt_labels::tenant_id.eq(tenant_id),
                        prompt_labels::prompt_id.eq(prompt_id),
                        prompt_labels::name.eq(request.name),
                        prompt_labels::version_id.eq(target.id),
                        prompt_labels::protected.eq(protected),
                    ))
                    .returning(Label::as_returning())
                    .get_result(conn)
                    .await?
            }
        };
        let from_number = match from {
            Some(from) => Some(
                prompts::require_version(conn, tenant_id, prompt_id, VersionRef::Id(from))
                    .await?
                    .version,
            ),
            None => None,
        };
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "prompt.label_moved",
                resource_type: "prompt_label",
                resource_id: label.id,
                data: serde_json::json!({
                    "prompt_id": prompt_id,
                    "label": request.name,
                    "from_version_id": from,
                    "from_version": from_number,
                    "to_version_id": target.id,
                    "to_version": target.version,
                    "reason": request.reason,
                    "forced": request.force && current.as_ref().is_some_and(|label| label.protected),
                    "authority": match request.authority {
                        Authority::Member => "member",
                        Authority::Admin => "admin",
                        Authority::Promotion => "promotion",
                    },
                    "protected": protected,
                }),
            },
        )
        .await?;
        Ok(Moved {
            label: view(label, target.version),
            changed: true,
            created: current.is_none(),
        })
    })
    .await
}
