//! isol8 client library: a reqwest client of the isol8 HTTP API.

mod client;

pub use client::{Client, ClientError, WsInput};
