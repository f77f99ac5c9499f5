//! Server configuration: the policy (defaults and maximums), capacity, and where it was read from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isol8_api::NetworkMode;
use isol8_docker::{format_size, EngineConfig, ImagePolicy, LimitFields, Limits, PlanDefaults};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// How the server writes its logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Limits as written in the config file (sizes as strings, like the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock limit of one execution, in milliseconds.
    pub timeout_ms: u64,
    /// Memory (no swap), e.g. `512m`, `1g`.
    pub memory_limit: String,
    /// CPU cores.
    pub cpu_limit: f64,
    /// Processes and threads.
    pub pids_limit: u64,
    /// Bytes of stdout (and of stderr) kept.
    pub max_output_size: u64,
    /// Size of the `/sandbox` tmpfs, e.g. `512m`.
    pub sandbox_size: String,
    /// Size of the `/tmp` tmpfs, e.g. `256m`.
    pub tmp_size: String,
}

/// Written the way a config file writes them; `Limits::default()` holds the default values.
impl From<&Limits> for LimitsConfig {
    fn from(limits: &Limits) -> Self {
        LimitsConfig {
            timeout_ms: limits.timeout.as_millis() as u64,
            memory_limit: format_size(limits.memory_bytes),
            cpu_limit: limits.cpus,
            pids_limit: limits.pids,
            max_output_size: limits.max_output_bytes,
            sandbox_size: format_size(limits.sandbox_bytes),
            tmp_size: format_size(limits.tmp_bytes),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        (&Limits::default()).into()
    }
}

impl LimitsConfig {
    /// Parsed and validated; errors name the field as `{field}.memoryLimit`.
    pub fn to_limits(&self, field: &str) -> Result<Limits, String> {
        let fields = LimitFields {
            timeout_ms: Some(self.timeout_ms),
            memory_limit: Some(&self.memory_limit),
            cpu_limit: Some(self.cpu_limit),
            pids_limit: Some(self.pids_limit),
            max_output_size: Some(self.max_output_size),
            sandbox_size: Some(&self.sandbox_size),
            tmp_size: Some(&self.tmp_size),
        };
        Limits::default()
            .overlay(&fields, &format!("{field}."))
            .map_err(|e| e.to_string())
    }
}

/// The isol8 server configuration (`isol8.config.json`, else `~/.isol8/config.json`; every field
/// optional, each overridable by an `ISOL8_...` environment variable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[schema(title = "isol8 server configuration")]
pub struct ServerConfig {
    /// Limits applied where a request says nothing.
    #[schema(inline)]
    pub defaults: LimitsConfig,
    /// The most a request may ask for.
    #[schema(inline)]
    pub maximums: LimitsConfig,
    /// Network modes requests may use (`none` and `filtered` by default: a filtered sandbox reaches
    /// only the hosts its allow list names, through the proxy, and never private, link-local or
    /// host addresses; add `host` only where that is wanted).
    #[schema(inline)]
    pub allowed_networks: Vec<NetworkMode>,
    /// Mode for requests that name none (`none` or `filtered`; must be in `allowedNetworks`).
    #[schema(inline)]
    pub default_network: NetworkMode,
    /// Hostname regexes every `filtered` run may reach, besides the request's own.
    pub network_allow: Vec<String>,
    /// Hostname regexes no `filtered` run may reach, whatever the request allows.
    pub network_deny: Vec<String>,
    /// Package registry hostnames (regexes) per runtime, allowed in `filtered` mode when a
    /// request installs packages.
    pub registry_hosts: BTreeMap<String, Vec<String>>,
    /// Images a request may name in `options.image` besides isol8's own (which are always
    /// allowed): glob patterns matched against the name as the request writes it, where `*`
    /// matches any run of characters (`/` and `:` too) and `?` any one, and a name without a tag
    /// is matched as `name:latest`; e.g. `python:*`, `registry.example.com/*`, `*` (every image on
    /// the engine). Empty (the default): isol8's own images only. Runs in these images keep every
    /// hardening setting (read-only root, no capabilities, isol8's seccomp profile, a non-root
    /// uid whatever the image's `USER`); the image must be on the engine already (never pulled).
    /// The local CLI (`isol8 run` without `--host`) allows every local image.
    pub allowed_images: Vec<String>,
    /// Executions running at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; more get 429.
    pub max_queue: usize,
    /// How long a queued request waits before 429.
    pub queue_timeout_ms: u64,
    /// Largest request body in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Bytes of request bodies the server holds at once, across every connection: a body's
    /// declared length (or what arrives) is taken from it before being read and given back once
    /// its request is answered; past it a 503. At least `maxBodyBytes`.
    pub max_body_bytes_in_flight: usize,
    /// A client must send a request's headers within this long (milliseconds), and then its body
    /// within as long again (408 past it); an idle keep-alive connection is closed after it.
    /// A silent client, or one trickling its request, cannot hold a connection longer.
    pub request_read_timeout_ms: u64,
    /// Client connections held at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Fresh warm containers per runtime.
    pub pool_size: usize,
    /// Reuse a container for the same key after a verified reset (off: fresh container per run).
    pub reuse_containers: bool,
    /// Keep the next run's interpreter (python, node, bash) started in each warm sandbox, so a run
    /// costs no interpreter start; started after the reset found the sandbox clean, used by one
    /// run only. Runs that need another start (`PYTHON*` or `NODE_*` variables, a `setupScript`,
    /// another `workdir` or file extension) start theirs the normal way.
    pub prestart_interpreters: bool,
    /// How long running executions may finish after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// A session idle this long (milliseconds) is ended and its container removed (a session may
    /// set its own with `PATCH /session/{id}`, up to `maxSessionIdleTimeoutMs`).
    pub session_idle_timeout_ms: u64,
    /// The longest idle timeout a session may ask for (`PATCH /session/{id}`), in milliseconds.
    pub max_session_idle_timeout_ms: u64,
    /// A session idle this long (milliseconds) is frozen (`docker pause`: no CPU) until its next
    /// call, which thaws it transparently. 0 never freezes.
    pub session_pause_after_ms: u64,
    /// Largest `/sandbox` archive (`GET`/`POST /session/{id}/archive`), in bytes.
    pub max_archive_bytes: u64,
    /// This server's identity on its Docker engine: a server started again with the same identity
    /// adopts the sessions the last one left (after a stop, a crash or an upgrade); two servers
    /// with different identities never touch each other's. 1 to 64 letters, digits, `.`, `_`,
    /// `-`. Default: the id kept in `<dataDir>/server-id`, made on first start.
    pub server_id: Option<String>,
    /// Where the server keeps its identity and one record per session (its idle deadline and the
    /// secret values it must keep masking): a folder only this server's user can read (0700,
    /// files 0600). Default `~/.isol8/server`. Keep it on a volume for sessions to survive a
    /// server container's replacement.
    #[schema(value_type = Option<String>)]
    pub data_dir: Option<PathBuf>,
    /// Sessions one API key may hold at once (429 past it).
    pub max_sessions_per_key: usize,
    /// Sessions the server holds at once (429 past it).
    pub max_sessions: usize,
    /// Largest file `GET /file` returns, in bytes (`POST /file` is bounded by `maxBodyBytes`).
    pub max_file_bytes: u64,
    /// A JSON file of further API keys, each with a name and a tenant:
    /// `[{"name": "ci", "key": "...", "tenant": "team-a"}]`. Sessions and warm containers are
    /// scoped to the tenant, and so is `/cleanup` (the master key's cleans up everything).
    #[schema(value_type = Option<String>)]
    pub keys_file: Option<PathBuf>,
    /// OCI runtime for sandboxes, e.g. `runsc`.
    pub oci_runtime: Option<String>,
    /// Whether and from where requests may have the server fetch their code (`codeUrl`).
    #[schema(inline)]
    pub remote_code: crate::remote_code::RemoteCodePolicy,
    /// Log format.
    #[schema(inline)]
    pub log_format: LogFormat,
    /// Keys and tenants in a database (SQLite, or PostgreSQL shared by replicas).
    #[schema(inline)]
    pub auth: crate::db::AuthConfig,
    /// The audit trail of executions, in the auth database.
    #[schema(inline)]
    pub audit: crate::db::AuditConfig,
    /// What one tenant (a keys-file or database key's) may use at once on this replica.
    #[schema(inline)]
    pub tenant_limits: crate::db::TenantLimitsConfig,
    /// Who may keep a run's container after it ends (`options.persist`), how many, how long.
    #[schema(inline)]
    pub persist: crate::persist::PersistPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            defaults: LimitsConfig::default(),
            maximums: (&Limits::default_maximums()).into(),
            allowed_networks: vec![NetworkMode::None, NetworkMode::Filtered],
            default_network: NetworkMode::None,
            network_allow: Vec::new(),
            network_deny: Vec::new(),
            registry_hosts: [
                (
                    "python",
                    vec![r"^pypi\.org$", r"^files\.pythonhosted\.org$"],
                ),
                ("node", vec![r"^registry\.npmjs\.org$"]),
                ("bun", vec![r"^registry\.npmjs\.org$"]),
                (
                    "deno",
                    vec![r"^registry\.npmjs\.org$", r"^jsr\.io$", r"^npm\.jsr\.io$"],
                ),
                ("bash", vec![r"^deb\.debian\.org$"]),
            ]
            .into_iter()
            .map(|(rt, hosts)| {
                (
                    rt.to_string(),
                    hosts.into_iter().map(str::to_string).collect(),
                )
            })
            .collect(),
            allowed_images: Vec::new(),
            max_concurrent: 10,
            max_queue: 100,
            queue_timeout_ms: 30_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            request_read_timeout_ms: 30_000,
            max_connections: 4096,
            pool_size: 2,
            reuse_containers: true,
            prestart_interpreters: true,
            shutdown_grace_ms: 10_000,
            session_idle_timeout_ms: 3_600_000,
            max_session_idle_timeout_ms: 86_400_000,
            session_pause_after_ms: 60_000,
            max_archive_bytes: 64 * 1024 * 1024,
            server_id: None,
            data_dir: None,
            max_sessions_per_key: 10,
            max_sessions: 100,
            max_file_bytes: 10 * 1024 * 1024,
            keys_file: None,
            oci_runtime: None,
            remote_code: Default::default(),
            log_format: LogFormat::Text,
            auth: Default::default(),
            audit: Default::default(),
            tenant_limits: Default::default(),
            persist: Default::default(),
        }
    }
}

