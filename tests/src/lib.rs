//! isol8-e2e: cross-crate end-to-end suites (deploy, hostile code and input) and the helpers they
//! share. The engine, server and CLI tests live beside their crates (`docker/tests`,
//! `server/tests`, `client/tests`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A binary the workspace build made (the test command builds them all before testing).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A server process that said where it listens (`spawn_listening`).
#[derive(Debug)]
pub struct Listening {
    pub child: Child,
    /// From its "listening on" line: `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its stderr lines up to and with that one.
    pub said: Vec<String>,
    /// Its later stderr lines, as they come (dropping this is fine: they are then discarded).
    pub rest: std::sync::mpsc::Receiver<String>,
}

/// Starts a server process (`isol8 serve`, `isol8-server`; the caller passes `--port 0`) and
/// waits up to `wait` for its "listening on" line: its base URL comes from that line, so no port
/// is picked before the server binds it (a port found free can be taken by then, and the server
/// would fall back to another). Its stderr is read for the rest of its life, so its later lines
/// never meet a closed pipe. A server that ends or stays silent is killed, and the test fails
/// with what it said.
pub fn spawn_listening(command: &mut Command, wait: Duration) -> Listening {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    // The reader thread: forwards each line until the process closes its stderr (sends to a
    // dropped receiver fail, and it reads on).
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let base = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string);
        seen.push(line);
        if let Some(base) = base {
            return Listening {
                child,
                base,
                said: seen,
                rest: lines_rx,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not say where it listens; it said: {seen:#?}");
}

/// A loopback port free right now (for processes that cannot be asked for port 0, like nginx).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A child process stopped (SIGTERM, then waited for) when the test ends, passed or not.
#[derive(Debug)]
pub struct Killed(pub Child);

/// How long a process may take to end after a signal (a server's shutdown grace is 10 s) before it
/// is killed and the test fails: a stuck shutdown is a finding, not a suite that never ends.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Sends `signal` (`TERM`, `KILL`) to `child` and waits for it to end. One still running after
/// `STOP_WAIT` is killed, and the test fails (unless it is failing already).
pub fn signal_and_wait(child: &mut Child, signal: &str) {
    // Already waited for: its pid may be another process's by now.
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_WAIT;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                std::thread::panicking(),
                "process {} was still running {STOP_WAIT:?} after SIG{signal}",
                child.id()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        signal_and_wait(&mut self.0, "TERM");
    }
}

/// The master key of the servers these tests start.
pub const KEY: &str = "e2e-test-key-0123456789abcdef";

/// An `isol8-server` process of a test's own (one warm container per runtime, plus the test's
/// `ISOL8_*` overrides), stopped when dropped.
#[derive(Debug)]
pub struct Server {
    pub child: Killed,
    pub base: String,
    /// Its `x-isol8-instance`: the `isol8.instance` label on everything it creates.
    pub instance: String,
    pub http: reqwest::Client,
    /// Its `serverId` (the `isol8.server` label of its sessions) and data folder: its own, unless
    /// the test's overrides name them (a restart test starts the next process with the same).
    pub server_id: String,
    pub data_dir: PathBuf,
    /// Leave its sessions when dropped (the test hands them to a next process).
    pub keep_sessions: bool,
}

impl Drop for Server {
    /// Stops the process, then removes the sessions it leaves (frozen, for its next process):
    /// they are the test's.
    fn drop(&mut self) {
        signal_and_wait(&mut self.child.0, "TERM");
        if !self.keep_sessions {
            remove_sessions_of(&self.server_id);
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Removes the session containers labelled with the server identity `id` (a test's own).
pub fn remove_sessions_of(id: &str) {
    let ids = docker_ids("container", &format!("isol8.server={id}"));
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

impl Server {
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let given = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let server_id = given("ISOL8_SERVER_ID")
            .unwrap_or_else(|| format!("e2e-{}-{}", std::process::id(), free_port()));
        let data_dir = given("ISOL8_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("isol8-e2e").join(&server_id));
        let Listening { child, base, .. } = spawn_listening(
            Command::new(binary("isol8-server"))
                .args(["--bind", "127.0.0.1", "--port", "0"])
                .env("ISOL8_API_KEY", KEY)
                .env("ISOL8_POOL_SIZE", "1")
                .env("ISOL8_SERVER_ID", &server_id)
                .env("ISOL8_DATA_DIR", &data_dir)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            Duration::from_secs(60),
        );
        let mut child = Killed(child);
        let http = reqwest::Client::new();
        // Bound, it takes requests once it has opened its key store and adopted its sessions.
        let deadline = Instant::now() + Duration::from_secs(30);
        let instance = loop {
            if let Ok(r) = http.get(format!("{base}/health")).send().await {
                break r.headers()["x-isol8-instance"]
                    .to_str()
                    .unwrap()
                    .to_string();
            }
            let ended = matches!(child.0.try_wait(), Ok(Some(_)));
            assert!(
                !ended && Instant::now() < deadline,
                "isol8-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Server {
            child,
            base,
            instance,
            http,
            server_id,
            data_dir,
            keep_sessions: false,
        }
    }

    /// Sends `signal` (`TERM`, `KILL`) to the process and waits for it to end, leaving its
    /// sessions for the next process with the same identity.
    pub fn kill(mut self, signal: &str) {
        self.keep_sessions = true;
        signal_and_wait(&mut self.child.0, signal);
    }

    /// POSTs `body` to /execute: the HTTP status and the JSON answer.
    pub async fn execute(&self, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/execute", self.base))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A gauge or counter of /metrics, summed over its label sets.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The image this server's `runtime` sandboxes run, read off one of its containers.
    pub fn image_of(&self, runtime: &str) -> String {
        let out = Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Image}}", "--filter"])
            .arg(format!("label=isol8.instance={}", self.instance))
            .args(["--filter", &format!("label=isol8.runtime={runtime}")])
            .output()
            .expect("docker ps runs");
        let image = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(!image.is_empty(), "no {runtime} container of the server");
        image
    }

    /// The process's resident memory (bytes) and open descriptors.
    pub fn footprint(&self) -> (u64, usize) {
        let pid = self.child.0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        (rss_kib * 1024, fds)
    }
}

/// Ids of Docker `object`s ("container", all states, or "network") carrying `label`.
pub fn docker_ids(object: &str, label: &str) -> Vec<String> {
    let mut command = Command::new("docker");
    command.args([object, "ls", "-q", "--filter", &format!("label={label}")]);
    if object == "container" {
        command.arg("-a");
    }
    let out = command.output().expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Waits until no container or network carries `label`; panics with what is left after `within`.
pub async fn until_none_left(label: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = [docker_ids("container", label), docker_ids("network", label)];
        if left.iter().all(Vec::is_empty) {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
