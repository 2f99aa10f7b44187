//! The append-only audit trail (a trigger refuses UPDATE and DELETE).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use crate::db::schema::events;
use crate::ids::TenantId;

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = events)]
pub struct NewEvent<'a> {
    pub tenant_id: TenantId,
    pub actor: &'a str,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: Uuid,
    pub data: Value,
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: i64,
    pub tenant_id: TenantId,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// Appends an event; one that webhooks are sent (see
/// [`crate::webhooks::EVENT_TYPES`]) also writes its deliveries, in the
/// caller's transaction (the outbox).
pub async fn record(conn: &mut AsyncPgConnection, event: NewEvent<'_>) -> QueryResult<()> {
    diesel::insert_into(events::table)
        .values(&event)
        .execute(conn)
        .await?;
    super::webhooks::enqueue_for_event(conn, &event)
        .await
        .map(drop)
}

/// Events about one resource, oldest first.
pub async fn for_resource(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    resource_id: Uuid,
) -> QueryResult<Vec<Event>> {
    events::table
        .filter(events::tenant_id.eq(tenant_id))
        .filter(events::resource_id.eq(resource_id))
        .order(events::id.asc())
        .select(Event::as_select())
        .load(conn)
        .await
}

/// Events about one resource of a type, newest first; `after` is the id of
/// the last event of the previous page.
pub async fn page_for_resource(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    resource_type: &str,
    resource_id: Uuid,
    after: Option<i64>,
    limit: i64,
) -> QueryResult<super::Page<Event>> {
    let mut query = events::table
        .filter(events::tenant_id.eq(tenant_id))
        .filter(events::resource_type.eq(resource_type.to_owned()))
        .filter(events::resource_id.eq(resource_id))
        .order(events::id.desc())
        .limit(limit + 1)
        .select(Event::as_select())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(events::id.lt(after));
    }
    Ok(super::Page::from_overfetched(
        query.load(conn).await?,
        limit,
    ))
}
