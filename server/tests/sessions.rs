//! Session tests through the HTTP API on real Docker: live interpreter state in every runtime,
//! files in and out, per-key isolation, serialized calls, idle expiry, freezing, sessions a
//! restarted server adopts, `sessionCreated`, lifetime control and workspace archives.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{config, error_body, Server, KEY};
use isol8_server::{NamedKey, ServerConfig};
use serde_json::{json, Value};

const OTHER_KEY: &str = "other-tenant-key-0123456789";

async fn call(server: &Server, key: &str, session: &str, runtime: &str, code: &str) -> Value {
    let response = server
        .http
        .post(server.url("/execute"))
        .bearer_auth(key)
        .json(&json!({"request": {"runtime": runtime, "code": code}, "sessionId": session}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn get(server: &Server, key: &str, path: &str) -> reqwest::Response {
    server
        .http
        .get(server.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Containers of this server instance still on the engine.
async fn containers_of(server: &Server) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=isol8.instance={}", server.instance),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

#[tokio::test]
async fn state_persists_between_calls_in_every_runtime() {
    let server = Server::start(config()).await;
    let cases = [
        (
            "python",
            "x = 41\ndef bump(n):\n    return n + 1",
            "print(bump(x))",
        ),
        (
            "node",
            "let x = 41; function bump(n) { return n + 1 }",
            "console.log(bump(x))",
        ),
        (
            "bun",
            "let x = 41; function bump(n) { return n + 1 }",
            "console.log(bump(x))",
        ),
        (
            "deno",
            "let x = 41; function bump(n) { return n + 1 }",
            "console.log(bump(x))",
        ),
        (
            "bash",
            "x=41; bump() { echo $(($1 + 1)); }; cd /tmp",
            "bump $x; pwd",
        ),
    ];
    let calls = cases.iter().map(|(runtime, first, second)| {
        let server = &server;
        async move {
            let session = format!("persist-{runtime}");
            let defined = call(server, KEY, &session, runtime, first).await;
            assert_eq!(defined["status"], "completed", "{runtime}: {defined}");
            // An error in one call keeps the state.
            let failing = match *runtime {
                "python" => "raise ValueError('boom')",
                "bash" => "false",
                _ => "throw new Error('boom')",
            };
            let failed = call(server, KEY, &session, runtime, failing).await;
            assert_eq!(failed["exitCode"], 1, "{runtime}: {failed}");
            let used = call(server, KEY, &session, runtime, second).await;
            let expected = if *runtime == "bash" {
                "42\n/tmp\n"
            } else {
                "42\n"
            };
            assert_eq!(used["stdout"], expected, "{runtime}: {used}");
            assert_eq!(used["sessionRestarted"], false, "{runtime}: {used}");
            assert_eq!(used["containerId"], defined["containerId"]);
        }
    });
    futures::future::join_all(calls).await;
    let listed: Value = get(&server, KEY, "/sessions").await.json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 5, "{listed}");
    server.stop().await;
}

#[tokio::test]
async fn a_timeout_kills_the_call_and_says_the_interpreter_restarted() {
    let server = Server::start(config()).await;
    call(&server, KEY, "t1", "python", "x = 1").await;
    let response = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "import time\ntime.sleep(30)", "timeoutMs": 500},
                   "sessionId": "t1"}),
        )
        .await;
    let timed_out: Value = response.json().await.unwrap();
    assert_eq!(timed_out["status"], "timeout", "{timed_out}");
    assert_eq!(timed_out["sessionRestarted"], true, "{timed_out}");
    // The session still answers, from a fresh interpreter.
    let after = call(&server, KEY, "t1", "python", "print('x' in globals())").await;
    assert_eq!(after["stdout"], "False\n", "{after}");
    server.stop().await;
}

