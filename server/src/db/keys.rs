//! API keys in the database: made (256 random bits, shown once), stored as their SHA-256, listed
//! without secrets, revoked, and looked up on every request (no cache: a revocation or expiry
//! holds at once on every replica).

use chrono::{DateTime, SecondsFormat, Utc};
use isol8_api::{CreatedKey, KeyInfo, KeyLimits};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::store::{now_ms, Database, DbError};

/// What every database key starts with.
pub(super) const KEY_PREFIX: &str = "isol8_";

/// `lastUsedAt` is written at most this often per key, so a busy key costs no write per request.
const LAST_USED_PRECISION_MS: i64 = 60_000;

/// A valid (unrevoked, unexpired) key found for a request.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: String,
    pub tenant_id: String,
    pub limits: KeyLimits,
}

/// What a new key is made with; validated by `Database::create_key`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub tenant_id: String,
    pub ttl_ms: u64,
    pub limits: KeyLimits,
}

/// A database key has this exact shape; anything else is not looked up.
pub(super) fn looks_like_key(token: &str) -> bool {
    token.len() == KEY_PREFIX.len() + 64
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(super) fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Checks a tenant id: 1 to 64 letters, digits, `.`, `_` or `-` (it names sessions and containers).
pub(super) fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&tenant.len())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "tenantId {tenant:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'"
        )),
    }
}

fn limit(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

const KEY_COLUMNS: &str = "id, name, key_prefix, tenant_id, created_at, expires_at, last_used_at, \
     revoked_at, max_concurrent, max_queue, max_sessions";

fn key_info(row: &sqlx::any::AnyRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        key_prefix: row.try_get("key_prefix")?,
        tenant_id: row.try_get("tenant_id")?,
        created_at: rfc3339(row.try_get("created_at")?),
        expires_at: rfc3339(row.try_get("expires_at")?),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(rfc3339),
        revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        limits: KeyLimits {
            max_concurrent: limit(row.try_get("max_concurrent")?),
            max_queue: limit(row.try_get("max_queue")?),
            max_sessions: limit(row.try_get("max_sessions")?),
        },
    })
}

impl Database {
    /// The server's default lifetime of a new key (`auth.defaultTtlMs`).
    pub fn default_ttl_ms(&self) -> u64 {
        self.auth.default_ttl_ms
    }

    /// Makes a key: 32 random bytes from the OS, `isol8_` + hex. Only its hash is stored.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, DbError> {
        let name = new.name.trim();
        if name.is_empty() {
            return Err(DbError::Invalid("name is required".into()));
        }
        if name.chars().count() > 200 {
            return Err(DbError::Invalid(
                "name is longer than 200 characters".into(),
            ));
        }
        check_tenant(&new.tenant_id).map_err(DbError::Invalid)?;
        if new.ttl_ms == 0 || new.ttl_ms > self.auth.max_ttl_ms {
            return Err(DbError::Invalid(format!(
                "ttlMs must be between 1 and {} (auth.maxTtlMs)",
                self.auth.max_ttl_ms
            )));
        }
        if new.limits.max_concurrent == Some(0) {
            return Err(DbError::Invalid(
                "limits.maxConcurrent must be at least 1".into(),
            ));
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
        let id = uuid::Uuid::new_v4().to_string();
        let prefix = format!("{}...", &key[..10]);
        let created = now_ms();
        let expires = created.saturating_add(i64::try_from(new.ttl_ms).unwrap_or(i64::MAX));
        let opt = |v: Option<u32>| v.map(i64::from);
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, tenant_id, created_at, expires_at, \
             max_concurrent, max_queue, max_sessions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(name)
        .bind(hash(&key))
        .bind(&prefix)
        .bind(&new.tenant_id)
        .bind(created)
        .bind(expires)
        .bind(opt(new.limits.max_concurrent))
        .bind(opt(new.limits.max_queue))
        .bind(opt(new.limits.max_sessions))
        .execute(&self.pool)
        .await
        ?;
        tracing::info!(key_id = %id, tenant = %new.tenant_id, "API key created");
        Ok(CreatedKey {
            id,
            key,
            name: name.to_string(),
            key_prefix: prefix,
            tenant_id: new.tenant_id,
            expires_at: rfc3339(expires),
        })
    }

    /// Every key (of `tenant`, when given), newest first. Never a key or a hash.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>, DbError> {
        let rows = match tenant {
            Some(tenant) => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, id"
                ))
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.iter().map(key_info).collect::<Result<_, _>>()?)
    }

    /// Revokes key `id`; false when there is no such key. Revoking twice is fine.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, DbError> {
        let now = now_ms();
        let updated =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if updated > 0 {
            tracing::info!(key_id = %id, "API key revoked");
        }
        Ok(updated > 0)
    }

    /// The valid key `token` is, if any. Reads the database every time (no cache), so a key
    /// revoked or expired on any replica is refused at once on all of them. `lastUsedAt` is
    /// brought up to date in the background, at most once a minute per key.
    pub async fn find_key(&self, token: &str) -> Result<Option<StoredKey>, DbError> {
        if !looks_like_key(token) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, tenant_id, expires_at, last_used_at, max_concurrent, max_queue, max_sessions \
             FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let now = now_ms();
        if row.try_get::<i64, _>("expires_at")? <= now {
            return Ok(None);
        }
        let key = StoredKey {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            limits: KeyLimits {
                max_concurrent: limit(row.try_get("max_concurrent")?),
                max_queue: limit(row.try_get("max_queue")?),
                max_sessions: limit(row.try_get("max_sessions")?),
            },
        };
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        if last_used.is_none_or(|t| now - t >= LAST_USED_PRECISION_MS) {
            let pool = self.pool.clone();
            let id = key.id.clone();
            // Detached: the request does not wait for a write. A failure only leaves the
            // timestamp older.
            tokio::spawn(async move {
                let written = sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&pool)
                    .await;
                if let Err(error) = written {
                    tracing::debug!(%error, key_id = %id, "could not record lastUsedAt");
                }
            });
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_shape_is_looked_up() {
        let key = format!("isol8_{}", "ab".repeat(32));
        assert!(looks_like_key(&key));
        assert!(!looks_like_key(&key[..key.len() - 1]));
        assert!(!looks_like_key(&key.to_uppercase()));
        assert!(!looks_like_key("test-key-0123456789"));
        assert_eq!(hash("abc").len(), 64);
    }
}
