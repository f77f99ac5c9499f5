//! Existing isol8 clients against our server: the reference CLI's and `RemoteIsol8`'s request
//! bodies sent verbatim (REFERENCE.md §2), its WebSocket protocol through a real WebSocket client,
//! Node Buffer files, the network log's shape, `/cleanup` with two servers on one engine, the
//! output limit's exit code, remote code, session exit semantics and `resourceUsage`.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use isol8_e2e::{Server, KEY};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// What the reference CLI sends for `isol8 run -e "print(1)" --host URL --key K`, captured from it.
fn reference_cli_body(code: &str) -> Value {
    json!({"request": {"runtime": "python", "timeoutMs": 30000, "code": code},
        "options": {"mode": "ephemeral", "network": "none",
            "networkFilter": {"whitelist": [], "blacklist": []},
            "memoryLimit": "512m", "cpuLimit": 1, "timeoutMs": 30000, "debug": false,
            "persist": false,
            "remoteCode": {"enabled": false, "allowedSchemes": ["https"], "allowedHosts": [],
                "blockedHosts": ["^localhost$", "^127(?:\\.[0-9]{1,3}){3}$"],
                "maxCodeSize": 10485760, "fetchTimeoutMs": 30000, "requireHash": false,
                "enableCache": true, "cacheTtl": 3600}}})
}

#[tokio::test]
async fn the_reference_clients_bodies_run_unchanged() {
    let server = Server::start(&[]).await;
    let (status, result) = server.execute(&reference_cli_body("print(1)")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["stdout"], "1\n", "{result}");
    assert_eq!(result["exitCode"], 0);

    // Every other field of the reference's options, with values that cannot loosen the sandbox.
    let mut body = reference_cli_body("print(2)");
    let options = body["options"].as_object_mut().unwrap();
    for (field, value) in [
        ("readonlyRootFs", json!(true)),
        ("security", json!({"seccomp": "strict"})),
        ("audit", json!({"enabled": true, "trackResources": true})),
        ("poolStrategy", json!("secure")),
        ("poolSize", json!({"clean": 1, "dirty": 1})),
        ("image", Value::Null),
        ("logNetwork", json!(false)),
        ("pidsLimit", json!(64)),
        ("maxOutputSize", json!(1048576)),
        ("tmpSize", json!("64m")),
        ("sandboxSize", json!("64m")),
        ("secrets", json!({"TOKEN": "s3cr3t-value"})),
    ] {
        options.insert(field.into(), value);
    }
    body["request"]["agentFlags"] = json!("--model m");
    body["request"]["metadata"] = json!({"userId": "u1"});
    body["request"]["code"] = json!("import os\nprint(os.environ['TOKEN'])");
    let (status, result) = server.execute(&body).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["stdout"], "***\n", "{result}");

    // `poolSize` also comes as a plain number, and `mode` as persistent with a session.
    let mut body = reference_cli_body("x = 41");
    body["options"]["poolSize"] = json!(2);
    body["options"]["mode"] = json!("persistent");
    body["sessionId"] = json!("compat-mode");
    assert_eq!(server.execute(&body).await.0, 200);
    body["request"]["code"] = json!("print(x + 1)");
    let (_, result) = server.execute(&body).await;
    assert_eq!(result["stdout"], "42\n", "{result}");
}

#[tokio::test]
async fn fields_that_would_loosen_the_sandbox_are_refused_by_name_and_typos_stay_errors() {
    let server = Server::start(&[]).await;
    for (field, value, named) in [
        ("readonlyRootFs", json!(false), "readonlyRootFs"),
        (
            "security",
            json!({"seccomp": "unconfined"}),
            "security.seccomp",
        ),
        (
            "security",
            json!({"seccomp": "custom", "customProfilePath": "/etc/passwd"}),
            "security.seccomp",
        ),
        (
            "remoteCode",
            json!({"enabled": true, "blockedHosts": []}),
            "remoteCode",
        ),
    ] {
        let mut body = reference_cli_body("print(1)");
        body["options"][field] = value;
        let (status, result) = server.execute(&body).await;
        assert_eq!(status, 403, "{field}: {result}");
        assert!(
            result["error"].as_str().unwrap().contains(named),
            "{field}: {result}"
        );
    }
    for (place, typo) in [("options", "memoryLimt"), ("request", "stdinn")] {
        let mut body = reference_cli_body("print(1)");
        body[place][typo] = json!("1");
        let (status, result) = server.execute(&body).await;
        assert_eq!(status, 400, "{typo}: {result}");
        assert!(
            result["error"].as_str().unwrap().contains(typo),
            "{typo}: {result}"
        );
    }
}

