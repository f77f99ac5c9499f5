//! The `isol8` subcommands, one module per area.

pub mod admin;
pub mod audit;
pub mod images;
pub mod keys;
pub mod login;
pub mod mcp;
pub mod run;
pub mod sessions;
