//! HTTP routes; each handler extracts, validates, calls the engine once and maps the result.

pub mod audit;
pub mod auth;
pub mod execute;
pub mod sessions;
pub mod system;
pub mod ws;
