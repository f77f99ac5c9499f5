//! What lets a server's sessions outlive its process: the server's identity on its Docker engine
//! (the `isol8.server` label on its session containers) and one record per session in its data
//! folder, holding what container labels cannot (they are fixed at creation, and readable by
//! anyone who can inspect the container): the last use, the idle timeout, and the secrets the
//! session must keep masking.
//!
//! The data folder is 0700 and every record 0600, written whole to a temporary file and renamed,
//! so a crash leaves the old record or the new one, never half of one. A lock on `<dataDir>/lock`,
//! held for the server's life, keeps a second server from using the same folder (and identity)
//! at once: that one runs with a random identity of its own instead, and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use isol8_api::Runtime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ServerConfig;

/// Checks a `serverId`: 1 to 64 letters, digits, `.`, `_` or `-` (it becomes a label value).
pub(crate) fn check_server_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "serverId {id:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'"
        )),
    }
}

/// What a session needs, besides its container, to be adopted by the next server process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub id: String,
    pub owner: String,
    pub runtime: Runtime,
    pub created: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    pub idle_timeout_ms: u64,
    /// The secrets the interpreter holds (name → value): later calls get them again.
    pub secrets: BTreeMap<String, String>,
    /// Every secret value the session was ever given: all stay masked in its output.
    pub secret_values: BTreeSet<String>,
}

/// The server's identity and its session records.
#[derive(Debug)]
pub struct SessionStore {
    server_id: String,
    /// `<dataDir>/sessions`; `None` when the data folder could not be used (sessions then do not
    /// outlive this process).
    records: Option<PathBuf>,
    /// The data folder's lock, held until the server ends.
    _lock: Option<File>,
}

impl SessionStore {
    /// The identity and records `config` names (`serverId`, `dataDir`), made on first use.
    pub fn open(config: &ServerConfig) -> SessionStore {
        let dir = config.data_dir.clone().or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".isol8").join("server"))
        });
        let opened = dir
            .as_deref()
            .map(|dir| Self::open_dir(dir, config.server_id.clone()));
        match opened {
            Some(Ok(store)) => store,
            Some(Err(reason)) => {
                tracing::warn!(%reason, "sessions will not outlive this server process");
                Self::ephemeral()
            }
            None => {
                tracing::warn!(
                    "no dataDir and no HOME: sessions will not outlive this server process"
                );
                Self::ephemeral()
            }
        }
    }

    /// A store that keeps nothing, with a random identity (CLI sessions, an unusable folder).
    pub fn ephemeral() -> SessionStore {
        SessionStore {
            server_id: format!("ephemeral-{}", uuid::Uuid::new_v4().simple()),
            records: None,
            _lock: None,
        }
    }

    fn open_dir(dir: &Path, server_id: Option<String>) -> Result<SessionStore, String> {
        let shown = dir.display();
        let make = |path: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
                .map_err(|e| format!("cannot use the data folder {}: {e}", path.display()))
        };
        make(dir)?;
        let records = dir.join("sessions");
        make(&records)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| format!("cannot open {shown}/lock: {e}"))?;
        if lock.try_lock().is_err() {
            return Err(format!(
                "another server uses the data folder {shown}; give each server its own dataDir"
            ));
        }
        let server_id = match server_id {
            Some(id) => id,
            None => Self::stored_id(dir)?,
        };
        Ok(SessionStore {
            server_id,
            records: Some(records),
            _lock: Some(lock),
        })
    }

    /// The id in `<dir>/server-id`, made (random) when there is none.
    fn stored_id(dir: &Path) -> Result<String, String> {
        let path = dir.join("server-id");
        match fs::read_to_string(&path) {
            Ok(text) if check_server_id(text.trim()).is_ok() => Ok(text.trim().to_string()),
            Ok(_) => Err(format!("{} does not hold a valid serverId", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("srv-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
                write_private(&path, format!("{id}\n").as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(id)
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The `isol8.server` label of this server's session containers.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Whether records are kept (sessions can outlive this process).
    pub fn durable(&self) -> bool {
        self.records.is_some()
    }

    fn path(&self, owner: &str, id: &str) -> Option<PathBuf> {
        let digest = Sha256::digest(format!("{owner}\0{id}").as_bytes());
        let name = format!("{}.json", hex::encode(&digest[..16]));
        self.records.as_ref().map(|dir| dir.join(name))
    }

    /// Writes `record`; a failure is logged (the session then may not be adopted later).
    pub fn save(&self, record: &SessionRecord) {
        let Some(path) = self.path(&record.owner, &record.id) else {
            return;
        };
        let result = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_private(&path, &bytes));
        if let Err(error) = result {
            tracing::warn!(session = %record.id, %error, "could not write the session's record");
        }
    }

    pub fn load(&self, owner: &str, id: &str) -> Option<SessionRecord> {
        let bytes = fs::read(self.path(owner, id)?).ok()?;
        serde_json::from_slice(&bytes)
            .ok()
            .filter(|r: &SessionRecord| r.owner == owner && r.id == id)
    }

    pub fn remove(&self, owner: &str, id: &str) {
        if let Some(path) = self.path(owner, id) {
            let _ = fs::remove_file(path);
        }
    }

    /// Every record kept, for removing those whose container is gone.
    pub fn all(&self) -> Vec<SessionRecord> {
        let Some(dir) = &self.records else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| fs::read(e.ok()?.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }
}

/// Writes `bytes` to `path` as a 0600 file, atomically (a temporary file renamed over it).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ServerConfig {
        ServerConfig {
            data_dir: Some(dir.to_path_buf()),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn the_identity_is_kept_and_records_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = SessionStore::open(&config(dir.path()));
            assert!(store.durable());
            let record = SessionRecord {
                id: "s".into(),
                owner: "o".into(),
                runtime: Runtime::Python,
                created: Utc::now(),
                last_used: Utc::now(),
                idle_timeout_ms: 5,
                secrets: BTreeMap::from([("K".into(), "v".into())]),
                secret_values: BTreeSet::from(["v".into()]),
            };
            store.save(&record);
            assert_eq!(store.load("o", "s"), Some(record));
            assert_eq!(store.load("other", "s"), None);
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("sessions")), 0o700);
            for entry in fs::read_dir(dir.path().join("sessions")).unwrap() {
                assert_eq!(mode(&entry.unwrap().path()), 0o600);
            }
            // A second server on the same folder gets an identity of its own.
            let second = SessionStore::open(&config(dir.path()));
            assert!(!second.durable());
            assert_ne!(second.server_id(), store.server_id());
            store.server_id().to_string()
        };
        let again = SessionStore::open(&config(dir.path()));
        assert_eq!(again.server_id(), id);
        assert_eq!(again.all().len(), 1);
    }
}
