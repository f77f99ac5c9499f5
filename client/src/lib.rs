//! isol8 client library: a reqwest client of the isol8 HTTP API.
//!
//! With `default-features = false` this crate is the client alone (no axum, no bollard); the
//! default feature `cli` adds the `isol8` binary and the server it embeds.
//!
//! # Layout
//!
//! `client` (this library: `Client`, its errors, the WebSocket input); the binary's `main`
//! (flags), `commands/*` (one module per command), `output` (what a terminal is shown) and
//! `error` (the one error the commands return, printed once by `main`).
//!
//! ```no_run
//! use isol8::api::{ExecuteBody, ExecutionRequest, Runtime};
//!
//! # async fn example() -> Result<(), isol8::ClientError> {
//! let client = isol8::Client::new("http://127.0.0.1:3000", "my-key");
//! let request = ExecutionRequest {
//!     runtime: Runtime::Python,
//!     code: Some("print(2 ** 10)".into()),
//!     ..Default::default()
//! };
//! let body = ExecuteBody { request, options: None, session_id: None };
//! let result = client.execute(&body).await?;
//! assert_eq!(result.stdout, "1024\n");
//! # Ok(())
//! # }
//! ```

mod client;

pub use client::{Client, ClientError, WsInput};
/// The wire types (`isol8-api`), so a program needs only this crate.
pub use isol8_api as api;