impl ServerConfig {
    /// Reads the config file (`$ISOL8_CONFIG`, else `./isol8.config.json`, else
    /// `~/.isol8/config.json`, else the defaults), applies `ISOL8_...` environment overrides and
    /// validates the result. Returns the file used.
    pub fn load() -> Result<(ServerConfig, Option<PathBuf>), String> {
        Self::load_from(true)
    }

    /// Like `load`, but never from the working directory: the CLI's local runs execute code from
    /// checkouts the user may not trust, whose own `isol8.config.json` must not set their policy
    /// (a `defaultNetwork: host`, say). Only `$ISOL8_CONFIG` and `~/.isol8/config.json` count.
    pub fn load_user() -> Result<(ServerConfig, Option<PathBuf>), String> {
        Self::load_from(false)
    }

    fn load_from(working_dir: bool) -> Result<(ServerConfig, Option<PathBuf>), String> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        if let Some(explicit) = std::env::var_os("ISOL8_CONFIG") {
            let path = PathBuf::from(explicit);
            return Self::from_file(&path, &env).map(|c| (c, Some(path)));
        }
        let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".isol8/config.json"));
        let here = working_dir.then(|| PathBuf::from("isol8.config.json"));
        for path in [here, home].into_iter().flatten() {
            if path.is_file() {
                return Self::from_file(&path, &env).map(|c| (c, Some(path)));
            }
        }
        Self::from_value(serde_json::json!({}), "the defaults", &env).map(|c| (c, None))
    }

    /// Reads `path` and applies the overrides in `env`.
    pub fn from_file(path: &Path, env: &[(String, String)]) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        Self::from_value(value, &path.display().to_string(), env)
    }

    /// Overlays `file` (a partial config) on the defaults, then environment overrides: every field
    /// has one, named `ISOL8_` plus its path in SCREAMING_SNAKE_CASE (`maxConcurrent` →
    /// `ISOL8_MAX_CONCURRENT`, `maximums.memoryLimit` → `ISOL8_MAXIMUMS_MEMORY_LIMIT`); lists are
    /// comma-separated.
    fn from_value(
        file: Value,
        source: &str,
        env: &[(String, String)],
    ) -> Result<ServerConfig, String> {
        let invalid = |e: serde_json::Error| format!("{source} is not a valid isol8 config: {e}");
        // Merged field by field onto the full defaults, so a partial `maximums` keeps the default
        // maximums for the fields it leaves out (serde's `default` would take LimitsConfig's).
        let mut value = serde_json::to_value(ServerConfig::default()).map_err(invalid)?;
        merge(&mut value, file);
        serde_json::from_value::<ServerConfig>(value.clone()).map_err(invalid)?;
        let applied = apply_env(&mut value, "ISOL8", env);
        let config: ServerConfig = serde_json::from_value(value).map_err(|e| {
            format!(
                "the environment overrides ({}) are not valid: {e}",
                applied.join(", ")
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The JSON Schema of the config file (published as `server/config.schema.json`).
    pub fn json_schema() -> Value {
        let mut schema = serde_json::to_value(<ServerConfig as utoipa::PartialSchema>::schema())
            .expect("schemas serialize");
        if let Value::Object(map) = &mut schema {
            map.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
        }
        schema
    }

    pub fn validate(&self) -> Result<(), String> {
        self.limits()?;
        if self.max_concurrent == 0 {
            return Err("maxConcurrent must be at least 1".into());
        }
        if !self.allowed_networks.contains(&self.default_network) {
            return Err(format!(
                "defaultNetwork \"{}\" is not in allowedNetworks",
                self.default_network.as_str()
            ));
        }
        let registries = self.registry_hosts.values().flatten();
        for pattern in self
            .network_allow
            .iter()
            .chain(&self.network_deny)
            .chain(registries)
        {
            if let Err(e) = isol8_docker::check_host_pattern(pattern) {
                return Err(format!("networkAllow/networkDeny: {e}"));
            }
        }
        ImagePolicy::new(&self.allowed_images)?;
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            return Err(format!(
                "maxBodyBytesInFlight ({}) must be at least maxBodyBytes ({})",
                self.max_body_bytes_in_flight, self.max_body_bytes
            ));
        }
        if u32::try_from(self.max_body_bytes).is_err() {
            return Err("maxBodyBytes must be below 4 GiB".into());
        }
        if self.request_read_timeout_ms == 0 {
            return Err("requestReadTimeoutMs must be greater than zero".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("maxConnections must be between 1 and 1000000".into());
        }
        if self.session_idle_timeout_ms == 0 {
            return Err("sessionIdleTimeoutMs must be greater than zero".into());
        }
        if self.session_idle_timeout_ms > self.max_session_idle_timeout_ms {
            return Err("sessionIdleTimeoutMs is above maxSessionIdleTimeoutMs".into());
        }
        if let Some(id) = &self.server_id {
            crate::session_store::check_server_id(id)?;
        }
        self.remote_code.validate()?;
        self.auth.validate()?;
        self.tenant_limits.validate()?;
        self.persist.validate()?;
        Ok(())
    }

    /// The defaults and the maximums, parsed and checked against each other.
    pub fn limits(&self) -> Result<(Limits, Limits), String> {
        let defaults = self.defaults.to_limits("defaults")?;
        let max = self.maximums.to_limits("maximums")?;
        if let Some((name, _, _)) = defaults.first_above(&max) {
            return Err(format!("defaults.{name} is above maximums.{name}"));
        }
        Ok((defaults, max))
    }

    /// What every run plan takes where its request is silent (the defaults and the network rules).
    pub fn plan_defaults(&self) -> Result<PlanDefaults, String> {
        Ok(PlanDefaults {
            limits: self.limits()?.0,
            network: self.default_network,
            network_allow: self.network_allow.clone(),
            network_deny: self.network_deny.clone(),
            registry_hosts: self.registry_hosts.clone(),
        })
    }

    pub fn session_limits(&self) -> crate::sessions::SessionLimits {
        crate::sessions::SessionLimits {
            idle_timeout: Duration::from_millis(self.session_idle_timeout_ms),
            max_idle_timeout: Duration::from_millis(self.max_session_idle_timeout_ms),
            pause_after: (self.session_pause_after_ms > 0)
                .then(|| Duration::from_millis(self.session_pause_after_ms)),
            max_per_key: self.max_sessions_per_key,
            max_total: self.max_sessions,
        }
    }

    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        let mut engine = EngineConfig {
            default_limits: self.limits()?.0,
            oci_runtime: self.oci_runtime.clone(),
            allowed_images: ImagePolicy::new(&self.allowed_images)?,
            ..EngineConfig::default()
        };
        engine.pool.size = self.pool_size;
        engine.pool.reuse = self.reuse_containers;
        engine.pool.prestart = self.prestart_interpreters;
        Ok(engine)
    }
}

/// Overlays `overlay` on `base`, recursing into objects present in both.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Replaces each leaf of `value` whose variable (`prefix` + `_` + key) is set in `env`; returns the
/// names of the variables applied.
fn apply_env(value: &mut Value, prefix: &str, env: &[(String, String)]) -> Vec<String> {
    let mut applied = Vec::new();
    let Value::Object(map) = value else {
        return applied;
    };
    for (key, field) in map.iter_mut() {
        let name = format!("{prefix}_{}", screaming_snake(key));
        if field.is_object() {
            applied.extend(apply_env(field, &name, env));
            continue;
        }
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        let raw = raw.trim();
        *field = match field {
            Value::Array(_) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
            Value::String(_) => Value::String(raw.into()),
            // Numbers, booleans and optional strings: JSON when it parses (30, true), else a string.
            _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into())),
        };
        applied.push(name);
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults_and_the_environment_wins() {
        let file = serde_json::json!({"maxConcurrent": 4, "maximums": {"memoryLimit": "1g"}});
        let config = ServerConfig::from_value(
            file,
            "test",
            &env(&[
                ("ISOL8_MAX_CONCURRENT", "7"),
                ("ISOL8_DEFAULTS_TIMEOUT_MS", "5000"),
                ("ISOL8_ALLOWED_NETWORKS", "none, host"),
                ("ISOL8_OCI_RUNTIME", "runsc"),
                ("ISOL8_LOG_FORMAT", "json"),
                ("ISOL8_REUSE_CONTAINERS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(config.max_concurrent, 7);
        assert_eq!(config.maximums.memory_limit, "1g");
        assert_eq!(config.maximums.timeout_ms, 300_000);
        assert_eq!(config.defaults.timeout_ms, 5000);
        assert_eq!(
            config.allowed_networks,
            [NetworkMode::None, NetworkMode::Host]
        );
        assert_eq!(config.oci_runtime.as_deref(), Some("runsc"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(!config.reuse_containers);
    }

    #[test]
    fn filtered_is_allowed_by_default_and_host_is_not() {
        let config = ServerConfig::from_value(serde_json::json!({}), "test", &[]).unwrap();
        assert_eq!(
            config.allowed_networks,
            [NetworkMode::None, NetworkMode::Filtered]
        );
        assert_eq!(config.default_network, NetworkMode::None);
    }

    #[test]
    fn allowed_images_are_none_by_default_and_patterns_from_file_or_environment() {
        let config = ServerConfig::from_value(serde_json::json!({}), "test", &[]).unwrap();
        assert!(config.allowed_images.is_empty());
        let engine = config.engine_config().unwrap();
        assert!(!engine.allowed_images.allows("python:3.12"));
        let config = ServerConfig::from_value(
            serde_json::json!({"allowedImages": ["node:*"]}),
            "test",
            &env(&[("ISOL8_ALLOWED_IMAGES", "python:*, registry.example.com/*")]),
        )
        .unwrap();
        assert_eq!(
            config.allowed_images,
            ["python:*", "registry.example.com/*"]
        );
        let engine = config.engine_config().unwrap();
        assert!(engine.allowed_images.allows("python:3.12"));
        assert!(!engine.allowed_images.allows("node:24"));
        let bad = ServerConfig::from_value(
            serde_json::json!({"allowedImages": ["python 3"]}),
            "test",
            &[],
        )
        .unwrap_err();
        assert!(bad.contains("allowedImages"), "{bad}");
    }

    #[test]
    fn bad_values_name_their_source() {
        let bad_env = ServerConfig::from_value(
            serde_json::json!({}),
            "test",
            &env(&[("ISOL8_MAX_QUEUE", "lots")]),
        )
        .unwrap_err();
        assert!(bad_env.contains("ISOL8_MAX_QUEUE"), "{bad_env}");
        let unknown =
            ServerConfig::from_value(serde_json::json!({"maxConcurent": 1}), "cfg.json", &[])
                .unwrap_err();
        assert!(
            unknown.contains("cfg.json") && unknown.contains("maxConcurent"),
            "{unknown}"
        );
        let above = ServerConfig::from_value(
            serde_json::json!({"defaults": {"memoryLimit": "4g"}}),
            "cfg.json",
            &[],
        )
        .unwrap_err();
        assert!(above.contains("memoryLimit"), "{above}");
    }

    #[test]
    fn the_published_schema_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&ServerConfig::json_schema()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.schema.json");
        if std::env::var_os("ISOL8_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "server/config.schema.json is stale; regenerate with ISOL8_UPDATE_OPENAPI=1 cargo test -p isol8-server"
        );
        let schema: Value = serde_json::from_str(&committed).unwrap();
        assert_eq!(schema["properties"]["maxConcurrent"]["type"], "integer");
        assert!(
            schema["properties"]["logFormat"]["enum"].is_array()
                || schema["properties"]["logFormat"]["oneOf"].is_array(),
            "{schema}"
        );
    }
}