#[tokio::test]
async fn node_buffer_files_are_written_byte_for_byte() {
    let server = Server::start(&[]).await;
    let mut body = reference_cli_body(
        "import hashlib\nfor p in ['/sandbox/a.txt', '/sandbox/sub/dir/b.bin']:\n    print(p, open(p, 'rb').read().hex())",
    );
    body["request"]["files"] = json!({
        "/sandbox/a.txt": {"type": "Buffer", "data": [104, 105, 10]},
        "/sandbox/sub/dir/b.bin": {"type": "Buffer", "data": [0, 1, 255, 128]},
    });
    let (status, result) = server.execute(&body).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["stdout"], "/sandbox/a.txt 68690a\n/sandbox/sub/dir/b.bin 0001ff80\n",
        "{result}"
    );
    // Text stays text; a Buffer with a byte out of range is a clear 400.
    body["request"]["files"] = json!({"/sandbox/a.txt": "plain", "/sandbox/sub/dir/b.bin": "x"});
    assert_eq!(server.execute(&body).await.0, 200);
    body["request"]["files"] = json!({"/sandbox/a.txt": {"type": "Buffer", "data": [256]}});
    let (status, result) = server.execute(&body).await;
    assert_eq!(status, 400, "{result}");
}

#[tokio::test]
async fn output_past_the_limit_is_cut_and_the_program_keeps_its_own_exit_code() {
    let server = Server::start(&[]).await;
    for _ in 0..8 {
        let mut body = reference_cli_body(
            "import sys\nprint('y' * 200000)\nprint('still running', file=sys.stderr)\nsys.exit(3)",
        );
        body["options"]["maxOutputSize"] = json!(1000);
        let (status, result) = server.execute(&body).await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["exitCode"], 3, "{result}");
        assert_eq!(result["truncated"], true);
        assert_eq!(result["status"], "output_limit");
        assert_eq!(result["stdout"].as_str().unwrap().len(), 1000);
        assert!(
            result["stderr"]
                .as_str()
                .unwrap()
                .starts_with("still running"),
            "{result}"
        );
    }
}

#[tokio::test]
async fn results_carry_resource_usage_for_the_run_alone() {
    let server = Server::start(&[]).await;
    let code = "import time\nx = bytearray(64 * 1024 * 1024)\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass";
    let (status, result) = server.execute(&reference_cli_body(code)).await;
    assert_eq!(status, 200, "{result}");
    let usage = &result["resourceUsage"];
    for field in [
        "cpuPercent",
        "memoryMB",
        "networkBytesIn",
        "networkBytesOut",
        "peakMemoryMB",
        "cpuTimeMs",
        "peakMemoryBytes",
    ] {
        assert!(usage[field].is_number(), "{field}: {usage}");
    }
    assert!(usage["cpuTimeMs"].as_u64().unwrap() >= 250, "{usage}");
    assert!(
        usage["peakMemoryBytes"].as_u64().unwrap() >= 64 * 1024 * 1024,
        "{usage}"
    );
    // The next run in the same warm container is measured on its own.
    let (_, small) = server.execute(&reference_cli_body("print(1)")).await;
    let usage = &small["resourceUsage"];
    assert!(
        usage["peakMemoryBytes"].as_u64().unwrap() < 64 * 1024 * 1024,
        "{usage}"
    );
    assert!(usage["cpuTimeMs"].as_u64().unwrap() < 250, "{usage}");
}

#[tokio::test]
async fn a_session_keeps_its_state_through_exit_and_restarts_after_a_crash() {
    let server = Server::start(&[]).await;
    let call = |code: &str| {
        let mut body = reference_cli_body(code);
        body["sessionId"] = json!("compat-exit");
        body
    };
    assert_eq!(server.execute(&call("x = 42")).await.0, 200);
    let (_, exited) = server.execute(&call("import sys\nsys.exit(3)")).await;
    assert_eq!(exited["exitCode"], 3, "{exited}");
    assert_eq!(exited["sessionRestarted"], false, "{exited}");
    let (_, kept) = server.execute(&call("print(x)")).await;
    assert_eq!(
        kept["stdout"], "42\n",
        "exit() ends the cell, not the state: {kept}"
    );

    for crash in [
        "import os\nos._exit(1)",
        "import ctypes\nctypes.string_at(0)",
    ] {
        assert_eq!(server.execute(&call("y = 1")).await.0, 200);
        let (_, crashed) = server.execute(&call(crash)).await;
        assert_eq!(crashed["sessionRestarted"], true, "{crash}: {crashed}");
        let (_, after) = server.execute(&call("print('y' in dir())")).await;
        assert_eq!(after["stdout"], "False\n", "{crash}: {after}");
    }
}

