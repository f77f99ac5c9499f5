//! Database keys, tenants, per-tenant limits and the audit trail, against real SQLite files and a
//! real PostgreSQL server (started here on a loopback port with its own data directory), through
//! real servers on loopback and a real HTTP client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isol8_docker::Engine;
use isol8_server::{AppState, Database, NamedKey, ServerConfig, SCHEMA_VERSION};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod common;

use common::{config, error_body, KEY};

const MASTER_ONLY: &str = "Master key required for this operation";
const FILE_KEY: &str = "keys-file-key-0123456789";

// ---------------------------------------------------------------------------------------------
// A PostgreSQL server of the test's own, on loopback.

/// A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a free loopback
/// port, `pg_ctl stop` and removal when dropped. Runs as the `postgres` user when the test runs
/// as root (initdb refuses root).
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is installed (Debian's postgresql package; scripts/test.sh installs it)",
        )
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

impl Postgres {
    fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("isol8-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pg = Postgres {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.dir.path().display(),
            pg.port
        );
        let log = format!("{}/log", pg.dir.path().display());
        pg.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
        pg
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let output = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        }
        .unwrap();
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database on this server.
    async fn fresh(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        self.url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
    }
}

/// Root cannot run initdb; the tests then run PostgreSQL as `postgres`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Servers over a database.

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    server_id: Option<String>,
}

impl Server {
    async fn start(config: ServerConfig, connection: &str) -> Server {
        let db = Database::open(connection, &config.auth, &config.audit)
            .await
            .expect("open the auth database");
        Self::with_database(config, db).await
    }

