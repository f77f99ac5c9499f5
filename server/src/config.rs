//! Server configuration: the policy (defaults and maximums), capacity, and where it was read from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use isol8_api::NetworkMode;
use isol8_docker::{parse_size, EngineConfig, Limits};
use serde::{Deserialize, Serialize};

/// Limits as written in the config file (sizes as strings, like the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub timeout_ms: u64,
    pub memory_limit: String,
    pub cpu_limit: f64,
    pub pids_limit: u64,
    pub max_output_size: u64,
    pub sandbox_size: String,
    pub tmp_size: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            timeout_ms: 30_000,
            memory_limit: "512m".into(),
            cpu_limit: 1.0,
            pids_limit: 64,
            max_output_size: 1024 * 1024,
            sandbox_size: "512m".into(),
            tmp_size: "256m".into(),
        }
    }
}

impl LimitsConfig {
    pub fn to_limits(&self, field: &str) -> Result<Limits, String> {
        let size = |name: &str, raw: &str| {
            parse_size(&format!("{field}.{name}"), raw).map_err(|e| e.to_string())
        };
        let limits = Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: size("memoryLimit", &self.memory_limit)?,
            cpus: self.cpu_limit,
            pids: self.pids_limit,
            max_output_bytes: self.max_output_size,
            sandbox_bytes: size("sandboxSize", &self.sandbox_size)?,
            tmp_bytes: size("tmpSize", &self.tmp_size)?,
            ..Limits::default()
        };
        limits.validate().map_err(|e| format!("{field}: {e}"))?;
        Ok(limits)
    }
}

/// The config file (`isol8.config.json`, else `~/.isol8/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Limits applied where a request says nothing.
    pub defaults: LimitsConfig,
    /// The most a request may ask for.
    pub maximums: LimitsConfig,
    /// Network modes requests may use. `host` is off unless listed here.
    pub allowed_networks: Vec<NetworkMode>,
    /// Executions running at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; more get 429.
    pub max_queue: usize,
    /// How long a queued request waits before 429.
    pub queue_timeout_ms: u64,
    /// Largest request body in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Fresh warm containers per runtime.
    pub pool_size: usize,
    /// Reuse a container for the same key after a verified reset (off: fresh container per run).
    pub reuse_containers: bool,
    /// How long running executions may finish after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// OCI runtime for sandboxes, e.g. `runsc`.
    pub oci_runtime: Option<String>,
    /// Log format: `text` or `json`.
    pub log_format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            defaults: LimitsConfig::default(),
            maximums: LimitsConfig {
                timeout_ms: 300_000,
                memory_limit: "2g".into(),
                cpu_limit: 2.0,
                pids_limit: 256,
                max_output_size: 16 * 1024 * 1024,
                sandbox_size: "2g".into(),
                tmp_size: "1g".into(),
            },
            allowed_networks: vec![NetworkMode::None],
            max_concurrent: 10,
            max_queue: 100,
            queue_timeout_ms: 30_000,
            max_body_bytes: 10 * 1024 * 1024,
            pool_size: 2,
            reuse_containers: true,
            shutdown_grace_ms: 10_000,
            oci_runtime: None,
            log_format: "text".into(),
        }
    }
}

impl ServerConfig {
    /// Reads the first config file found (`./isol8.config.json`, `~/.isol8/config.json`), or the
    /// defaults. Returns the file used.
    pub fn load() -> Result<(ServerConfig, Option<PathBuf>), String> {
        let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".isol8/config.json"));
        for path in [Some(PathBuf::from("isol8.config.json")), home]
            .into_iter()
            .flatten()
        {
            if path.is_file() {
                return Self::from_file(&path).map(|c| (c, Some(path)));
            }
        }
        Ok((ServerConfig::default(), None))
    }

    pub fn from_file(path: &Path) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: ServerConfig = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid isol8 config: {e}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let defaults = self.defaults.to_limits("defaults")?;
        let max = self.maximums.to_limits("maximums")?;
        if let Some(name) = crate::policy::exceeds(&defaults, &max) {
            return Err(format!("defaults.{name} is above maximums.{name}"));
        }
        if self.max_concurrent == 0 {
            return Err("maxConcurrent must be at least 1".into());
        }
        Ok(())
    }

    pub fn default_limits(&self) -> Limits {
        self.defaults.to_limits("defaults").unwrap_or_default()
    }

    pub fn max_limits(&self) -> Limits {
        self.maximums.to_limits("maximums").unwrap_or_default()
    }

    pub fn engine_config(&self) -> EngineConfig {
        let mut engine = EngineConfig {
            default_limits: self.default_limits(),
            oci_runtime: self.oci_runtime.clone(),
            ..EngineConfig::default()
        };
        engine.pool.size = self.pool_size;
        engine.pool.reuse = self.reuse_containers;
        engine
    }
}