/// Opens `/execute/ws` with `key` (None: no Authorization header).
async fn connect(
    server: &Server,
    key: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = server.base.replacen("http", "ws", 1) + "/execute/ws";
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// Reads messages until `until` accepts one (returned with everything before it), or the close.
async fn read_until(socket: &mut Socket, until: impl Fn(&Value) -> bool) -> (Vec<Value>, bool) {
    let mut seen = Vec::new();
    let read = async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    let done = until(&event);
                    seen.push(event);
                    if done {
                        return true;
                    }
                }
                Message::Close(_) => return false,
                _ => {}
            }
        }
        false
    };
    let matched = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or(false);
    (seen, matched)
}

/// Reads until the program's stdout so far contains `needle` (output may come in any pieces).
async fn read_until_stdout(socket: &mut Socket, needle: &str) -> (Vec<Value>, bool) {
    let mut stdout = String::new();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] == "stdout" {
                    stdout.push_str(event["data"].as_str().unwrap());
                }
                seen.push(event);
                if stdout.contains(needle) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    (seen, found)
}

fn stdout_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_websocket_streams_a_run_with_live_stdin_and_signals() {
    let server = Server::start(&[]).await;

    // Live stdin: the program answers each line as it arrives.
    let mut socket = connect(&server, Some(KEY)).await.unwrap();
    let mut execute = reference_cli_body(
        "import sys\nfor i in range(2):\n    line = sys.stdin.readline()\n    print('got', line.strip(), flush=True)\nprint('eof' if sys.stdin.read() == '' else 'more')",
    );
    execute["type"] = json!("execute");
    send(&mut socket, execute).await;
    send(&mut socket, json!({"type": "stdin", "data": "one\n"})).await;
    let (events, found) = read_until_stdout(&mut socket, "got one\n").await;
    assert!(found, "{events:?}");
    send(&mut socket, json!({"type": "stdin", "data": "two\n"})).await;
    send(&mut socket, json!({"type": "stdin", "eof": true})).await;
    let (rest, _) = read_until(&mut socket, |e| e["type"] == "result").await;
    assert_eq!(stdout_of(&rest), "got two\neof\n", "{rest:?}");
    let result = rest.last().unwrap();
    assert_eq!(result["result"]["exitCode"], 0, "{result}");
    assert!(rest.iter().any(|e| e["type"] == "exit" && e["data"] == "0"));
    // Then the server closes with 1000.
    match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a close 1000, got {other:?}"),
    }

    // SIGINT reaches a program that catches it; an unknown type is an error, the socket stays open.
    let mut socket = connect(&server, Some(KEY)).await.unwrap();
    let mut execute = reference_cli_body(
        "import signal, time\ncaught = []\nsignal.signal(signal.SIGINT, lambda *a: caught.append(1))\nprint('ready', flush=True)\nwhile not caught: time.sleep(0.01)\nprint('caught SIGINT')",
    );
    execute["type"] = json!("execute");
    send(&mut socket, execute).await;
    let (events, found) = read_until_stdout(&mut socket, "ready\n").await;
    assert!(found, "{events:?}");
    send(&mut socket, json!({"type": "bogus"})).await;
    let (events, found) = read_until(&mut socket, |e| e["type"] == "error").await;
    assert!(found, "{events:?}");
    assert!(events.last().unwrap()["data"]
        .as_str()
        .unwrap()
        .contains("Unknown message type: bogus"));
    send(&mut socket, json!({"type": "signal", "signal": "SIGINT"})).await;
    let (rest, found) = read_until(&mut socket, |e| e["type"] == "result").await;
    assert!(found, "{rest:?}");
    assert_eq!(stdout_of(&rest), "caught SIGINT\n", "{rest:?}");

    // Invalid JSON: an error message, then close 1003.
    let mut socket = connect(&server, Some(KEY)).await.unwrap();
    socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    let (events, _) = read_until(&mut socket, |_| false).await;
    assert_eq!(events[0]["data"], "Invalid JSON message", "{events:?}");

    // An execution error (a refused option) is an error message and a normal close.
    let mut socket = connect(&server, Some(KEY)).await.unwrap();
    let mut execute = reference_cli_body("print(1)");
    execute["type"] = json!("execute");
    execute["options"]["readonlyRootFs"] = json!(false);
    send(&mut socket, execute).await;
    let (events, _) = read_until(&mut socket, |_| false).await;
    assert!(
        events[0]["type"] == "error"
            && events[0]["data"]
                .as_str()
                .unwrap()
                .contains("readonlyRootFs"),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_websocket_checks_the_key_on_upgrade_and_a_closed_socket_kills_its_run() {
    let server = Server::start(&[
        ("ISOL8_MAX_CONCURRENT", "1"),
        ("ISOL8_QUEUE_TIMEOUT_MS", "10000"),
    ])
    .await;
    for (key, status) in [(None, 401), (Some("wrong-key-0123456789"), 403)] {
        match connect(&server, key).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status)
            }
            other => panic!("expected {status}, got {other:?}"),
        }
    }
    // The only slot is held by a run that would sleep a minute; closing its socket frees it.
    let mut socket = connect(&server, Some(KEY)).await.unwrap();
    let mut execute =
        reference_cli_body("import time\nprint('sleeping', flush=True)\ntime.sleep(60)");
    execute["type"] = json!("execute");
    execute["options"]["timeoutMs"] = json!(120000);
    execute["request"]["timeoutMs"] = json!(120000);
    send(&mut socket, execute).await;
    let (events, found) = read_until_stdout(&mut socket, "sleeping\n").await;
    assert!(found, "{events:?}");
    drop(socket);
    let started = std::time::Instant::now();
    let (status, result) = server.execute(&reference_cli_body("print('next')")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["stdout"], "next\n");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn network_logs_have_the_reference_shape() {
    let server = Server::start(&[("ISOL8_ALLOWED_NETWORKS", "none,filtered")]).await;
    let code = "import urllib.request\nfor url in ['http://blocked.invalid/some/path', 'https://blocked.invalid/x']:\n    try:\n        urllib.request.urlopen(url, timeout=5)\n    except Exception as e:\n        print(type(e).__name__)";
    let mut body = reference_cli_body(code);
    body["options"]["network"] = json!("filtered");
    body["options"]["networkFilter"] =
        json!({"whitelist": ["^allowed\\.invalid$"], "blacklist": []});
    body["options"]["logNetwork"] = json!(true);
    let (status, result) = server.execute(&body).await;
    assert_eq!(status, 200, "{result}");
    let logs = result["networkLogs"].as_array().expect("networkLogs");
    assert_eq!(logs.len(), 2, "{logs:?}");
    let plain = &logs[0];
    assert_eq!(plain["method"], "GET");
    assert_eq!(plain["host"], "blocked.invalid");
    assert_eq!(plain["path"], "/some/path");
    assert_eq!(plain["action"], "BLOCK");
    assert!(plain["timestamp"].as_str().unwrap().contains('T'));
    assert!(plain["durationMs"].is_number());
    assert_eq!(plain["reason"], "not in the allow list");
    let tunnel = &logs[1];
    assert_eq!(tunnel["method"], "CONNECT");
    assert!(tunnel.get("path").is_some_and(Value::is_null), "{tunnel}");
}

