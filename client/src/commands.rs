//! The `isol8` subcommands, one module per area.

pub mod admin;
pub mod images;
pub mod run;
pub mod sessions;
