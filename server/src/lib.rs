//! isol8-server: the HTTP service over the sandbox engine.

mod app;
mod auth;
mod config;
mod error;
mod extract;
pub mod launch;
pub mod mcp;
mod metrics;
mod policy;
mod routes;
mod sessions;
mod state;

pub use app::{app, openapi, serve};
pub use auth::{load_keys, NamedKey};
pub use config::{LimitsConfig, LogFormat, ServerConfig};
pub use error::ApiError;
pub use sessions::check_id as check_session_id;
pub use state::AppState;

/// The engine the server runs on, re-exported for the embedding CLI (image builds, local runs).
pub use isol8_docker as engine;
