//! The `isol8` subcommands, one module per area.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod images;
pub(crate) mod keys;
pub(crate) mod login;
pub(crate) mod mcp;
pub(crate) mod run;
pub(crate) mod sessions;
