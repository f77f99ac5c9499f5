//! isol8-server: the HTTP service over the sandbox engine.
//!
//! # Layout
//!
//! - Serving: `app` (route table and middleware), `openapi` (the document), `serve` (accept
//!   loop, graceful shutdown), `launch` (what the `isol8-server` and `isol8 serve` binaries run:
//!   flags, logging, banners; the default feature `launch`, which an embedding program can leave out).
//! - Handlers, thin: `routes/*` (`execute`: the one way a run starts; `ws`, `sessions`, `system`,
//!   `auth`, `audit`), `mcp` (the MCP tool server), `extract` (JSON bodies with our errors).
//! - Policy: `config` (the config file and its validation), `policy` (limits and networks a
//!   request may ask for), `persist`, `remote_code` (`codeUrl`), `tenants` (per-tenant limits).
//! - Who calls: `auth` (bearer keys), `db` (keys and audit in SQLite or PostgreSQL).
//! - State: `state` (`AppState`, slots and queues), `sessions` and `session_store` (sessions
//!   and their records on disk), `metrics`.
//! - `error`: the one HTTP error body (`ApiError`).

mod app;
mod auth;
mod config;
mod db;
mod error;
mod extract;
#[cfg(feature = "launch")]
pub mod launch;
pub mod mcp;
mod metrics;
mod openapi;
mod persist;
mod policy;
mod remote_code;
mod routes;
mod serve;
mod session_store;
mod sessions;
mod state;
mod tenants;

pub use app::app;
pub use auth::{load_keys, NamedKey};
pub use config::{LimitsConfig, LogFormat, ServerConfig};
pub use db::{
    AuditConfig, AuthConfig, Backend, Database, DbError, TenantLimitsConfig, SCHEMA_VERSION,
};
pub use error::ApiError;
pub use openapi::openapi;
pub use persist::PersistPolicy;
pub use remote_code::RemoteCodePolicy;
pub use serve::{serve, serve_loopback};
pub use state::AppState;

/// The engine the server runs on, re-exported for the embedding CLI (image builds, local runs).
pub use isol8_docker as engine;
