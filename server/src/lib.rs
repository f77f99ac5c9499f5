//! isol8-server: the HTTP service over the sandbox engine.

/// The engine the server runs on, re-exported for the embedding CLI (image builds, local runs).
pub use isol8_docker as engine;
