//! `Client`: typed calls to an isol8 server, including the SSE stream.

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use isol8_api::{
    ArchiveImported, AuditList, AuditQuery, CreateKeyRequest, CreatedKey, ErrorBody, ExecuteBody,
    ExecutionResult, KeyList, KeyQuery, LoginRequest, LoginResponse, RevokedKey, Runtime,
    SessionDetail, SessionList, StreamEvent,
};

/// Failures talking to an isol8 server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the isol8 server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error body.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("bad answer from the server: {0}")]
    Protocol(String),
}

/// A client of one server with one key.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Self {
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            key: key.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: &ExecuteBody) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http.post(self.url(path)).json(body);
        // Also as a header, so a load balancer can route the session's calls to one replica.
        if let Some(id) = &body.session_id {
            request = request.header("X-Isol8-Session", id);
        }
        self.send(request, path).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends with the key; an error status becomes `ClientError::Api` from the error body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: self.url(path),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(err) => ClientError::Api {
                status,
                code: err.code,
                message: err.error,
            },
            Err(_) => ClientError::Api {
                status,
                code: "unknown".into(),
                message: text,
            },
        })
    }

    /// `GET /sessions`: this key's sessions.
    pub async fn list_sessions(&self) -> Result<SessionList, ClientError> {
        self.send(self.http.get(self.url("/sessions")), "/sessions")
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `DELETE /session/{id}` (idempotent).
    pub async fn delete_session(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/session/{id}");
        self.send(self.http.delete(self.url(&path)), &path)
            .await
            .map(drop)
    }

    /// `GET /session/{id}`: one session's state.
    pub async fn session(&self, id: &str) -> Result<SessionDetail, ClientError> {
        let path = format!("/session/{id}");
        Self::json(self.send(self.http.get(self.url(&path)), &path).await?).await
    }

    /// `GET /session/{id}/archive`: the session's `/sandbox` as a tar archive.
    pub async fn export_archive(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/session/{id}/archive");
        let response = self.send(self.http.get(self.url(&path)), &path).await?;
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /session/{id}/archive`: unpacks `tar` into the session's `/sandbox`, creating the
    /// session with `runtime` when it does not exist.
    pub async fn import_archive(
        &self,
        id: &str,
        tar: Vec<u8>,
        runtime: Option<Runtime>,
    ) -> Result<ArchiveImported, ClientError> {
        let path = format!("/session/{id}/archive");
        let mut request = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header("X-Isol8-Session", id)
            .body(tar);
        if let Some(runtime) = runtime {
            request = request.query(&[("runtime", runtime.as_str())]);
        }
        Self::json(self.send(request, &path).await?).await
    }

    /// Reads a JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /auth/login` (master key): a fresh key for this client.
    pub async fn login(&self, body: &LoginRequest) -> Result<LoginResponse, ClientError> {
        let request = self.http.post(self.url("/auth/login")).json(body);
        Self::json(self.send(request, "/auth/login").await?).await
    }

    /// `POST /auth/keys` (master key).
    pub async fn create_key(&self, body: &CreateKeyRequest) -> Result<CreatedKey, ClientError> {
        let request = self.http.post(self.url("/auth/keys")).json(body);
        Self::json(self.send(request, "/auth/keys").await?).await
    }

    /// `GET /auth/keys` (master key).
    pub async fn list_keys(&self, query: &KeyQuery) -> Result<KeyList, ClientError> {
        let request = self.http.get(self.url("/auth/keys")).query(query);
        Self::json(self.send(request, "/auth/keys").await?).await
    }

    /// `DELETE /auth/keys/{id}` (master key).
    pub async fn revoke_key(&self, id: &str) -> Result<RevokedKey, ClientError> {
        let path = format!("/auth/keys/{id}");
        let request = self.http.delete(self.url(&path));
        Self::json(self.send(request, &path).await?).await
    }

    /// `GET /audit` (master key).
    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditList, ClientError> {
        let request = self.http.get(self.url("/audit")).query(query);
        Self::json(self.send(request, "/audit").await?).await
    }

    /// `POST /execute`.
    pub async fn execute(&self, body: &ExecuteBody) -> Result<ExecutionResult, ClientError> {
        self.post("/execute", body)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /mcp` with one JSON-RPC message: the JSON-RPC messages of the answer, in order (none
    /// for a notification; a tool call's progress notifications, then its result). Dropping the
    /// stream disconnects, which cancels the call on the server.
    pub async fn mcp(
        &self,
        message: String,
    ) -> Result<impl Stream<Item = Result<String, ClientError>>, ClientError> {
        let request = self
            .http
            .post(self.url("/mcp"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .body(message);
        let response = self.send(request, "/mcp").await?;
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let stream: std::pin::Pin<Box<dyn Stream<Item = Result<String, ClientError>> + Send>> =
            if is_sse {
                Box::pin(
                    response
                        .bytes_stream()
                        .eventsource()
                        .filter_map(|item| async move {
                            match item {
                                Ok(event) if event.data.trim().is_empty() => None,
                                Ok(event) => Some(Ok(event.data)),
                                Err(e) => Some(Err(ClientError::Protocol(e.to_string()))),
                            }
                        }),
                )
            } else {
                let body = response
                    .text()
                    .await
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let messages = (!body.trim().is_empty()).then_some(Ok(body));
                Box::pin(futures::stream::iter(messages))
            };
        Ok(stream)
    }

    /// `POST /execute/stream`: the run's events as they arrive. Dropping the stream disconnects,
    /// which kills the run on the server.
    pub async fn execute_stream(
        &self,
        body: &ExecuteBody,
    ) -> Result<impl Stream<Item = Result<StreamEvent, ClientError>>, ClientError> {
        let response = self.post("/execute/stream", body).await?;
        Ok(response
            .bytes_stream()
            .eventsource()
            .filter_map(|item| async move {
                match item {
                    Ok(event) if event.data.is_empty() => None,
                    Ok(event) => Some(
                        serde_json::from_str::<StreamEvent>(&event.data)
                            .map_err(|e| ClientError::Protocol(format!("{e}: {}", event.data))),
                    ),
                    Err(e) => Some(Err(ClientError::Protocol(e.to_string()))),
                }
            }))
    }
}
