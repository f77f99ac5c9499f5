//! `Client`: typed calls to an isol8 server, including the SSE stream and the WebSocket run with
//! live stdin and signals.

use eventsource_stream::Eventsource;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, Stream, StreamExt};
use isol8_api::{
    ArchiveImported, AuditList, AuditQuery, CreateKeyRequest, CreatedKey, ExecuteBody,
    ExecutionResult, KeyList, KeyQuery, LoginRequest, LoginResponse, RevokedKey, Runtime,
    SessionDetail, SessionList, StreamEvent, SESSION_HEADER,
};
use tokio_tungstenite::tungstenite::Message;

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
    /// The WebSocket of `GET /execute/ws` could not be opened or broke.
    #[error("WebSocket to {url}: {source}")]
    WebSocket {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The sending half of a WebSocket run (`Client::execute_ws`): the program's stdin and signals.
#[derive(Debug)]
pub struct WsInput {
    sink: SplitSink<Socket, Message>,
    url: String,
}

impl WsInput {
    async fn send(&mut self, message: serde_json::Value) -> Result<(), ClientError> {
        self.sink
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| ws_error(&self.url, e))
    }

    /// Sends `data` to the program's stdin.
    pub async fn stdin(&mut self, data: &str) -> Result<(), ClientError> {
        self.send(serde_json::json!({"type": "stdin", "data": data}))
            .await
    }

    /// Closes the program's stdin: its next read sees end-of-file.
    pub async fn stdin_eof(&mut self) -> Result<(), ClientError> {
        self.send(serde_json::json!({"type": "stdin", "eof": true}))
            .await
    }

    /// Sends `SIGINT`, `SIGTERM` or `SIGKILL` to the program's process group.
    pub async fn signal(&mut self, name: &str) -> Result<(), ClientError> {
        self.send(serde_json::json!({"type": "signal", "signal": name}))
            .await
    }
}

fn ws_error(url: &str, source: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::WebSocket {
        url: url.to_string(),
        source: Box::new(source),
    }
}

/// An error status on an HTTP answer: `ClientError::Api` from its error body.
fn api_error(status: u16, text: &str) -> ClientError {
    /// `ErrorBody` with the code as text: a code this client does not know (a newer server's)
    /// is shown as sent.
    #[derive(serde::Deserialize)]
    struct Body {
        error: String,
        code: String,
    }
    match serde_json::from_str::<Body>(text) {
        Ok(err) => ClientError::Api {
            status,
            code: err.code,
            message: err.error,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: text.to_string(),
        },
    }
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
        let base = base.into().trim_end_matches('/').to_string();
        // Plain HTTP (the in-process server on loopback, a server behind a local proxy) needs no
        // trust roots: loading the system's costs a cold CLI run several milliseconds.
        let http = if base.starts_with("http://") {
            reqwest::Client::builder()
                .tls_built_in_native_certs(false)
                .build()
                .unwrap_or_default()
        } else {
            reqwest::Client::new()
        };
        Client {
            base,
            key: key.into(),
            http,
        }
    }

    async fn post(&self, path: &str, body: &ExecuteBody) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http.post(self.url(path)).json(body);
        // Also as a header, so a load balancer can route the session's calls to one replica.
        if let Some(id) = &body.session_id {
            request = request.header(SESSION_HEADER, id.as_str());
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
        Err(api_error(status, &text))
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
            .header(SESSION_HEADER, id)
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

    /// `GET /execute/ws`: starts the run over a WebSocket (ws:// for an http:// server, wss://
    /// for https://) and returns its input half and its events, the same `StreamEvent`s as
    /// [`Client::execute_stream`], the `result` event last. The program's stdin stays open until
    /// [`WsInput::stdin_eof`]. Dropping either half closes the socket, which kills the run.
    pub async fn execute_ws(
        &self,
        body: &ExecuteBody,
    ) -> Result<
        (
            WsInput,
            impl Stream<Item = Result<StreamEvent, ClientError>> + Unpin,
        ),
        ClientError,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = match self.base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}/execute/ws"),
            Some(("http", rest)) => format!("ws://{rest}/execute/ws"),
            _ => {
                return Err(ClientError::Protocol(format!(
                    "{} is not an http:// or https:// URL",
                    self.base
                )))
            }
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(&url, e))?;
        let bearer = format!("Bearer {}", self.key)
            .parse()
            .map_err(|_| ClientError::Protocol("the key is not a valid header value".into()))?;
        request
            .headers_mut()
            .insert(reqwest::header::AUTHORIZATION, bearer);
        if let Some(id) = &body.session_id {
            if let Ok(value) = id.parse() {
                request.headers_mut().insert(SESSION_HEADER, value);
            }
        }
        let (socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(connected) => connected,
            // Refused before the upgrade (401, 403, 429): the server's error body.
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let text = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return Err(api_error(response.status().as_u16(), &text));
            }
            Err(e) => return Err(ws_error(&url, e)),
        };
        let (sink, stream) = socket.split();
        let mut input = WsInput {
            sink,
            url: url.clone(),
        };
        let mut message = serde_json::to_value(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        if let Some(fields) = message.as_object_mut() {
            fields.insert("type".into(), "execute".into());
        }
        input.send(message).await?;
        Ok((input, ws_events(stream, url)))
    }
}

/// A WebSocket's text messages as stream events; the stream ends at the server's close.
fn ws_events(
    stream: SplitStream<Socket>,
    url: String,
) -> impl Stream<Item = Result<StreamEvent, ClientError>> + Unpin {
    stream
        .take_while(|message| std::future::ready(!matches!(message, Ok(Message::Close(_)))))
        .filter_map(move |message| {
            let item = match message {
                Ok(Message::Text(text)) => Some(
                    serde_json::from_str::<StreamEvent>(&text)
                        .map_err(|e| ClientError::Protocol(format!("{e}: {}", text.as_str()))),
                ),
                Ok(_) => None,
                Err(e) => Some(Err(ws_error(&url, e))),
            };
            std::future::ready(item)
        })
}
