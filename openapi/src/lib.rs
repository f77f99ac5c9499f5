//! isol8 wire types: the JSON bodies of the HTTP API (serde + utoipa schemas), shared by server and client.

mod execution;
mod misc;
mod session;
mod stream;

pub use execution::{
    ExecuteBody, ExecutionOptions, ExecutionRequest, ExecutionResult, ExecutionStatus, MimeBundle,
    NetworkFilter, NetworkLogEntry, NetworkMode, Runtime,
};
pub use misc::{CleanupCounts, CleanupRequest, CleanupResponse, ErrorBody, HealthResponse};
pub use session::{FileContent, FileQuery, FileWrite, OkResponse, SessionInfo, SessionList};
pub use stream::{StreamEvent, StreamEventType, StreamPhase};