#[tokio::test]
async fn a_servers_cleanup_leaves_another_servers_sessions_on_the_same_engine() {
    let a = Server::start(&[]).await;
    let b = Server::start(&[]).await;
    for server in [&a, &b] {
        let mut body = reference_cli_body("x = 'kept'");
        body["sessionId"] = json!("shared-name");
        assert_eq!(server.execute(&body).await.0, 200);
    }
    let cleanup = a
        .http
        .post(format!("{}/cleanup", a.base))
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);
    let cleanup: Value = cleanup.json().await.unwrap();
    assert_eq!(cleanup["ok"], true, "{cleanup}");
    assert_eq!(cleanup["sessions"]["removed"], 1, "{cleanup}");
    for part in ["sessions", "containers"] {
        assert!(cleanup[part]["failed"].is_number() && cleanup[part]["errors"].is_array());
    }
    let mut body = reference_cli_body("print(x)");
    body["sessionId"] = json!("shared-name");
    let (_, on_b) = b.execute(&body).await;
    assert_eq!(
        on_b["stdout"], "kept\n",
        "B's session survived A's cleanup: {on_b}"
    );
    let (_, on_a) = a.execute(&body).await;
    assert_eq!(on_a["exitCode"], 1, "A's session is gone: {on_a}");
}

