//! Session tests through the HTTP API on real Docker: live interpreter state in every runtime,
//! files in and out, per-key isolation, serialized calls, idle expiry and cleanup on shutdown.

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
async fn idle_sessions_expire_limits_answer_429_and_shutdown_removes_containers() {
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
    // A new session after expiry, then shutdown removes it.
    call(&server, KEY, "s4", "bash", "true").await;
    assert_eq!(containers_of(&server).await, 1);
    let instance = server.instance.clone();
    server.stop().await;
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=isol8.instance={instance}"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
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
