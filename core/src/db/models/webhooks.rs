//! Webhooks, their events, deliveries and attempts: the outbox.
//!
//! Rules that hold here:
//! - [`enqueue_for_event`] runs inside the transaction that records the
//!   audit event ([`super::events::record`]), so an evaluation or versioning
//!   job that finishes owes its webhooks exactly the deliveries written with
//!   it: none lost if a process dies, none written for a finish that rolled back;
//! - a delivery is `pending` until an attempt succeeds (`succeeded`) or its
//!   retry window ends (`failed`); [`claim`] takes it for one attempt only
//!   when it is due and no other attempt holds it, so two pushes of one
//!   delivery never send it twice at once;
//! - `job_id` names the live push; NULL means due for one ([`take_due`]),
//!   and a push lost in Redis is found by [`stale_pushes`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use super::events::NewEvent;
use crate::db::schema::{webhook_attempts, webhook_deliveries, webhook_events, webhooks};
use crate::ids::{EvaluationId, TenantId};
use crate::webhooks::{event_body, is_webhook_event};

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = webhooks, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub url: String,
    /// Shown once, at creation.
    #[serde(skip)]
    pub secret: String,
    /// Event types sent; None: every type.
    pub events: Option<Value>,
    /// Set for an evaluation's own webhook (`webhook_url`).
    pub evaluation_id: Option<EvaluationId>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = webhooks)]
pub struct NewWebhook {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub url: String,
    pub secret: String,
    pub events: Option<Value>,
    pub evaluation_id: Option<EvaluationId>,
}

pub async fn create(conn: &mut AsyncPgConnection, new: &NewWebhook) -> QueryResult<Webhook> {
    diesel::insert_into(webhooks::table)
        .values(new)
        .returning(Webhook::as_returning())
        .get_result(conn)
        .await
}

/// Removes a webhook that never received anything: an evaluation's own,
/// written before an evaluation that then could not be recorded.
pub async fn forget_unused(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<()> {
    diesel::delete(
        webhooks::table
            .filter(webhooks::tenant_id.eq(tenant_id))
            .filter(webhooks::id.eq(id))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(id)),
            ))),
    )
    .execute(conn)
    .await
    .map(drop)
}

/// A webhook that was not deleted.
pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<Webhook>> {
    webhooks::table
        .filter(webhooks::tenant_id.eq(tenant_id))
        .filter(webhooks::id.eq(id))
        .filter(webhooks::deleted_at.is_null())
        .select(Webhook::as_select())
        .first(conn)
        .await
        .optional()
}

/// Webhooks not deleted, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Page<Webhook>> {
    let query = super::tenant_page_newest_first!(webhooks, Webhook, tenant_id, after, limit)
        .filter(webhooks::deleted_at.is_null());
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Deletes a webhook: nothing more is sent to it, and its pending
/// deliveries end `failed`. False when there was no such webhook.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let deleted = diesel::update(
            webhooks::table
                .filter(webhooks::tenant_id.eq(tenant_id))
                .filter(webhooks::id.eq(id))
                .filter(webhooks::deleted_at.is_null()),
        )
        .set(webhooks::deleted_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
        if deleted == 1 {
            diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::webhook_id.eq(id))
                    .filter(webhook_deliveries::status.eq("pending")),
            )
            .set((
                webhook_deliveries::status.eq("failed"),
                webhook_deliveries::last_error.eq("the webhook was deleted"),
                webhook_deliveries::finished_at.eq(diesel::dsl::now),
                webhook_deliveries::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        }
        Ok(deleted == 1)
    })
    .await
}

/// Writes the webhook event for an audit event, and one delivery per
/// webhook of its tenant that wants it (a tenant webhook subscribed to the
/// type, or the evaluation's own). Nothing when no webhook wants it.
/// Returns the deliveries written. Runs in the caller's transaction.
pub async fn enqueue_for_event(
    conn: &mut AsyncPgConnection,
    event: &NewEvent<'_>,
) -> QueryResult<usize> {
    if !is_webhook_event(event.action) {
        return Ok(0);
    }
    let mut targets = webhooks::table
        .filter(webhooks::tenant_id.eq(event.tenant_id))
        .filter(webhooks::deleted_at.is_null())
        .into_boxed();
    targets = if event.resource_type == "evaluation" {
        targets.filter(
            webhooks::evaluation_id
                .is_null()
                .or(webhooks::evaluation_id.eq(event.resource_id)),
        )
    } else {
        targets.filter(webhooks::evaluation_id.is_null())
    };
    let targets: Vec<Uuid> = targets
        .filter(
            webhooks::events
                .is_null()
                .or(webhooks::events.has_key(event.action.to_owned())),
        )
        .select(webhooks::id)
        .load(conn)
        .await?;
    if targets.is_empty() {
        return Ok(0);
    }
    let (event_id, created_at) = (Uuid::now_v7(), Utc::now());
    diesel::insert_into(webhook_events::table)
        .values((
            webhook_events::id.eq(event_id),
            webhook_events::tenant_id.eq(event.tenant_id),
            webhook_events::event_type.eq(event.action),
            webhook_events::resource_type.eq(event.resource_type),
            webhook_events::resource_id.eq(event.resource_id),
            webhook_events::body.eq(event_body(
                event_id,
                event.action,
                created_at,
                event.resource_type,
                event.resource_id,
                &event.data,
            )),
            webhook_events::created_at.eq(created_at),
        ))
        .execute(conn)
        .await?;
    let rows: Vec<_> = targets
        .iter()
        .map(|webhook_id| {
            (
                webhook_deliveries::id.eq(Uuid::now_v7()),
                webhook_deliveries::tenant_id.eq(event.tenant_id),
                webhook_deliveries::webhook_id.eq(*webhook_id),
                webhook_deliveries::event_id.eq(event_id),
            )
        })
        .collect();
    diesel::insert_into(webhook_deliveries::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .execute(conn)
        .await
}

/// A delivery to push: its tenant, id, and the task id recorded for the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct DuePush {
    #[diesel(sql_type = SqlUuid)]
    pub tenant_id: TenantId,
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub job_id: Uuid,
}

