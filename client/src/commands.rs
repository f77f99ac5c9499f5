//! The `isol8` subcommands, one module per area.

pub mod admin;
pub mod images;
pub mod mcp;
pub mod run;
pub mod sessions;