    async fn with_database(config: ServerConfig, db: Database) -> Server {
        let server_id = config.server_id.clone();
        let engine = Engine::connect(config.engine_config().expect("a valid config"))
            .await
            .expect("engine");
        let keys = vec![NamedKey {
            name: "file".into(),
            key: FILE_KEY.into(),
            tenant: "file-tenant".into(),
        }];
        let state = AppState::new(engine, config, KEY.to_string())
            .expect("a valid config")
            .with_named_keys(keys)
            .with_database(db);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
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
            server_id,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn create_key(&self, body: Value) -> Value {
        let response = self
            .call(reqwest::Method::POST, "/auth/keys", KEY, Some(body))
            .await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// The status `key` gets on an ordinary authenticated route.
    async fn status_with(&self, key: &str) -> u16 {
        self.call(reqwest::Method::GET, "/sessions", key, None)
            .await
            .status()
            .as_u16()
    }

    async fn run(&self, key: &str, body: Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, "/execute", key, Some(body))
            .await
    }

    async fn audit(&self, query: &str) -> Value {
        let response = self
            .call(reqwest::Method::GET, &format!("/audit{query}"), KEY, None)
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Server {
    /// The sessions a stopping server leaves (frozen, for its next process) are the test's.
    fn drop(&mut self) {
        if let Some(id) = &self.server_id {
            common::remove_sessions_of(id);
        }
    }
}

fn sqlite_file(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("nested/auth.db")
        .to_string_lossy()
        .into_owned()
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each run against SQLite and PostgreSQL.

async fn keys_are_made_listed_used_revoked_and_expire(connection: &str) {
    let server = Server::start(config(), connection).await;
    let created = server
        .create_key(json!({"name": "ci", "tenantId": "team-a"}))
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("isol8_") && key.len() == 70, "{created}");
    assert!(key[6..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(created["keyPrefix"], format!("{}...", &key[..10]));
    assert_eq!(created["tenantId"], "team-a");
    assert_eq!(created["name"], "ci");
    let id = created["id"].as_str().unwrap().to_string();
    let defaulted = server.create_key(json!({"name": "other"})).await;
    assert_eq!(defaulted["tenantId"], "default");
    assert_ne!(defaulted["key"], created["key"]);

    // The key works, as its tenant.
    assert_eq!(server.status_with(&key).await, 200);

    // Listed newest first, without the key or its hash.
    let list = server
        .call(reqwest::Method::GET, "/auth/keys", KEY, None)
        .await;
    assert_eq!(list.status(), 200);
    let text = list.text().await.unwrap();
    assert!(
        !text.contains(&key) && !text.contains(&sha256(&key)),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["name"], "other");
    assert_eq!(keys[1]["id"], id.as_str());
    assert_eq!(keys[1]["revoked"], false);
    for field in ["key", "keyHash", "hash"] {
        assert!(keys[1].get(field).is_none(), "{field} in {}", keys[1]);
    }
    let only_a: Value = server
        .call(
            reqwest::Method::GET,
            "/auth/keys?tenantId=team-a",
            KEY,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(only_a["keys"].as_array().unwrap().len(), 1);
    // lastUsedAt is written in the background after the first use.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: Value = server
            .call(
                reqwest::Method::GET,
                "/auth/keys?tenantId=team-a",
                KEY,
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        if list["keys"][0]["lastUsedAt"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "lastUsedAt never set: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoked: refused on the next request.
    let revoked = server
        .call(
            reqwest::Method::DELETE,
            &format!("/auth/keys/{id}"),
            KEY,
            None,
        )
        .await;
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        revoked.json::<Value>().await.unwrap(),
        json!({"ok": true, "id": id})
    );
    let (status, body) = error_body(
        server
            .call(reqwest::Method::GET, "/sessions", &key, None)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("Invalid API key"))
    );
    let list: Value = server
        .call(
            reqwest::Method::GET,
            "/auth/keys?tenantId=team-a",
            KEY,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["keys"][0]["revoked"], true);
    let (status, body) = error_body(
        server
            .call(reqwest::Method::DELETE, "/auth/keys/no-such-id", KEY, None)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("Key not found"))
    );

    // Expired: refused once its time is up.
    let short = server
        .create_key(json!({"name": "short", "ttlMs": 1500}))
        .await;
    let short_key = short["key"].as_str().unwrap();
    assert_eq!(server.status_with(short_key).await, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(server.status_with(short_key).await, 403);

    // A near miss of a real key is refused too.
    let mut near = key.clone().into_bytes();
    near[20] = if near[20] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        server.status_with(&String::from_utf8(near).unwrap()).await,
        403
    );

    // Bad bodies name the field.
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": "  "}), "name is required"),
        (json!({"name": "x", "tenantId": "bad tenant!"}), "tenantId"),
        (json!({"name": "x", "ttlMs": 0}), "ttlMs"),
        (json!({"name": "x", "bogus": 1}), "bogus"),
        (
            json!({"name": "x", "limits": {"maxConcurrent": 0}}),
            "limits.maxConcurrent",
        ),
    ] {
        let (status, error) = error_body(
            server
                .call(reqwest::Method::POST, "/auth/keys", KEY, Some(body.clone()))
                .await,
        )
        .await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }

    // Login: a fresh key with a generated name.
    let login = server
        .call(
            reqwest::Method::POST,
            "/auth/login",
            KEY,
            Some(json!({"ttlMs": 60000})),
        )
        .await;
    assert_eq!(login.status(), 200);
    let login: Value = login.json().await.unwrap();
    let token = login["token"].as_str().unwrap();
    assert!(token.starts_with("isol8_"));
    assert!(login["keyId"].is_string() && login["expiresAt"].is_string());
    assert_eq!(server.status_with(token).await, 200);
    let no_body = server
        .http
        .post(server.url("/auth/login"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(no_body.status(), 200);
    server.stop().await;
}

async fn keys_survive_a_restart(connection: &str) {
    let first = Server::start(config(), connection).await;
    let kept = first.create_key(json!({"name": "kept"})).await;
    let gone = first.create_key(json!({"name": "gone"})).await;
    let gone_id = gone["id"].as_str().unwrap();
    let revoked = first
        .call(
            reqwest::Method::DELETE,
            &format!("/auth/keys/{gone_id}"),
            KEY,
            None,
        )
        .await;
    assert_eq!(revoked.status(), 200);
    first.stop().await;

    let second = Server::start(config(), connection).await;
    assert_eq!(second.status_with(kept["key"].as_str().unwrap()).await, 200);
    assert_eq!(second.status_with(gone["key"].as_str().unwrap()).await, 403);
    second.stop().await;
}

async fn two_servers_see_each_others_keys_and_revocations(connection: &str) {
    let a = Server::start(config(), connection).await;
    let b = Server::start(config(), connection).await;
    let created = a
        .create_key(json!({"name": "shared", "tenantId": "t"}))
        .await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(b.status_with(key).await, 200);
    assert_eq!(a.status_with(key).await, 200);
    let id = created["id"].as_str().unwrap();
    let revoked = b
        .call(
            reqwest::Method::DELETE,
            &format!("/auth/keys/{id}"),
            KEY,
            None,
        )
        .await;
    assert_eq!(revoked.status(), 200);
    // At once, on the other server too: there is no cache.
    assert_eq!(a.status_with(key).await, 403);
    assert_eq!(b.status_with(key).await, 403);
    let listed: Value = a
        .call(reqwest::Method::GET, "/auth/keys", KEY, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keys"][0]["revoked"], true);
    a.stop().await;
    b.stop().await;
}

async fn only_the_master_key_reaches_auth_and_audit(connection: &str) {
    let server = Server::start(config(), connection).await;
    let tenant_key = server.create_key(json!({"name": "tenant"})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let spec: Value = server
        .call(reqwest::Method::GET, "/openapi.json", KEY, None)
        .await
        .json()
        .await
        .unwrap();
    let mut checked = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        if !(path.starts_with("/auth") || path.starts_with("/audit")) {
            continue;
        }
        let path = path.replace("{id}", "some-id");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for key in [tenant_key.as_str(), FILE_KEY] {
                // A malformed body too: the master check comes first.
                let response = server
                    .http
                    .request(method.clone(), server.url(&path))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body("{not json")
                    .send()
                    .await
                    .unwrap();
                let (status, body) = error_body(response).await;
                assert_eq!(status, 403, "{method} {path}");
                assert_eq!(body["error"], MASTER_ONLY, "{method} {path}");
            }
            checked.push(format!("{method} {path}"));
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "DELETE /auth/keys/some-id",
            "GET /audit",
            "GET /auth/keys",
            "POST /auth/keys",
            "POST /auth/login"
        ]
    );
    server.stop().await;
}

fn sleeper(seconds: f64) -> Value {
    json!({"request": {"runtime": "bash", "code": format!("sleep {seconds}; echo done")}})
}

async fn tenants_are_held_to_their_limits(connection: &str) {
    let mut cfg = config();
    cfg.tenant_limits.max_concurrent = Some(1);
    cfg.tenant_limits.max_queue = Some(0);
    cfg.tenant_limits.max_sessions = Some(1);
    let server = std::sync::Arc::new(Server::start(cfg, connection).await);
    let a = server
        .create_key(json!({"name": "a", "tenantId": "ta"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let b = server
        .create_key(json!({"name": "b", "tenantId": "tb"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = server
        .create_key(
            json!({"name": "q", "tenantId": "tq", "limits": {"maxQueue": 1, "maxSessions": 2}}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Tenant ta runs one; its second is refused at once, naming the limit.
    let long = {
        let (server, a) = (server.clone(), a.clone());
        tokio::spawn(async move { server.run(&a, sleeper(2.0)).await.status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = Instant::now();
    let (status, body) = error_body(server.run(&a, sleeper(0.0)).await).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "tenant_limit");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("tenantLimits.maxConcurrent") && message.contains("\"ta\""),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Another tenant and the master key are not held back by ta.
    let other = server.run(&b, sleeper(0.0)).await;
    assert_eq!(other.status(), 200);
    assert_eq!(server.run(KEY, sleeper(0.0)).await.status(), 200);
    // The keys file's tenants are tenants too.
    assert_eq!(server.run(FILE_KEY, sleeper(0.0)).await.status(), 200);
    assert_eq!(long.await.unwrap(), 200);

    // A key's own limits: tq may queue one request, which waits its turn and runs.
    let first = {
        let (server, q) = (server.clone(), queued.clone());
        tokio::spawn(async move { server.run(&q, sleeper(1.5)).await.status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = {
        let (server, q) = (server.clone(), queued.clone());
        tokio::spawn(async move { server.run(&q, sleeper(0.0)).await.status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = error_body(server.run(&queued, sleeper(0.0)).await).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("tenantLimits.maxQueue"),
        "{body}"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);

    // Sessions: ta may hold one, tq two (its key says so).
    let in_session =
        |id: &str| json!({"request": {"runtime": "bash", "code": "echo hi"}, "sessionId": id});
    assert_eq!(server.run(&a, in_session("s1")).await.status(), 200);
    let (status, body) = error_body(server.run(&a, in_session("s2")).await).await;
    assert_eq!(status, 429);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("tenantLimits.maxSessions"),
        "{body}"
    );
    assert_eq!(server.run(&queued, in_session("s1")).await.status(), 200);
    assert_eq!(server.run(&queued, in_session("s2")).await.status(), 200);
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await;
}

async fn every_run_leaves_an_audit_row_without_its_code(connection: &str) {
    let server = Server::start(config(), connection).await;
    let created = server
        .create_key(json!({"name": "audited", "tenantId": "aud"}))
        .await;
    let key = created["key"].as_str().unwrap();
    let code = "read line; echo \"got $line $SECRET_TOKEN\"; echo CODE-MARKER-7f3a >/dev/null";
    let run = server
        .run(
            key,
            json!({"request": {"runtime": "bash", "code": code, "stdin": "STDIN-MARKER-91bc\n"},
                   "options": {"secrets": {"SECRET_TOKEN": "SECRET-VALUE-55e1"}}}),
        )
        .await;
    assert_eq!(run.status(), 200);
    let result: Value = run.json().await.unwrap();
    assert_eq!(result["exitCode"], 0, "{result}");
    let failing = server
        .run(
            KEY,
            json!({"request": {"runtime": "bash", "code": "echo oops >&2; exit 3"}}),
        )
        .await;
    assert_eq!(failing.status(), 200);
    let stream = server
        .call(
            reqwest::Method::POST,
            "/execute/stream",
            key,
            Some(json!({"request": {"runtime": "bash", "code": "echo streamed"}})),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let _ = stream.text().await.unwrap();

    let all = server.audit("").await;
    let text = all.to_string();
    for marker in [
        "CODE-MARKER-7f3a",
        "STDIN-MARKER-91bc",
        "SECRET-VALUE-55e1",
        key,
    ] {
        assert!(
            !text.contains(marker),
            "{marker} in the audit trail: {text}"
        );
    }
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{all}");
    // Newest first: the stream, the master's failing run, the first run.
    let first = &entries[2];
    assert_eq!(first["tenantId"], "aud");
    assert_eq!(first["keyId"], created["id"]);
    assert_eq!(first["runtime"], "bash");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["exitCode"], 0);
    assert_eq!(first["codeSha256"], sha256(code));
    assert_eq!(
        first["inputBytes"],
        (code.len() + "STDIN-MARKER-91bc\n".len()) as i64
    );
    let output =
        result["stdout"].as_str().unwrap().len() + result["stderr"].as_str().unwrap().len();
    assert_eq!(first["outputBytes"], output as i64);
    assert!(first["durationMs"].as_i64().unwrap() > 0);
    assert!(first.get("code").is_none());
    assert_eq!(entries[1]["tenantId"], "master");
    assert!(entries[1]["keyId"].is_null());
    assert_eq!(entries[1]["exitCode"], 3);
    assert_eq!(entries[0]["codeSha256"], sha256("echo streamed"));

    let only = server.audit("?tenantId=aud&limit=1").await;
    assert_eq!(only["entries"].as_array().unwrap().len(), 1);
    assert_eq!(only["entries"][0]["id"], entries[0]["id"]);
    let future = server.audit("?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["entries"], json!([]));
    for query in ["?since=yesterday", "?limit=0", "?limit=5000", "?bogus=1"] {
        let (status, _) = error_body(
            server
                .call(reqwest::Method::GET, &format!("/audit{query}"), KEY, None)
                .await,
        )
        .await;
        assert_eq!(status, 400, "{query}");
    }
    server.stop().await;
}

async fn the_schema_migrates_from_empty_and_from_the_previous_version(empty: &str, previous: &str) {
    let fresh = Database::open(empty, &Default::default(), &Default::default())
        .await
        .unwrap();
    assert_eq!(fresh.schema_version().await.unwrap(), SCHEMA_VERSION);

    // A database at version 1, with a key written by that version.
    let old = Database::open_at_version(previous, 1).await.unwrap();
    assert_eq!(old.schema_version().await.unwrap(), 1);
    drop(old);
    let key = format!("isol8_{}", "5e".repeat(32));
    let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = if previous.starts_with("postgres") {
            previous.to_string()
        } else {
            format!("sqlite://{previous}")
        };
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, tenant_id, created_at, expires_at) \
             VALUES ('old-key', 'from v1', $1, 'isol8_5e5e...', 'legacy', 0, $2)",
        )
        .bind(sha256(&key))
        .bind(far)
        .execute(&mut conn)
        .await
        .unwrap();
        let err = sqlx::query("SELECT max_sessions FROM api_keys")
            .fetch_all(&mut conn)
            .await;
        assert!(err.is_err(), "version 1 has no limit columns");
    }
    let server = Server::start(config(), previous).await;
    assert_eq!(server.status_with(&key).await, 200);
    let listed: Value = server
        .call(
            reqwest::Method::GET,
            "/auth/keys?tenantId=legacy",
            KEY,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keys"][0]["name"], "from v1");
    assert_eq!(listed["keys"][0]["limits"], json!({}));
    server.stop().await;
    let migrated = Database::open(previous, &Default::default(), &Default::default())
        .await
        .unwrap();
    assert_eq!(migrated.schema_version().await.unwrap(), SCHEMA_VERSION);
}

/// The real `isol8-server` binary, with debug logs on: no key and no key hash in any line.
async fn no_key_reaches_the_log(connection: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let isol8_e2e::Listening {
        mut child,
        base,
        said,
        rest,
    } = isol8_e2e::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8-server"))
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--auth-db",
                connection,
            ])
            .env("ISOL8_API_KEY", KEY)
            .env("ISOL8_LOG", "debug")
            .env("ISOL8_POOL_SIZE", "0")
            .env("HOME", dir.path())
            .env_remove("ISOL8_CONFIG")
            .current_dir(dir.path())
            .stdout(log),
        Duration::from_secs(20),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created: Value = http
        .post(format!("{base}/auth/keys"))
        .bearer_auth(KEY)
        .json(&json!({"name": "logged"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let login: Value = http
        .post(format!("{base}/auth/login"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    for k in [&key, &token] {
        let ok = http
            .get(format!("{base}/sessions"))
            .bearer_auth(k)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let wrong = format!("isol8_{}", "0f".repeat(32));
    let refused = http
        .get(format!("{base}/sessions"))
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let run = http
        .post(format!("{base}/execute"))
        .bearer_auth(&key)
        .json(&json!({"request": {"runtime": "bash", "code": "echo hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    let id = created["id"].as_str().unwrap();
    let revoked = http
        .delete(format!("{base}/auth/keys/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    isol8_e2e::signal_and_wait(&mut child, "TERM");
    // Everything it wrote: stdout in the file, then stderr (which ended with it).
    let mut text = std::fs::read_to_string(&log_path).unwrap();
    for line in said.into_iter().chain(rest.iter()) {
        text.push_str(&line);
        text.push('\n');
    }
    assert!(
        text.contains("API key created"),
        "the log was captured: {text}"
    );
    assert!(
        text.contains("sqlx::query"),
        "statements were logged at this level: {text}"
    );
    assert!(!text.contains(KEY), "the master key in the log");
    for secret in [&key, &token, &wrong] {
        assert!(!text.contains(secret.as_str()), "a key in the log");
        assert!(!text.contains(&sha256(secret)), "a key's hash in the log");
        assert!(!text.contains(&secret[6..30]), "part of a key in the log");
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite: each scenario in its own temp dir.

#[tokio::test]
async fn sqlite_keys_are_made_listed_used_revoked_and_expire() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    keys_are_made_listed_used_revoked_and_expire(&sqlite_file(&dir)).await;
    let mode = std::fs::metadata(sqlite_file(&dir))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the database file is the server's user's alone"
    );
}

#[tokio::test]
async fn sqlite_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    keys_survive_a_restart(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn sqlite_two_servers_on_one_file_see_each_others_revocations() {
    let dir = tempfile::tempdir().unwrap();
    two_servers_see_each_others_keys_and_revocations(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn sqlite_only_the_master_key_reaches_auth_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    only_the_master_key_reaches_auth_and_audit(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn sqlite_tenants_are_held_to_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    tenants_are_held_to_their_limits(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn sqlite_every_run_leaves_an_audit_row_without_its_code() {
    let dir = tempfile::tempdir().unwrap();
    every_run_leaves_an_audit_row_without_its_code(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn sqlite_schema_migrates_from_empty_and_from_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    let previous = dir.path().join("v1.db");
    the_schema_migrates_from_empty_and_from_the_previous_version(
        empty.to_str().unwrap(),
        previous.to_str().unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_no_key_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    no_key_reaches_the_log(&sqlite_file(&dir)).await;
}

#[tokio::test]
async fn audit_include_code_keeps_the_code_and_retention_deletes_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.audit.include_code = true;
    cfg.audit.retention_days = 1;
    let connection = sqlite_file(&dir);
    let db = Database::open(&connection, &cfg.auth, &cfg.audit)
        .await
        .unwrap();
    let server = Server::with_database(cfg, db.clone()).await;
    let run = server
        .run(
            KEY,
            json!({"request": {"runtime": "bash", "code": "echo kept"}}),
        )
        .await;
    assert_eq!(run.status(), 200);
    let all = server.audit("").await;
    assert_eq!(all["entries"][0]["code"], "echo kept");
    // A row two days old goes at the next sweep; today's stays.
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{connection}"))
            .await
            .unwrap();
        let old = chrono::Utc::now().timestamp_millis() - 2 * 86_400_000;
        sqlx::query(
            "INSERT INTO audit_log (time, tenant_id, runtime, status, exit_code, duration_ms, \
             code_sha256, input_bytes, output_bytes) VALUES ($1, 'x', 'bash', 'completed', 0, 1, 'h', 0, 0)",
        )
        .bind(old)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    assert_eq!(
        server.audit("").await["entries"].as_array().unwrap().len(),
        2
    );
    let (_, rows) = db.sweep().await.unwrap();
    assert_eq!(rows, 1);
    let left = server.audit("").await;
    assert_eq!(left["entries"].as_array().unwrap().len(), 1);
    assert_eq!(left["entries"][0]["code"], "echo kept");
    server.stop().await;
}

#[tokio::test]
async fn without_a_database_the_auth_routes_say_so() {
    let server = common::Server::start(config()).await;
    for (method, path) in [
        (reqwest::Method::GET, "/auth/keys"),
        (reqwest::Method::GET, "/audit"),
    ] {
        let response = server
            .http
            .request(method, server.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let (status, body) = error_body(response).await;
        assert_eq!(status, 400);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("DB-backed auth is not enabled"),
            "{body}"
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: one server of the test's own, a fresh database per scenario.

#[tokio::test]
async fn postgres_the_same_scenarios_against_a_real_server() {
    let pg = Postgres::start();
    keys_are_made_listed_used_revoked_and_expire(&pg.fresh("lifecycle").await).await;
    keys_survive_a_restart(&pg.fresh("restart").await).await;
    two_servers_see_each_others_keys_and_revocations(&pg.fresh("shared").await).await;
    only_the_master_key_reaches_auth_and_audit(&pg.fresh("master").await).await;
    tenants_are_held_to_their_limits(&pg.fresh("limits").await).await;
    every_run_leaves_an_audit_row_without_its_code(&pg.fresh("audit").await).await;
    the_schema_migrates_from_empty_and_from_the_previous_version(
        &pg.fresh("empty").await,
        &pg.fresh("previous").await,
    )
    .await;
    no_key_reaches_the_log(&pg.fresh("logs").await).await;
    // The data directory is this test's own.
    assert!(Path::new(&pg.data()).join("PG_VERSION").exists());
}