#[tokio::test]
async fn files_round_trip_byte_for_byte_and_paths_cannot_escape() {
    let server = Server::start(config()).await;
    call(
        &server,
        KEY,
        "files",
        "bash",
        "ln -s /etc /sandbox/etc-link; ln -s /tmp /sandbox/tmp-link",
    )
    .await;
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let write = server
        .post(
            "/file",
            json!({"sessionId": "files", "path": "/sandbox/deep/dir/blob.bin", "content": b64}),
        )
        .await;
    assert_eq!(write.status(), 200, "{}", write.text().await.unwrap());
    // The program sees the file, and what it writes comes back.
    let seen = call(
        &server,
        KEY,
        "files",
        "bash",
        "wc -c < deep/dir/blob.bin; printf 'made' > out.txt",
    )
    .await;
    assert_eq!(seen["stdout"], "259\n", "{seen}");
    let read: Value = get(
        &server,
        KEY,
        "/file?sessionId=files&path=/sandbox/deep/dir/blob.bin",
    )
    .await
    .json()
    .await
    .unwrap();
    let back = base64::engine::general_purpose::STANDARD
        .decode(read["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(back, bytes);
    let made: Value = get(&server, KEY, "/file?sessionId=files&path=out.txt")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(made["content"], "bWFkZQ==");

    for path in [
        "/etc/passwd",
        "/sandbox/../etc/passwd",
        "/sandbox/etc-link/passwd",
        "/sandbox/tmp-link/x",
    ] {
        let (status, body) =
            error_body(get(&server, KEY, &format!("/file?sessionId=files&path={path}")).await)
                .await;
        assert_eq!(status, 400, "read {path}: {body}");
        let (status, body) = error_body(
            server
                .post(
                    "/file",
                    json!({"sessionId": "files", "path": path, "content": "eA=="}),
                )
                .await,
        )
        .await;
        assert_eq!(status, 400, "write {path}: {body}");
    }
    let (status, _) =
        error_body(get(&server, KEY, "/file?sessionId=files&path=/sandbox/missing").await).await;
    assert_eq!(status, 404);
    let (status, _) = error_body(
        server
            .post(
                "/file",
                json!({"sessionId": "files", "path": "a", "content": "not base64!"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn another_key_never_sees_or_reaches_a_session() {
    let keys = vec![NamedKey {
        name: "other".into(),
        key: OTHER_KEY.into(),
        tenant: "tenant-b".into(),
    }];
    let server = Server::start_full(config(), None, keys).await;
    call(&server, KEY, "mine", "python", "secret = 'only-mine'").await;
    let theirs: Value = get(&server, OTHER_KEY, "/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["sessions"], json!([]), "{theirs}");
    let (status, _) =
        error_body(get(&server, OTHER_KEY, "/file?sessionId=mine&path=x").await).await;
    assert_eq!(status, 404);
    let write = server
        .http
        .post(server.url("/file"))
        .bearer_auth(OTHER_KEY)
        .json(&json!({"sessionId": "mine", "path": "x", "content": "eA=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 404);
    // The same name under the other key is a different session.
    let same_name = call(
        &server,
        OTHER_KEY,
        "mine",
        "python",
        "print('secret' in globals())",
    )
    .await;
    assert_eq!(same_name["stdout"], "False\n");
    // Deleting "mine" with the other key ends only the other key's session.
    let deleted = server
        .http
        .delete(server.url("/session/mine"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let still = call(&server, KEY, "mine", "python", "print(secret)").await;
    assert_eq!(still["stdout"], "only-mine\n");
    // A tenant's cleanup ends its own sessions only; images are the master key's business.
    call(&server, OTHER_KEY, "theirs", "python", "pass").await;
    let cleanup: Value = server
        .http
        .post(server.url("/cleanup"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleanup["sessions"]["removed"], 1, "{cleanup}");
    let theirs: Value = get(&server, OTHER_KEY, "/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["sessions"], json!([]));
    let still = call(&server, KEY, "mine", "python", "print(secret)").await;
    assert_eq!(still["stdout"], "only-mine\n");
    let images = server
        .http
        .post(server.url("/cleanup"))
        .bearer_auth(OTHER_KEY)
        .json(&json!({"images": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(images.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_on_one_session_are_serialized() {
    let server = Server::start(config()).await;
    call(&server, KEY, "serial", "python", "import time\nlog = []").await;
    let started = Instant::now();
    let one = call(
        &server,
        KEY,
        "serial",
        "python",
        "log.append('a-start'); time.sleep(1); log.append('a-end')",
    );
    let two = call(
        &server,
        KEY,
        "serial",
        "python",
        "log.append('b-start'); time.sleep(1); log.append('b-end')",
    );
    futures::future::join(one, two).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "calls overlapped"
    );
    let log = call(&server, KEY, "serial", "python", "print(log)").await;
    let text = log["stdout"].as_str().unwrap();
    assert!(
        text == "['a-start', 'a-end', 'b-start', 'b-end']\n"
            || text == "['b-start', 'b-end', 'a-start', 'a-end']\n",
        "interleaved: {text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_limits_answer_429_and_shutdown_freezes_sessions() {
    let server = Server::start(ServerConfig {
        session_idle_timeout_ms: 1500,
        max_sessions_per_key: 2,
        ..config()
    })
    .await;
    call(&server, KEY, "s1", "bash", "true").await;
    call(&server, KEY, "s2", "bash", "true").await;
    let over = server
        .post(
            "/execute",
            json!({"request": {"runtime": "bash", "code": "true"}, "sessionId": "s3"}),
        )
        .await;
    assert!(over.headers().contains_key("retry-after"));
    let (status, body) = error_body(over).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(containers_of(&server).await, 2);

    // Idle past the timeout: both go, with their containers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed: Value = get(&server, KEY, "/sessions").await.json().await.unwrap();
        if listed["sessions"].as_array().unwrap().is_empty() && containers_of(&server).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions did not expire: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A new session after expiry; shutdown leaves it frozen for the next process, and nothing
    // else of this instance.
    call(&server, KEY, "s4", "bash", "true").await;
    assert_eq!(containers_of(&server).await, 1);
    let instance = server.instance.clone();
    let server_id = server.server_id.clone().unwrap();
    server.stop_keeping_sessions().await;
    let left = docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=isol8.instance={instance}"),
    ]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(paused(&left[0]), Some(true));
    common::remove_sessions_of(&server_id);
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Whether the container is frozen; `None` when it is gone.
fn paused(container: &str) -> Option<bool> {
    let lines = docker_lines(&["inspect", "-f", "{{.State.Paused}}", container]);
    lines.first().map(|l| l == "true")
}

/// The session containers of a server identity.
fn sessions_of(server_id: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=isol8.server={server_id}"),
    ])
}

#[tokio::test]
async fn the_session_header_works_and_bad_ids_are_refused() {
    let server = Server::start(config()).await;
    for body in [
        json!({"runtime": "python", "code": "v = 7"}),
        json!({"runtime": "python", "code": "print(v)"}),
    ] {
        let response = server
            .http
            .post(server.url("/execute"))
            .bearer_auth(KEY)
            .header("X-Isol8-Session", "by-header")
            .json(&json!({ "request": body }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let result: Value = response.json().await.unwrap();
        assert_eq!(result["status"], "completed", "{result}");
        if body["code"] == "print(v)" {
            assert_eq!(result["stdout"], "7\n");
        }
    }
    let (status, body) = error_body(
        server
            .post(
                "/execute",
                json!({"request": {"runtime": "python", "code": "1"}, "sessionId": "../x"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let wrong_runtime = server
        .post(
            "/execute",
            json!({"request": {"runtime": "node", "code": "1"}, "sessionId": "by-header"}),
        )
        .await;
    let (status, body) = error_body(wrong_runtime).await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("runs python"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn packages_installed_in_a_session_persist() {
    let server = Server::start(config()).await;
    // A wheel made in the session itself (no network). The root is read-only, so a plain
    // `pip install` goes to the sandbox user's ~/.local, under /sandbox, which the session keeps.
    let make_wheel = r#"
import zipfile
files = {
    "sessionprobe/__init__.py": "VALUE = 'installed'\n",
    "sessionprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: sessionprobe\nVersion: 1.0\n",
    "sessionprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "sessionprobe-1.0.dist-info/RECORD": "",
}
with zipfile.ZipFile("/sandbox/sessionprobe-1.0-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
"#;
    let made = call(&server, KEY, "pkgs", "python", make_wheel).await;
    assert_eq!(made["exitCode"], 0, "{made}");
    let install = call(
        &server,
        KEY,
        "pkgs",
        "python",
        "import subprocess, sys\nr = subprocess.run(['pip', 'install', '--no-index', '/sandbox/sessionprobe-1.0-py3-none-any.whl'], capture_output=True, text=True)\nprint(r.returncode)\nsys.stderr.write(r.stderr)",
    )
    .await;
    assert_eq!(install["stdout"], "0\n", "{install}");
    let used = call(
        &server,
        KEY,
        "pkgs",
        "python",
        "import sessionprobe\nprint(sessionprobe.VALUE)",
    )
    .await;
    assert_eq!(used["stdout"], "installed\n", "{used}");
    server.stop().await;
}

#[tokio::test]
async fn commands_secrets_and_cancelled_calls_keep_a_session_coherent() {
    let server = Server::start(config()).await;
    call(&server, KEY, "mixed", "python", "kept = 'yes'").await;
    // A shell command in the session runs beside the interpreter, not instead of it.
    let cmd = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "cmd": "echo from-shell"}, "sessionId": "mixed"}),
        )
        .await;
    let cmd: Value = cmd.json().await.unwrap();
    assert_eq!(cmd["stdout"], "from-shell\n", "{cmd}");
    let after = call(&server, KEY, "mixed", "python", "print(kept)").await;
    assert_eq!(after["stdout"], "yes\n", "{after}");
    assert_eq!(after["sessionRestarted"], false);

    // A secret given once stays masked in later calls, which still see it in the environment.
    let given = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "import os"}, "options": {"secrets": {"TOKEN": "s3cr3t-value"}},
                   "sessionId": "mixed"}),
        )
        .await;
    assert_eq!(given.status(), 200);
    let later = call(
        &server,
        KEY,
        "mixed",
        "python",
        "print(os.environ['TOKEN'])",
    )
    .await;
    assert_eq!(later["stdout"], "***\n", "{later}");

    // A streamed call whose client goes away: the next call gets its own result, not the
    // abandoned one's, and is told the state is gone.
    let response = server
        .post(
            "/execute/stream",
            json!({"request": {"runtime": "python", "code": "import time\nprint('started', flush=True)\ntime.sleep(30)"},
                   "sessionId": "mixed"}),
        )
        .await;
    let mut bytes = response.bytes_stream();
    use futures::StreamExt;
    let _ = bytes.next().await;
    drop(bytes);
    let next = call(&server, KEY, "mixed", "python", "print('fresh')").await;
    assert_eq!(next["stdout"], "fresh\n", "{next}");
    assert_eq!(next["sessionRestarted"], true, "{next}");
    server.stop().await;
}

async fn session_json(server: &Server, key: &str, id: &str) -> (u16, Value) {
    let response = get(server, key, &format!("/session/{id}")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_restarted_server_adopts_its_sessions_and_another_server_never_sees_them() {
    let cfg = config();
    let server_id = cfg.server_id.clone().unwrap();
    let server = Server::start(cfg.clone()).await;
    let first = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "import os\nx = 42\nos.makedirs('work', exist_ok=True)\nos.chdir('work')\nopen('/sandbox/kept.txt', 'w').write('kept')"},
                   "options": {"secrets": {"TOKEN": "tok-8f3a91c2"}}, "sessionId": "durable"}),
        )
        .await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["sessionCreated"], true, "{first}");
    call(&server, KEY, "durable-2", "bash", "cd /tmp; kept=yes").await;
    server.stop_keeping_sessions().await;
    let left = sessions_of(&server_id);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|c| paused(c) == Some(true)),
        "a stopped server leaves its sessions frozen"
    );

    // A second server on the same engine, with an identity of its own: none of them.
    let stranger = Server::start(config()).await;
    let listed: Value = get(&stranger, KEY, "/sessions").await.json().await.unwrap();
    assert_eq!(listed["sessions"], json!([]), "{listed}");
    let own = call(
        &stranger,
        KEY,
        "durable",
        "python",
        "print('x' in globals())",
    )
    .await;
    assert_eq!(own["stdout"], "False\n");
    assert_eq!(own["sessionCreated"], true);
    stranger.stop().await;
    assert!(
        left.iter().all(|c| paused(c) == Some(true)),
        "the stranger touched them"
    );

    // The same identity again: state, files, cwd and masking are all there.
    let again = Server::start(cfg.clone()).await;
    let listed: Value = get(&again, KEY, "/sessions").await.json().await.unwrap();
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["durable", "durable-2"], "{listed}");
    let next = call(
        &again,
        KEY,
        "durable",
        "python",
        "print(x, os.getcwd(), open('/sandbox/kept.txt').read())\nprint(os.environ['TOKEN'])\nprint('tok-' + '8f3a91c2')",
    )
    .await;
    assert_eq!(
        next["stdout"], "42 /sandbox/work kept\n***\n***\n",
        "{next}"
    );
    assert_eq!(next["sessionCreated"], false, "{next}");
    assert_eq!(next["sessionRestarted"], false, "{next}");
    let bash = call(&again, KEY, "durable-2", "bash", "echo $kept $PWD").await;
    assert_eq!(bash["stdout"], "yes /tmp\n", "{bash}");
    again.stop().await;
    assert_eq!(sessions_of(&server_id), Vec::<String>::new());
}

#[tokio::test]
async fn an_expired_session_is_removed_at_adoption() {
    let cfg = ServerConfig {
        session_idle_timeout_ms: 1500,
        ..config()
    };
    let server_id = cfg.server_id.clone().unwrap();
    let server = Server::start(cfg.clone()).await;
    call(&server, KEY, "short-lived", "bash", "true").await;
    server.stop_keeping_sessions().await;
    assert_eq!(sessions_of(&server_id).len(), 1);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let again = Server::start(cfg).await;
    let listed: Value = get(&again, KEY, "/sessions").await.json().await.unwrap();
    assert_eq!(listed["sessions"], json!([]), "{listed}");
    assert_eq!(sessions_of(&server_id), Vec::<String>::new());
    let fresh = call(&again, KEY, "short-lived", "bash", "true").await;
    assert_eq!(fresh["sessionCreated"], true);
    again.stop().await;
}

#[tokio::test]
async fn idle_sessions_freeze_and_the_next_call_thaws_them() {
    let server = Server::start(ServerConfig {
        session_pause_after_ms: 300,
        ..config()
    })
    .await;
    let first = call(
        &server,
        KEY,
        "sleepy",
        "python",
        "n = 5\nopen('f', 'w').write('x' * 5000)",
    )
    .await;
    let container = first["containerId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let frozen = loop {
        let (status, detail) = session_json(&server, KEY, "sleepy").await;
        assert_eq!(status, 200, "{detail}");
        if detail["paused"] == true {
            break detail;
        }
        assert!(Instant::now() < deadline, "never frozen: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(paused(&container), Some(true));
    assert!(frozen["sandboxBytes"].as_u64().unwrap() >= 5000, "{frozen}");
    let next = call(&server, KEY, "sleepy", "python", "print(n * 2)").await;
    assert_eq!(next["stdout"], "10\n", "{next}");
    assert_eq!(next["sessionCreated"], false);
    assert_eq!(paused(&container), Some(false));
    server.stop().await;
}

#[tokio::test]
async fn session_created_says_when_the_call_made_the_session() {
    let server = Server::start(config()).await;
    let first = call(&server, KEY, "made", "bash", "v=1").await;
    assert_eq!(first["sessionCreated"], true, "{first}");
    let second = call(&server, KEY, "made", "bash", "echo $v").await;
    assert_eq!(second["sessionCreated"], false, "{second}");
    assert_eq!(second["stdout"], "1\n");
    server
        .http
        .delete(server.url("/session/made"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let after = call(&server, KEY, "made", "bash", "echo ${v:-none}").await;
    assert_eq!(after["sessionCreated"], true, "{after}");
    assert_eq!(after["stdout"], "none\n");
    // One-shot runs say nothing about sessions.
    let plain: Value = server
        .post(
            "/execute",
            json!({"request": {"runtime": "bash", "code": "true"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(plain.get("sessionCreated").is_none(), "{plain}");
    server.stop().await;
}

const TENANT_KEY: &str = "tenant-b-key-0123456789abc";

#[tokio::test]
async fn get_and_patch_report_and_change_a_sessions_lifetime() {
    let keys = vec![NamedKey {
        name: "b".into(),
        key: TENANT_KEY.into(),
        tenant: "team-b".into(),
    }];
    let server = Server::start_full(
        ServerConfig {
            max_session_idle_timeout_ms: 7_200_000,
            ..config()
        },
        None,
        keys,
    )
    .await;
    call(&server, KEY, "life", "node", "globalThis.k = 1").await;
    let (status, detail) = session_json(&server, KEY, "life").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["runtime"], "node");
    assert_eq!(detail["paused"], false);
    assert_eq!(detail["idleTimeoutMs"], 3_600_000);
    assert!(detail["sandboxBytes"].is_u64(), "{detail}");
    let last =
        chrono::DateTime::parse_from_rfc3339(detail["lastAccessedAt"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(detail["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires - last).num_seconds(), 3600);

    let patch = |key: &'static str, body: Value| {
        server
            .http
            .patch(server.url("/session/life"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let changed: Value = patch(KEY, json!({"idleTimeoutMs": 7_200_000}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["idleTimeoutMs"], 7_200_000, "{changed}");
    let (status, body) = error_body(
        patch(KEY, json!({"idleTimeoutMs": 7_200_001}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("maxSessionIdleTimeoutMs"),
        "{body}"
    );
    let (status, body) = error_body(patch(KEY, json!({"idleTimeout": 5000})).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = error_body(
        patch(TENANT_KEY, json!({"idleTimeoutMs": 5000}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = session_json(&server, TENANT_KEY, "life").await;
    assert_eq!(status, 404);

    // A short timeout set by PATCH ends the session (watched through the list: GET /session
    // measures /sandbox, holding the session as a call would, so it would keep it alive).
    patch(KEY, json!({"idleTimeoutMs": 1000})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed: Value = get(&server, KEY, "/sessions").await.json().await.unwrap();
        if listed["sessions"] == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the patched timeout did not end it"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// A tar archive of `entries`: (tar type, name, link target or contents).
fn tar_of(entries: &[(tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (kind, name, other) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        let data = match kind {
            tar::EntryType::Regular => other.as_bytes(),
            _ => b"",
        };
        header.set_size(data.len() as u64);
        // Names as a hostile client writes them (the builder itself refuses "..").
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if *kind == tar::EntryType::Symlink {
            header.set_link_name(other).unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

async fn post_archive(server: &Server, key: &str, path: &str, tar: Vec<u8>) -> reqwest::Response {
    server
        .http
        .post(server.url(path))
        .bearer_auth(key)
        .header("content-type", "application/x-tar")
        .body(tar)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn archives_round_trip_and_hostile_archives_are_refused() {
    let keys = vec![NamedKey {
        name: "b".into(),
        key: TENANT_KEY.into(),
        tenant: "team-b".into(),
    }];
    let server = Server::start_full(
        ServerConfig {
            max_archive_bytes: 64 * 1024,
            ..config()
        },
        None,
        keys,
    )
    .await;
    call(
        &server,
        KEY,
        "src",
        "bash",
        "mkdir -p app/data && echo 'echo run' > app/run.sh && chmod 755 app/run.sh && echo 1,2 > app/data/t.csv && ln -s app/run.sh latest \
         && mkfifo app/pipe && echo s > secret && chmod 000 secret",
    )
    .await;
    let exported = get(&server, KEY, "/session/src/archive").await;
    assert_eq!(exported.status(), 200, "{:?}", exported.text().await);
    assert_eq!(exported.headers()["content-type"], "application/x-tar");
    let tar = exported.bytes().await.unwrap().to_vec();
    // In os.walk's order (each folder's subfolders, then its files, sorted), without the FIFO or
    // the file its owner cannot read; symlinks as links.
    let mut listed = tar::Archive::new(tar.as_slice());
    let listed: Vec<(String, tar::EntryType)> = listed
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            (name, e.header().entry_type())
        })
        .collect();
    use tar::EntryType as T;
    assert_eq!(
        listed,
        [
            ("app/".to_string(), T::Directory),
            ("latest".to_string(), T::Symlink),
            ("app/data/".to_string(), T::Directory),
            ("app/run.sh".to_string(), T::Regular),
            ("app/data/t.csv".to_string(), T::Regular),
        ]
    );

    // Into a new session (created by the import), and the files are there, modes and link too.
    let imported = post_archive(
        &server,
        KEY,
        "/session/dst/archive?runtime=bash",
        tar.clone(),
    )
    .await;
    let imported: Value = imported.json().await.unwrap();
    assert_eq!(imported, json!({"ok": true, "sessionCreated": true}));
    let check = call(
        &server,
        KEY,
        "dst",
        "bash",
        "./latest; cat app/data/t.csv; stat -c %a app/run.sh; readlink latest",
    )
    .await;
    assert_eq!(check["stdout"], "run\n1,2\n755\napp/run.sh\n", "{check}");
    assert_eq!(check["sessionCreated"], false, "the import made it");
    // Into an existing one: it stays what it was, with the files added.
    let again = post_archive(&server, KEY, "/session/dst/archive", tar.clone()).await;
    assert_eq!(
        again.json::<Value>().await.unwrap()["sessionCreated"],
        false
    );

    // Another tenant reaches neither, and cannot create one without a runtime.
    assert_eq!(
        get(&server, TENANT_KEY, "/session/src/archive")
            .await
            .status(),
        404
    );
    let (status, _) =
        error_body(post_archive(&server, TENANT_KEY, "/session/src/archive", tar.clone()).await)
            .await;
    assert_eq!(status, 404);

    let hostile = [
        (
            tar_of(&[(T::Regular, "/etc/cron.d/x", "x")]),
            "absolute path",
        ),
        (tar_of(&[(T::Regular, "a/../../../tmp/x", "x")]), "\"..\""),
        (tar_of(&[(T::Symlink, "out", "/etc")]), "outside /sandbox"),
        (
            tar_of(&[(T::Symlink, "up", "../../etc")]),
            "outside /sandbox",
        ),
        (
            tar_of(&[(T::Symlink, "d", "app"), (T::Regular, "d/x", "x")]),
            "below the symlink",
        ),
        (tar_of(&[(T::Char, "null", "")]), "device file"),
        (tar_of(&[(T::Link, "hard", "/etc/shadow")]), "hard link"),
        (
            tar_of(&[(T::Regular, "big", &"x".repeat(65 * 1024))]),
            "maxArchiveBytes",
        ),
        (
            b"not a tar archive at all, just text that goes on for a while......".repeat(10),
            "archive",
        ),
    ];
    for (tar, says) in hostile {
        let response = post_archive(&server, KEY, "/session/dst/archive", tar).await;
        let (status, body) = error_body(response).await;
        assert_eq!(status, 400, "{says}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(says), "{says}: {message}");
    }
    // Nothing of them landed; the session still answers.
    let after = call(&server, KEY, "dst", "bash", "ls /sandbox; ls /tmp").await;
    assert_eq!(after["stdout"], "app\nlatest\n", "{after}");
    // Past the cap on the way out too.
    call(
        &server,
        KEY,
        "src",
        "bash",
        "head -c 100000 /dev/zero > big",
    )
    .await;
    let (status, body) = error_body(get(&server, KEY, "/session/src/archive").await).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("maxArchiveBytes"),
        "{body}"
    );
    server.stop().await;
}
