//! HTTP routes; each handler extracts, validates, calls the engine once and maps the result.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod execute;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod ws;