/// Takes up to `limit` due deliveries that have no push, recording a fresh
/// task id for each (one statement; `SKIP LOCKED`, so two workers never
/// take the same one). Push them after this returns.
pub async fn take_due(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<DuePush>> {
    diesel::sql_query(
        "WITH due AS (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND job_id IS NULL AND next_attempt_at <= now()
             ORDER BY next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE webhook_deliveries AS d
         SET job_id = gen_random_uuid(), pushed_at = now(), updated_at = now()
         FROM due WHERE d.id = due.id
         RETURNING d.tenant_id, d.id, d.job_id",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Due deliveries pushed more than `grace` ago that no attempt holds: their
/// push may be gone (Redis lost it, or the push failed after the commit).
/// (delivery id, recorded task id).
pub async fn stale_pushes(
    conn: &mut AsyncPgConnection,
    grace: Duration,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid)>> {
    let now = Utc::now();
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or_default();
    let rows: Vec<(Uuid, Option<Uuid>)> = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq("pending"))
        .filter(webhook_deliveries::job_id.is_not_null())
        .filter(webhook_deliveries::pushed_at.lt(cutoff))
        .filter(webhook_deliveries::next_attempt_at.le(now))
        .filter(
            webhook_deliveries::locked_until
                .is_null()
                .or(webhook_deliveries::locked_until.lt(now)),
        )
        .order(webhook_deliveries::next_attempt_at.asc())
        .limit(limit)
        .select((webhook_deliveries::id, webhook_deliveries::job_id))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, job)| Some((id, job?)))
        .collect())
}

/// Gives a delivery whose push is gone a fresh task id, if its recorded one
/// is still `lost_job` (nothing else re-pushed it meanwhile).
pub async fn replace_push(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lost_job: Uuid,
) -> QueryResult<Option<DuePush>> {
    diesel::sql_query(
        "UPDATE webhook_deliveries
         SET job_id = gen_random_uuid(), pushed_at = now(), updated_at = now()
         WHERE id = $1 AND job_id = $2 AND status = 'pending'
         RETURNING tenant_id, id, job_id",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lost_job)
    .get_result(conn)
    .await
    .optional()
}

/// A delivery taken for one attempt, with what the attempt sends.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub tenant_id: TenantId,
    /// This attempt's number, from 1.
    #[diesel(sql_type = Int4)]
    pub attempt: i32,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    pub webhook_id: Uuid,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub secret: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub webhook_deleted_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: Uuid,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub body: String,
}

/// Takes a pending, due delivery for one attempt, holding it for `hold`;
/// None when it is not pending, not due, or held by another attempt (a
/// duplicate push: it does nothing).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    hold: Duration,
) -> QueryResult<Option<Claimed>> {
    diesel::sql_query(
        "WITH claimed AS (
             UPDATE webhook_deliveries
             SET attempts = attempts + 1,
                 locked_until = now() + make_interval(secs => $3),
                 updated_at = now()
             WHERE id = $1 AND tenant_id = $2 AND status = 'pending'
               AND next_attempt_at <= now()
               AND (locked_until IS NULL OR locked_until < now())
             RETURNING id, tenant_id, attempts, created_at, webhook_id, event_id)
         SELECT c.id, c.tenant_id, c.attempts AS attempt, c.created_at, c.webhook_id,
                w.url, w.secret, w.deleted_at AS webhook_deleted_at,
                e.id AS event_id, e.event_type, e.body
         FROM claimed c
         JOIN webhooks w ON w.id = c.webhook_id
         JOIN webhook_events e ON e.id = c.event_id",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(tenant_id)
    .bind::<diesel::sql_types::Double, _>(hold.as_secs_f64())
    .get_result(conn)
    .await
    .optional()
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Succeeded,
    /// Failed; the next attempt is due after this delay.
    RetryIn(Duration),
    /// Failed, and the retry window is over (or the webhook is gone).
    GiveUp,
}

