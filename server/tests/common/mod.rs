//! Shared by the server's test files: a real server on loopback with a real HTTP client.
#![allow(dead_code)] // each test file uses its own part of this

use isol8_docker::Engine;
use isol8_server::{AppState, NamedKey, ServerConfig};
use serde_json::Value;

pub(crate) const KEY: &str = "test-key-0123456789";

pub(crate) struct Server {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub instance: String,
    /// Its `serverId`: the `isol8.server` label of its session containers.
    pub server_id: Option<String>,
}

impl Server {
    pub(crate) async fn start(config: ServerConfig) -> Server {
        Self::start_with(config, None).await
    }

    pub(crate) async fn start_with(config: ServerConfig, docker_host: Option<&str>) -> Server {
        Self::start_full(config, docker_host, Vec::new()).await
    }

    /// A server with `keys` accepted besides `KEY`.
    pub(crate) async fn start_full(
        config: ServerConfig,
        docker_host: Option<&str>,
        keys: Vec<NamedKey>,
    ) -> Server {
        let mut engine_config = config.engine_config().expect("a valid config");
        engine_config.docker_host = docker_host.map(str::to_string);
        let engine = Engine::connect(engine_config).await.expect("engine");
        let instance = engine.instance_id().to_string();
        let server_id = config.server_id.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(engine, config, KEY.to_string())
            .expect("a valid config")
            .with_named_keys(keys);
        let (base, task) = isol8_server::serve_loopback(state, async move {
            let _ = stopped.await;
        })
        .await
        .expect("a loopback port");
        Server {
            base,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            instance,
            server_id,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Stops the server and removes the sessions it leaves (frozen, for a next process).
    pub(crate) async fn stop(mut self) {
        self.shut_down().await;
        // Dropping `self` removes its sessions.
    }

    /// Stops the server as an operator would: its sessions stay, frozen, for the next server
    /// with its identity.
    pub(crate) async fn stop_keeping_sessions(mut self) {
        self.shut_down().await;
        self.server_id = None;
    }

    async fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Server {
    /// Also when a test fails midway: the sessions its server made are the test's to remove.
    fn drop(&mut self) {
        if let Some(id) = &self.server_id {
            remove_sessions_of(id);
        }
    }
}

/// Removes the session containers labelled with the server identity `id` (a test's own).
pub(crate) fn remove_sessions_of(id: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=isol8.server={id}")])
        .output()
        .expect("docker ps");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// A test server's config: no warm pool, and an identity and data folder of its own, so test
/// servers running at once never adopt each other's sessions.
pub(crate) fn config() -> ServerConfig {
    let id = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    ServerConfig {
        pool_size: 0,
        data_dir: Some(std::env::temp_dir().join("isol8-server-tests").join(&id)),
        server_id: Some(id),
        ..ServerConfig::default()
    }
}

pub(crate) async fn error_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(body["code"].as_str().is_some(), "{body}");
    assert_eq!(
        body["requestId"].as_str(),
        id.as_deref(),
        "request id in body and header"
    );
    (status, body)
}
