//! Tenants and their API keys. Only a SHA-256 of a key is stored.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::schema::{api_keys, tenants};

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg))]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What a key may do beyond the ordinary. Stored as text in `api_keys.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Everything a tenant's user does.
    #[default]
    Member,
    /// Also: force a protected label to move.
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
    pub tenant_id: Uuid,
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
        diesel::insert_into(tenants::table)
            .values((
                tenants::id.eq(Uuid::now_v7()),
                tenants::name.eq(&tenant_name),
            ))
            .on_conflict(tenants::name)
            .do_nothing()
            .execute(conn)
            .await?;
        let tenant: Tenant = tenants::table
            .filter(tenants::name.eq(&tenant_name))
            .select(Tenant::as_select())
            .first(conn)
            .await?;
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

/// The caller a key belongs to, if it exists and is not revoked.
pub async fn authenticate(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<Caller>> {
    api_keys::table
        .filter(api_keys::key_hash.eq(hash_key(key)))
        .filter(api_keys::revoked_at.is_null())
        .select((api_keys::tenant_id, api_keys::id, api_keys::scope))
        .first::<(Uuid, Uuid, String)>(conn)
        .await
        .optional()
        .map(|found| {
            found.map(|(tenant_id, key_id, scope)| Caller {
                tenant_id,
                key_id,
                // The CHECK constraint allows known scopes only.
                scope: scope.parse().unwrap_or_default(),
            })
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
