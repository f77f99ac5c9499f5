//! The database itself: which backend a connection string names, the connection pool, the
//! embedded migrations, and the background sweep of expired keys and old audit rows.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions, Executor};

use super::config::{AuditConfig, AuthConfig};

/// Failures of the key store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A request the store refuses (a field out of range); the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot open the auth database {target}: {source}")]
    Connect {
        /// The connection string with any password removed.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the auth database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("auth database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `postgres://` or `postgresql://` is PostgreSQL; anything else is a SQLite file (a path or a
    /// `sqlite:` URL).
    pub fn of(connection: &str) -> Backend {
        let lower = connection.trim().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// The migrations of each backend, embedded at build time from `server/migrations/<backend>/`
/// (the SQL differs only where the dialects do). Built as `sqlx::migrate!` builds them (same
/// versions, same checksums, same `_sqlx_migrations` table), without sqlx's `macros` feature,
/// which would compile both drivers a second time for the proc-macro. A unit test checks this
/// list against the folders, so a new file cannot be left out.
type Embedded = &'static [(i64, &'static str, &'static str)];

const SQLITE: Embedded = &[
    (
        1,
        "keys_and_audit",
        include_str!("../../migrations/sqlite/0001_keys_and_audit.sql"),
    ),
    (
        2,
        "key_limits",
        include_str!("../../migrations/sqlite/0002_key_limits.sql"),
    ),
];
const POSTGRES: Embedded = &[
    (
        1,
        "keys_and_audit",
        include_str!("../../migrations/postgres/0001_keys_and_audit.sql"),
    ),
    (
        2,
        "key_limits",
        include_str!("../../migrations/postgres/0002_key_limits.sql"),
    ),
];

fn migrator(backend: Backend, up_to: Option<i64>) -> Migrator {
    let embedded = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let migrations: Vec<Migration> = embedded
        .iter()
        .filter(|(version, _, _)| up_to.is_none_or(|v| *version <= v))
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Owned(name.replace('_', " ")),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The latest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 2;

/// The key store and audit trail: a pool over SQLite or PostgreSQL. Cheap to clone (the pool is
/// shared). Every query is a short statement on a pooled connection; no lock of ours is held
/// around one.
#[derive(Debug, Clone)]
pub struct Database {
    pub(super) pool: AnyPool,
    pub backend: Backend,
    pub(super) auth: AuthConfig,
    pub(super) audit: AuditConfig,
}

/// A connection string fit for a log line: the password of a URL replaced.
fn redact(connection: &str) -> String {
    match connection.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => connection.to_string(),
        },
        None => connection.to_string(),
    }
}

impl Database {
    /// Opens (creating a SQLite file when missing) and migrates to the latest schema.
    pub async fn open(
        connection: &str,
        auth: &AuthConfig,
        audit: &AuditConfig,
    ) -> Result<Database, DbError> {
        let db = Self::connect(connection, auth, audit).await?;
        migrator(db.backend, None).run(&db.pool).await?;
        Ok(db)
    }

    /// Opens and migrates only up to `version` (tests of upgrades from an older schema).
    #[doc(hidden)]
    pub async fn open_at_version(connection: &str, version: i64) -> Result<Database, DbError> {
        let db = Self::connect(connection, &AuthConfig::default(), &AuditConfig::default()).await?;
        migrator(db.backend, Some(version)).run(&db.pool).await?;
        Ok(db)
    }

    async fn connect(
        connection: &str,
        auth: &AuthConfig,
        audit: &AuditConfig,
    ) -> Result<Database, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(connection);
        let failed = |source| DbError::Connect {
            target: redact(connection),
            source,
        };
        // A file this server creates is readable by its user only (its journals follow its mode).
        let creates_file = backend == Backend::Sqlite
            && !connection.starts_with("sqlite:")
            && !Path::new(connection).exists();
        let url = match backend {
            Backend::Postgres => connection.trim().to_string(),
            Backend::Sqlite if connection.starts_with("sqlite:") => connection.to_string(),
            Backend::Sqlite => {
                let path = Path::new(connection);
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| failed(sqlx::Error::Io(e)))?;
                }
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .to_url_lossy()
                    .to_string()
            }
        };
        let options = AnyConnectOptions::from_str(&url)
            // sqlx logs statements at debug level (slow ones as warnings): SQL text only, never
            // the values bound, so no key or hash reaches a log.
            .map_err(failed)?;
        let pool = AnyPoolOptions::new()
            .max_connections(auth.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: no fsync per commit
                        // (a power cut may lose the last commits, never corrupt the file).
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(failed)?;
        if creates_file {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(connection, private)
                .map_err(|e| failed(sqlx::Error::Io(e)))?;
        }
        Ok(Database {
            pool,
            backend,
            auth: auth.clone(),
            audit: audit.clone(),
        })
    }

    /// The schema version applied (the highest migration run).
    pub async fn schema_version(&self) -> Result<i64, DbError> {
        let row: (i64,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.0)
    }

    /// Deletes expired and revoked keys past `auth.keepRevokedMs`, and audit rows past
    /// `audit.retentionDays`, every `auth.cleanupIntervalMs`, until the task is aborted.
    pub async fn sweep_forever(self) {
        let every = Duration::from_millis(self.auth.cleanup_interval_ms);
        loop {
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "auth database sweep failed");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One sweep; returns the keys and audit rows deleted.
    pub async fn sweep(&self) -> Result<(u64, u64), DbError> {
        let now = now_ms();
        let keep = i64::try_from(self.auth.keep_revoked_ms).unwrap_or(i64::MAX);
        let horizon = now.saturating_sub(keep);
        let keys = sqlx::query(
            "DELETE FROM api_keys WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
        )
        .bind(horizon)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let mut rows = 0;
        if self.audit.retention_days > 0 {
            let days = i64::try_from(self.audit.retention_days).unwrap_or(i64::MAX / 86_400_000);
            let before = now.saturating_sub(days.saturating_mul(86_400_000));
            rows = sqlx::query("DELETE FROM audit_log WHERE time < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        if keys + rows > 0 {
            tracing::info!(keys, audit_rows = rows, "auth database sweep");
        }
        Ok((keys, rows))
    }
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_are_the_files_in_the_folders() {
        for (dir, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let named: Vec<String> = embedded
                .iter()
                .map(|(v, name, _)| format!("{v:04}_{name}.sql"))
                .collect();
            assert_eq!(files, named, "{dir}: embed every migration file, in order");
            for (file, (_, _, sql)) in files.iter().zip(embedded.iter()) {
                assert_eq!(std::fs::read_to_string(folder.join(file)).unwrap(), *sql);
            }
            assert_eq!(embedded.last().unwrap().0, SCHEMA_VERSION);
        }
    }

    #[test]
    fn connection_strings_pick_the_backend_and_passwords_stay_out_of_messages() {
        assert_eq!(Backend::of("postgres://u:p@h/db"), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://h/db"), Backend::Postgres);
        assert_eq!(Backend::of("/var/lib/isol8/auth.db"), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite:///tmp/a.db"), Backend::Sqlite);
        assert_eq!(
            redact("postgres://isol8:s3cret@db:5432/isol8"),
            "postgres://isol8:***@db:5432/isol8"
        );
    }
}