/// A web server of the test's own on loopback: answers each path with a fixed response.
async fn code_server(routes: Vec<(&'static str, String)>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let answer = routes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
                    });
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn redirect(to: &str) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn remote_code_is_off_by_default_and_fetched_under_the_servers_policy() {
    let source = "print('fetched from afar')";
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source));
    let port = code_server(vec![
        ("/code.py", ok(source)),
        ("/moved", redirect("/code.py")),
        ("/to-private", redirect("http://10.255.0.1/code.py")),
        ("/to-unnamed", redirect("http://127.0.0.2:1/code.py")),
    ])
    .await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let request = |path: &str, hash: Option<&str>| {
        let mut body = reference_cli_body("unused");
        let request = body["request"].as_object_mut().unwrap();
        request.remove("code");
        request.insert("codeUrl".into(), json!(url(path)));
        request.insert("allowInsecureCodeUrl".into(), json!(true));
        if let Some(hash) = hash {
            request.insert("codeHash".into(), json!(hash));
        }
        body
    };

    let off = Server::start(&[]).await;
    let (status, result) = off.execute(&request("/code.py", None)).await;
    assert_eq!(status, 403, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("remoteCode"),
        "{result}"
    );
    drop(off);

    let on = Server::start(&[
        ("ISOL8_REMOTE_CODE_ENABLED", "true"),
        ("ISOL8_REMOTE_CODE_ALLOWED_SCHEMES", "https,http"),
        // 127.0.0.1 named exactly may be fetched from; `^10\..*$` matches 10.255.0.1 but names
        // no address, so that private address stays closed.
        (
            "ISOL8_REMOTE_CODE_ALLOWED_HOSTS",
            "^127\\.0\\.0\\.1$,^10\\..*$",
        ),
    ])
    .await;
    for (path, hash) in [
        ("/code.py", None),
        ("/code.py", Some(hash.as_str())),
        ("/moved", None),
    ] {
        let (status, result) = on.execute(&request(path, hash)).await;
        assert_eq!(status, 200, "{path}: {result}");
        assert_eq!(result["stdout"], "fetched from afar\n", "{path}: {result}");
    }
    let wrong = "0".repeat(64);
    let (status, result) = on.execute(&request("/code.py", Some(&wrong))).await;
    assert_eq!(status, 400, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("codeHash"),
        "{result}"
    );
    // Redirects are checked like the first URL: a private address, or one no rule names.
    for path in ["/to-private", "/to-unnamed"] {
        let (status, result) = on.execute(&request(path, None)).await;
        assert_eq!(status, 403, "{path}: {result}");
    }
    // http needs the request's consent too; a code and a codeUrl together are a 400.
    let mut insecure = request("/code.py", None);
    insecure["request"]["allowInsecureCodeUrl"] = json!(false);
    assert_eq!(on.execute(&insecure).await.0, 403);
    let mut both = request("/code.py", None);
    both["request"]["code"] = json!("print(1)");
    assert_eq!(on.execute(&both).await.0, 400);
    drop(on);

    // A name that resolves to a private address is refused when connecting, whatever the rules
    // say of the name.
    let by_name = Server::start(&[
        ("ISOL8_REMOTE_CODE_ENABLED", "true"),
        ("ISOL8_REMOTE_CODE_ALLOWED_SCHEMES", "http"),
        ("ISOL8_REMOTE_CODE_ALLOWED_HOSTS", "^localhost$"),
        ("ISOL8_REMOTE_CODE_BLOCKED_HOSTS", "^nothing\\.invalid$"),
    ])
    .await;
    let mut body = request("/code.py", None);
    body["request"]["codeUrl"] = json!(format!("http://localhost:{port}/code.py"));
    let (status, result) = by_name.execute(&body).await;
    assert_eq!(status, 403, "{result}");
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{result}"
    );
}
