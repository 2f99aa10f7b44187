//! `Idempotency-Key` records (`idempotency_keys`): a tenant's key claimed
//! before the work of a POST starts, then completed with the response to
//! replay, for 24 hours.
//!
//! Rules that hold here:
//! - one claim at a time: the claim is a single `INSERT … ON CONFLICT`, so of
//!   concurrent requests with one key exactly one wins;
//! - only the winner (its `claim_id`) completes or releases its claim;
//! - a claim whose request died is taken over once its `locked_at` is older
//!   than the lock timeout, and a record older than its time to live is
//!   claimed afresh: no key stays stuck.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Double, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::idempotency_keys;
use crate::ids::TenantId;

/// How long a completed key is replayed.
pub const TIME_TO_LIVE: Duration = Duration::from_secs(24 * 60 * 60);

/// The stored state of a key someone else claimed.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = idempotency_keys, check_for_backend(diesel::pg::Pg))]
pub struct IdempotencyRecord {
    pub status: String,
    pub request_hash: Option<Vec<u8>>,
    pub response_status: Option<i32>,
    pub response_headers: Option<serde_json::Value>,
    pub response_body: Option<Vec<u8>>,
}

impl IdempotencyRecord {
    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }
}

/// The outcome of a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This request holds the key: do the work, then complete or release it.
    Won,
    /// Another request holds it (in progress) or finished it (completed).
    Taken(IdempotencyRecord),
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    claim_id: Uuid,
}

/// Claims `key` for `claim_id`: inserts it, or takes over a record past its
/// time to live or an in-progress claim locked longer than `lock_timeout`.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    key: &str,
    claim_id: Uuid,
    lock_timeout: Duration,
) -> QueryResult<Claim> {
    // A record can vanish between a lost claim and the read (the purge):
    // then claim again.
    for _ in 0..3 {
        let claimed: Option<Claimed> = diesel::sql_query(
            "INSERT INTO idempotency_keys (tenant_id, idempotency_key, claim_id, status) \
             VALUES ($1, $2, $3, 'in_progress') \
             ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET \
                 claim_id = EXCLUDED.claim_id, status = 'in_progress', request_hash = NULL, \
                 response_status = NULL, response_headers = NULL, response_body = NULL, \
                 locked_at = now(), created_at = now() \
             WHERE idempotency_keys.created_at < now() - make_interval(secs => $4) \
                OR (idempotency_keys.status = 'in_progress' \
                    AND idempotency_keys.locked_at < now() - make_interval(secs => $5)) \
             RETURNING claim_id",
        )
        .bind::<diesel::sql_types::Uuid, _>(tenant_id)
        .bind::<Text, _>(key)
        .bind::<diesel::sql_types::Uuid, _>(claim_id)
        .bind::<Double, _>(TIME_TO_LIVE.as_secs_f64())
        .bind::<Double, _>(lock_timeout.as_secs_f64())
        .get_result(conn)
        .await
        .optional()?;
        if claimed.is_some_and(|row| row.claim_id == claim_id) {
            return Ok(Claim::Won);
        }
        let record = idempotency_keys::table
            .filter(idempotency_keys::tenant_id.eq(tenant_id))
            .filter(idempotency_keys::idempotency_key.eq(key))
            .select(IdempotencyRecord::as_select())
            .first(conn)
            .await
            .optional()?;
        if let Some(record) = record {
            return Ok(Claim::Taken(record));
        }
    }
    Err(diesel::result::Error::NotFound)
}

/// What a completed request answered.
#[derive(Debug, Clone)]
pub struct StoredResponse<'a> {
    pub request_hash: &'a [u8],
    pub status: i32,
    pub headers: serde_json::Value,
    pub body: &'a [u8],
}

/// Completes this request's claim with its response; false when the claim
/// is no longer this request's (it was taken over after the lock timeout).
pub async fn complete(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    key: &str,
    claim_id: Uuid,
    response: &StoredResponse<'_>,
) -> QueryResult<bool> {
    let updated = diesel::update(
        idempotency_keys::table
            .filter(idempotency_keys::tenant_id.eq(tenant_id))
            .filter(idempotency_keys::idempotency_key.eq(key))
            .filter(idempotency_keys::claim_id.eq(claim_id))
            .filter(idempotency_keys::status.eq("in_progress")),
    )
    .set((
        idempotency_keys::status.eq("completed"),
        idempotency_keys::request_hash.eq(response.request_hash),
        idempotency_keys::response_status.eq(response.status),
        idempotency_keys::response_headers.eq(&response.headers),
        idempotency_keys::response_body.eq(response.body),
    ))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Gives up this request's claim (nothing to replay: the next request with
/// the key does the work).
pub async fn release(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    key: &str,
    claim_id: Uuid,
) -> QueryResult<()> {
    diesel::delete(
        idempotency_keys::table
            .filter(idempotency_keys::tenant_id.eq(tenant_id))
            .filter(idempotency_keys::idempotency_key.eq(key))
            .filter(idempotency_keys::claim_id.eq(claim_id))
            .filter(idempotency_keys::status.eq("in_progress")),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes records past their time to live, at most `batch` of them; returns how many.
pub async fn purge_expired(conn: &mut AsyncPgConnection, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE ctid IN ( \
             SELECT ctid FROM idempotency_keys \
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind::<Double, _>(TIME_TO_LIVE.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
