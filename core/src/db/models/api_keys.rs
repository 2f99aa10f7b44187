//! Tenants and their API keys. Only a SHA-256 of a key is stored.
//!
//! A key is valid while it is neither revoked nor past its `expires_at`.
//! Every request checks this in PostgreSQL (no cache), so a revocation
//! holds on every API replica from the moment it commits.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::models::Page;
use crate::db::models::tenant_limits::TenantLimits;
use crate::db::schema::{api_keys, tenant_limits, tenants};
use crate::ids::TenantId;

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg))]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What a key may do beyond the ordinary. Stored as text in `api_keys.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyScope {
    /// Everything a tenant's user does.
    #[default]
    Member,
    /// Also: manage the tenant's keys, force a protected label to move.
    Admin,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Member => "member",
            KeyScope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for KeyScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "member" => Ok(KeyScope::Member),
            "admin" => Ok(KeyScope::Admin),
            other => Err(format!("unknown key scope {other:?} (member or admin)")),
        }
    }
}

/// Who is calling: the tenant, the key it used and that key's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub key_id: Uuid,
    pub scope: KeyScope,
}

impl Caller {
    /// How the events table names this caller.
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
    }
}

const KEY_PREFIX: &str = "assay_";
const KEY_RANDOM_CHARS: usize = 40;

/// A fresh key: `assay_` and 40 random base-62 characters (~238 bits), so a
/// plain SHA-256 is enough to store it (no slow hash needed, unlike passwords).
fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..KEY_RANDOM_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates the tenant if it does not exist and a new member key for it;
/// returns the tenant and the key, which is never readable again.
pub async fn create_key(
    conn: &mut AsyncPgConnection,
    tenant_name: &str,
) -> QueryResult<(Tenant, String)> {
    create_key_with_scope(conn, tenant_name, KeyScope::Member).await
}

/// [`create_key`] with a chosen scope.
pub async fn create_key_with_scope(
    conn: &mut AsyncPgConnection,
    tenant_name: &str,
    scope: KeyScope,
) -> QueryResult<(Tenant, String)> {
    let tenant_name = tenant_name.to_owned();
    conn.transaction(async |conn| {
        let tenant = ensure_tenant(conn, &tenant_name).await?;
        let key = generate_key();
        diesel::insert_into(api_keys::table)
            .values((
                api_keys::id.eq(Uuid::now_v7()),
                api_keys::tenant_id.eq(tenant.id),
                api_keys::key_hash.eq(hash_key(&key)),
                api_keys::key_prefix.eq(&key[..KEY_PREFIX.len() + 6]),
                api_keys::scope.eq(scope.as_str()),
            ))
            .execute(conn)
            .await?;
        Ok((tenant, key))
    })
    .await
}

/// A key as listed: never its secret, only its first characters.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: Option<String>,
    pub key_prefix: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// `active`, `revoked` or `expired` (at `now`).
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|expires| expires <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// What a new key is for.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub scope: KeyScope,
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a key for an existing tenant; returns its row and the secret,
/// which is never readable again.
pub async fn create_for_tenant(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    new: &NewKey,
) -> QueryResult<(ApiKey, String)> {
    let key = generate_key();
    let row = diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(Uuid::now_v7()),
            api_keys::tenant_id.eq(tenant_id),
            api_keys::key_hash.eq(hash_key(&key)),
            api_keys::key_prefix.eq(&key[..KEY_PREFIX.len() + 6]),
            api_keys::scope.eq(new.scope.as_str()),
            api_keys::name.eq(new.name.as_deref()),
            api_keys::expires_at.eq(new.expires_at),
        ))
        .returning(ApiKey::as_returning())
        .get_result(conn)
        .await?;
    Ok((row, key))
}

/// A tenant's keys, newest first, revoked and expired ones included.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Page<ApiKey>> {
    let query = super::tenant_page_newest_first!(api_keys, ApiKey, tenant_id, after, limit);
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// One of a tenant's keys.
pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<ApiKey>> {
    api_keys::table
        .filter(api_keys::tenant_id.eq(tenant_id))
        .filter(api_keys::id.eq(id))
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes one of a tenant's keys (a key already revoked keeps its first
/// `revoked_at`); None when the tenant has no such key.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<ApiKey>> {
    diesel::update(
        api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id))
            .filter(api_keys::id.eq(id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    get(conn, tenant_id, id).await
}

/// For operators (`assay-api keys list`): every key with its tenant's name,
/// of one tenant when `tenant_name` is given.
pub async fn list_all(
    conn: &mut AsyncPgConnection,
    tenant_name: Option<&str>,
) -> QueryResult<Vec<(String, ApiKey)>> {
    let mut query = api_keys::table
        .inner_join(tenants::table)
        .select((tenants::name, ApiKey::as_select()))
        .order((tenants::name, api_keys::id))
        .into_boxed();
    if let Some(name) = tenant_name {
        query = query.filter(tenants::name.eq(name.to_owned()));
    }
    query.load(conn).await
}

/// For operators (`assay-api keys revoke <id>`): revokes a key of any tenant.
pub async fn revoke_any(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApiKey>> {
    let tenant_id = api_keys::table
        .filter(api_keys::id.eq(id))
        .select(api_keys::tenant_id)
        .first::<TenantId>(conn)
        .await
        .optional()?;
    match tenant_id {
        Some(tenant_id) => revoke(conn, tenant_id, id).await,
        None => Ok(None),
    }
}

/// The id of the tenant named `name`.
pub async fn tenant_id_by_name(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> QueryResult<Option<TenantId>> {
    tenants::table
        .filter(tenants::name.eq(name))
        .select(tenants::id)
        .first(conn)
        .await
        .optional()
}

/// What a presented key turned out to be.
#[derive(Debug, Clone)]
pub enum KeyCheck {
    /// Valid: the caller, and its tenant's limits when it has overrides.
    Valid(Caller, Option<TenantLimits>),
    Unknown,
    Revoked,
    Expired,
}

impl KeyCheck {
    /// A low-cardinality label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            KeyCheck::Valid(..) => "valid",
            KeyCheck::Unknown => "unknown",
            KeyCheck::Revoked => "revoked",
            KeyCheck::Expired => "expired",
        }
    }
}

/// Checks a presented key in one query, with its tenant's limit overrides.
pub async fn check(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<KeyCheck> {
    let found = api_keys::table
        .left_join(tenant_limits::table.on(tenant_limits::tenant_id.eq(api_keys::tenant_id)))
        .filter(api_keys::key_hash.eq(hash_key(key)))
        .select((
            api_keys::tenant_id,
            api_keys::id,
            api_keys::scope,
            api_keys::revoked_at.is_not_null(),
            // The database's clock, like `revoked_at`: every replica agrees.
            api_keys::expires_at.le(diesel::dsl::now),
            Option::<TenantLimits>::as_select(),
        ))
        .first::<(
            TenantId,
            Uuid,
            String,
            bool,
            Option<bool>,
            Option<TenantLimits>,
        )>(conn)
        .await
        .optional()?;
    let Some((tenant_id, key_id, scope, revoked, expired, limits)) = found else {
        return Ok(KeyCheck::Unknown);
    };
    if revoked {
        return Ok(KeyCheck::Revoked);
    }
    if expired == Some(true) {
        return Ok(KeyCheck::Expired);
    }
    Ok(KeyCheck::Valid(
        Caller {
            tenant_id,
            key_id,
            // The CHECK constraint allows known scopes only.
            scope: scope.parse().unwrap_or_default(),
        },
        limits,
    ))
}

/// The tenant named `name`, created if new.
pub async fn ensure_tenant(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Tenant> {
    diesel::insert_into(tenants::table)
        .values((tenants::id.eq(TenantId::now_v7()), tenants::name.eq(name)))
        .on_conflict(tenants::name)
        .do_nothing()
        .execute(conn)
        .await?;
    tenants::table
        .filter(tenants::name.eq(name))
        .select(Tenant::as_select())
        .first(conn)
        .await
}

/// The caller a key belongs to, if it exists and is neither revoked nor expired.
pub async fn authenticate(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<Caller>> {
    Ok(match check(conn, key).await? {
        KeyCheck::Valid(caller, _) => Some(caller),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with("assay_"));
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_eq!(hash_key(&a).len(), 32);
    }
}
