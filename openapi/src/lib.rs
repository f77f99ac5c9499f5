//! isol8 wire types: the JSON bodies of the HTTP API (serde + utoipa schemas), shared by server and client.
//!
//! # Layout
//!
//! `execution` (requests, options, results), `stream` (stream events), `session` and
//! `session_id` (sessions, files, archives; the session id rule and header), `auth` (keys,
//! login, audit), `misc` (health, readiness, cleanup, the error body and its codes).

mod auth;
mod execution;
mod misc;
mod session;
mod session_id;
mod stream;

pub use auth::{
    AuditEntry, AuditList, AuditQuery, CreateKeyRequest, CreatedKey, KeyInfo, KeyLimits, KeyList,
    KeyQuery, LoginRequest, LoginResponse, RevokedKey,
};
pub use execution::{
    BufferTag, EngineMode, ExecuteBody, ExecutionOptions, ExecutionRequest, ExecutionResult,
    ExecutionStatus, FileData, MimeBundle, NetworkAction, NetworkFilter, NetworkLogEntry,
    NetworkMode, NodeBuffer, PoolSize, PoolStrategy, ResourceUsage, Runtime, SecurityOptions,
};
pub use misc::{
    CleanupCounts, CleanupRequest, CleanupResponse, ErrorBody, ErrorCode, HealthResponse,
    ReadyResponse,
};
pub use session::{
    ArchiveImported, ArchiveQuery, FileContent, FileQuery, FileWrite, OkResponse, SessionDetail,
    SessionInfo, SessionList, SessionUpdate,
};
pub use session_id::{InvalidSessionId, SessionId, SESSION_HEADER};
pub use stream::{StreamEvent, StreamEventType, StreamPhase};
