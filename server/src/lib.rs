//! isol8-server: the HTTP service over the sandbox engine.

mod app;
mod auth;
mod config;
mod db;
mod error;
mod extract;
pub mod launch;
pub mod mcp;
mod metrics;
mod persist;
mod policy;
mod remote_code;
mod routes;
mod session_store;
mod sessions;
mod state;
mod tenants;

pub use app::{app, openapi, serve};
pub use auth::{load_keys, NamedKey};
pub use config::{LimitsConfig, LogFormat, ServerConfig};
pub use db::{
    AuditConfig, AuthConfig, Backend, Database, DbError, TenantLimitsConfig, SCHEMA_VERSION,
};
pub use error::ApiError;
pub use persist::PersistPolicy;
pub use remote_code::RemoteCodePolicy;
pub use state::AppState;

/// The engine the server runs on, re-exported for the embedding CLI (image builds, local runs).
pub use isol8_docker as engine;
