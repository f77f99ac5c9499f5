//! The one error type of the sandbox engine.

use std::time::Duration;

/// Everything that can go wrong in the engine. The server maps each variant to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad runtime, sizes, paths, ...): the caller must change it.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request does not fit the state of what it names (a session of another runtime).
    #[error("{0}")]
    Conflict(String),
    /// What the request names does not exist (a session's file).
    #[error("{0}")]
    NotFound(String),
    /// The server's policy does not let a request have this (an image `allowedImages` does not
    /// match): the same answer whatever exists on the engine.
    #[error("{0}")]
    NotAllowed(String),
    /// The request is well-formed but asks for something this engine cannot do safely.
    #[error("{0}")]
    Unsupported(String),
    /// The filtered network (its Docker network or proxy) could not be set up, so the run is
    /// refused: the server's failure, not the request's.
    #[error("{0}")]
    NetworkSetup(String),
    /// The Docker Engine cannot be reached at all.
    #[error("Docker is not reachable at {address}: {reason}")]
    DockerUnavailable { address: String, reason: String },
    /// A Docker API call failed.
    #[error("Docker {action} failed: {source}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// The runtime image is not built yet.
    #[error("image {image} is not built; run `isol8 setup` to build the runtime images")]
    ImageMissing { image: String },
    /// An image build failed at a named step: the step once, the last lines of its output (no
    /// escapes), and a one-line hint where the cause is known.
    #[error("building {image} failed at step {step}: {message}{}", crate::build_output::render(.output, .hint.as_deref()))]
    ImageBuild {
        image: String,
        step: String,
        message: String,
        output: String,
        hint: Option<String>,
    },
    /// The sandbox's agent misbehaved or the container died under us.
    #[error("sandbox {container} failed: {message}")]
    Sandbox { container: String, message: String },
    /// The engine is shutting down and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A wait ran out (container start, agent handshake).
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// A local I/O failure (bootstrap, build context).
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn docker(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> Error {
        move |source| Error::Docker { action, source }
    }

    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }

    /// True when the failure means the Docker Engine itself is gone (connection refused, socket missing).
    pub fn is_docker_unavailable(&self) -> bool {
        match self {
            Error::DockerUnavailable { .. } => true,
            Error::Docker { source, .. } => is_connection_error(source),
            _ => false,
        }
    }
}

pub(crate) fn is_connection_error(err: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    matches!(
        err,
        B::HyperResponseError { .. }
            | B::HyperLegacyError { .. }
            | B::IOError { .. }
            | B::SocketNotFoundError(_)
            | B::RequestTimeoutError
    )
}

/// True when Docker said 404 for the object asked about.
pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    status_of(err) == Some(404)
}

/// The HTTP status the Docker Engine answered with, when it answered.
pub(crate) fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