/// One attempt as it happened.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Records attempt `claimed.attempt` and moves the delivery on: done,
/// failed for good, or due again later (and back to "needs a push"). One
/// transaction; a re-run of the same attempt changes nothing.
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    claimed: &Claimed,
    record: &AttemptRecord,
    after: AfterAttempt,
) -> QueryResult<()> {
    conn.transaction(async |conn| {
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::delivery_id.eq(claimed.id),
                webhook_attempts::attempt.eq(claimed.attempt),
                webhook_attempts::tenant_id.eq(claimed.tenant_id),
                webhook_attempts::started_at.eq(record.started_at),
                webhook_attempts::duration_ms.eq(record.duration_ms),
                webhook_attempts::status_code.eq(record.status_code),
                webhook_attempts::error.eq(record.error.as_deref()),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        let (status, retry_in) = match after {
            AfterAttempt::Succeeded => ("succeeded", None),
            AfterAttempt::RetryIn(delay) => ("pending", Some(delay)),
            AfterAttempt::GiveUp => ("failed", None),
        };
        diesel::sql_query(
            "UPDATE webhook_deliveries
             SET status = $3,
                 last_status_code = $4,
                 last_error = $5,
                 locked_until = NULL,
                 job_id = NULL,
                 next_attempt_at = CASE WHEN $6::float8 IS NULL THEN next_attempt_at
                                        ELSE now() + make_interval(secs => $6) END,
                 finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END,
                 updated_at = now()
             WHERE id = $1 AND attempts = $2 AND status = 'pending'",
        )
        .bind::<SqlUuid, _>(claimed.id)
        .bind::<Int4, _>(claimed.attempt)
        .bind::<Text, _>(status)
        .bind::<Nullable<Int4>, _>(record.status_code)
        .bind::<Nullable<Text>, _>(record.error.as_deref())
        .bind::<Nullable<diesel::sql_types::Double>, _>(retry_in.map(|delay| delay.as_secs_f64()))
        .execute(conn)
        .await?;
        Ok(())
    })
    .await
}

/// A delivery as its log shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The `Assay-Event-Id` every attempt carried.
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempt_count: i32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    #[serde(skip)]
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// A webhook's deliveries, newest first, each with its attempts.
pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    webhook_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Page<Delivery>> {
    type Row = (
        Uuid,
        Uuid,
        Uuid,
        String,
        String,
        i32,
        DateTime<Utc>,
        Option<i32>,
        Option<String>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let mut query = webhook_deliveries::table
        .inner_join(webhook_events::table)
        .filter(webhook_deliveries::tenant_id.eq(tenant_id))
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .order(webhook_deliveries::id.desc())
        .limit(limit + 1)
        .select((
            webhook_deliveries::id,
            webhook_deliveries::webhook_id,
            webhook_deliveries::event_id,
            webhook_events::event_type,
            webhook_deliveries::status,
            webhook_deliveries::attempts,
            webhook_deliveries::next_attempt_at,
            webhook_deliveries::last_status_code,
            webhook_deliveries::last_error,
            webhook_deliveries::created_at,
            webhook_deliveries::finished_at,
        ))
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(webhook_deliveries::id.lt(after));
    }
    let page = Page::from_overfetched(query.load::<Row>(conn).await?, limit);
    let ids: Vec<Uuid> = page.data.iter().map(|row| row.0).collect();
    let attempts: Vec<Attempt> = webhook_attempts::table
        .filter(webhook_attempts::tenant_id.eq(tenant_id))
        .filter(webhook_attempts::delivery_id.eq_any(&ids))
        .order((
            webhook_attempts::delivery_id.asc(),
            webhook_attempts::attempt.asc(),
        ))
        .select(Attempt::as_select())
        .load(conn)
        .await?;
    let mut by_delivery: std::collections::HashMap<Uuid, Vec<Attempt>> =
        std::collections::HashMap::new();
    for attempt in attempts {
        by_delivery
            .entry(attempt.delivery_id)
            .or_default()
            .push(attempt);
    }
    let data = page
        .data
        .into_iter()
        .map(|row| {
            let mine = by_delivery.remove(&row.0).unwrap_or_default();
            Delivery {
                id: row.0,
                webhook_id: row.1,
                event_id: row.2,
                event_type: row.3,
                next_attempt_at: (row.4 == "pending").then_some(row.6),
                status: row.4,
                attempt_count: row.5,
                last_status_code: row.7,
                last_error: row.8,
                created_at: row.9,
                finished_at: row.10,
                attempts: mine,
            }
        })
        .collect();
    Ok(Page {
        data,
        has_more: page.has_more,
    })
}

/// Pending deliveries of every tenant, for the `assay_webhook_deliveries_pending` gauge.
pub async fn pending_count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    webhook_deliveries::table
        .filter(webhook_deliveries::status.eq("pending"))
        .count()
        .get_result(conn)
        .await
}
