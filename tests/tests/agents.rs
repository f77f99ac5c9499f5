//! What AI agents use: MCP over Streamable HTTP (`/mcp`) and stdio (`isol8 mcp`, embedded and
//! `--host`), driven by the official MCP Python SDK (`tests/mcp/agent.py`, from the suite's venv),
//! and code-interpreter results on the wire (`results`, `display` events).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{binary, Server, KEY};
use serde_json::{json, Value};

/// The suite's python venv (scripts/test.sh installs the pinned MCP SDK into it).
fn python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let python = target.join("py-tools/bin/python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "{} has no MCP SDK: scripts/test.sh installs it (or: python3 -m venv target/py-tools && \
         target/py-tools/bin/pip install mcp==2.3.0)",
        python.display()
    );
    python
}

/// Runs `tests/mcp/agent.py` with `args` and returns its JSON report.
fn agent(args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/agent.py");
    let started = Instant::now();
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the agent script runs");
    assert!(
        out.status.success(),
        "agent.py {args:?} failed after {:?}:\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent.py printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn text_of(call: &Value) -> String {
    call["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "text")
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

fn images_of(call: &Value) -> Vec<&Value> {
    call["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "image")
        .collect()
}

/// The checks of the `tools` scenario, the same over every transport.
fn check_tools_report(report: &Value, session: &str) {
    assert_eq!(report["server"], "isol8");
    let tools = report["tools"].as_object().unwrap();
    let names: Vec<&str> = tools.keys().map(String::as_str).collect();
    for name in [
        "run_code",
        "run_command",
        "write_file",
        "read_file",
        "list_sessions",
        "close_session",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    let run_code = &tools["run_code"]["schema"];
    assert_eq!(run_code["required"], json!(["code"]));
    assert!(run_code["properties"]["sessionId"]["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(tools["read_file"]["readOnly"], true);
    assert_eq!(tools["close_session"]["destructive"], true);

    // An assignment returns no result; the next call sees its variable.
    let assign = &report["assign"];
    assert_eq!(assign["isError"], false, "{assign}");
    assert!(assign["structured"].get("results").is_none(), "{assign}");
    let expr = &report["expr"];
    assert_eq!(expr["isError"], false, "{expr}");
    assert_eq!(expr["structured"]["results"], json!([{"text/plain": "42"}]));
    assert!(
        text_of(expr).contains("first\n") && text_of(expr).contains("42"),
        "{expr}"
    );
    assert!(
        report["progress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().is_some_and(|m| m.contains("first"))),
        "stdout as progress: {}",
        report["progress"]
    );
    let html = &report["html"]["structured"]["results"][0];
    assert_eq!(html["text/html"], "<table><tr><td>1</td></tr></table>");
    let image = &report["image"];
    assert_eq!(
        images_of(image),
        [&json!({"type": "image", "mimeType": "image/png", "bytes": 69})]
    );

    // Errors are tool errors whose text says what happened.
    assert_eq!(report["exit"]["isError"], true);
    assert!(
        text_of(&report["exit"]).contains("bye")
            && text_of(&report["exit"]).contains("exit code 3")
    );
    assert_eq!(report["timeout"]["isError"], true);
    assert!(text_of(&report["timeout"]).contains("timeout"));
    assert_eq!(report["badRuntime"]["isError"], true);
    assert!(text_of(&report["badRuntime"]).contains("cobol"));
    assert_eq!(report["overPolicy"]["isError"], true);
    assert!(text_of(&report["overPolicy"]).contains("timeoutMs"));

    // A file written, read back, and seen by code in the session.
    assert_eq!(report["write"]["isError"], false, "{}", report["write"]);
    assert_eq!(text_of(&report["read"]), "hello from the agent");
    assert!(text_of(&report["readInCode"]).contains("HELLO FROM THE AGENT"));
    assert!(text_of(&report["command"]).contains("42"));
    let listed = &report["list"]["structured"]["sessions"];
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == session),
        "{listed}"
    );
    assert_eq!(report["close"]["structured"]["closed"], true);
    assert!(!report["listAfter"]["structured"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == session));
}

#[tokio::test]
async fn mcp_over_streamable_http_with_the_python_sdk() {
    let server = Server::start(&[]).await;
    let url = format!("{}/mcp", server.base);
    let report = agent(&["--url", &url, "--key", KEY, "--session", "mcp-http"]);
    check_tools_report(&report, "mcp-http");
}

#[tokio::test]
async fn mcp_over_stdio_embedded_and_remote_with_the_python_sdk() {
    let isol8 = binary("isol8");
    let isol8 = isol8.to_str().unwrap();
    let report = agent(&["--session", "mcp-stdio-local", "--stdio", isol8, "mcp"]);
    check_tools_report(&report, "mcp-stdio-local");

    let server = Server::start(&[]).await;
    let report = agent(&[
        "--session",
        "mcp-stdio-remote",
        "--stdio",
        isol8,
        "mcp",
        "--host",
        &server.base,
        "--key",
        KEY,
    ]);
    check_tools_report(&report, "mcp-stdio-remote");
}

/// POSTs one JSON-RPC message to `/mcp` with `key`: the HTTP status and the JSON answer.
async fn mcp_call(server: &Server, key: Option<&str>, message: Value) -> (u16, Value) {
    let mut request = server
        .http
        .post(format!("{}/mcp", server.base))
        .header("accept", "application/json, text/event-stream")
        .json(&message);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn mcp_needs_the_key_and_its_sessions_are_the_keys() {
    let server = Server::start(&[]).await;
    let (status, body) = mcp_call(&server, None, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = mcp_call(&server, Some("wrong-key-0123456789"), json!({})).await;
    assert_eq!(status, 403);
    let report = agent(&[
        "--scenario",
        "nokey",
        "--url",
        &format!("{}/mcp", server.base),
    ]);
    assert!(report["error"].is_string(), "{report}");

    // A session made through MCP is the one GET /sessions shows for the same key.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run_code", "arguments": {"code": "y = 1", "sessionId": "mcp-shared"}}});
    let (status, answer) = mcp_call(&server, Some(KEY), call).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let sessions: Value = server
        .http
        .get(format!("{}/sessions", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "mcp-shared"),
        "{sessions}"
    );
    let (_, answer) = mcp_call(
        &server,
        Some(KEY),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "close_session", "arguments": {"sessionId": "mcp-shared"}}}),
    )
    .await;
    assert_eq!(answer["result"]["structuredContent"]["closed"], true);
}

/// Builds (or finds, cached by recipe) the python image holding matplotlib.
fn matplotlib_image() {
    let out = Command::new(binary("isol8"))
        .args(["build", "--base", "python", "--install", "matplotlib"])
        .stdin(Stdio::null())
        .output()
        .expect("isol8 build runs");
    assert!(
        out.status.success(),
        "isol8 build --install matplotlib failed (PyPI through ISOL8_EXTRA_CA_CERTS?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn matplotlib_figures_come_back_as_images_in_cells_and_one_shot_runs() {
    matplotlib_image();
    let server = Server::start(&[]).await;
    let url = format!("{}/mcp", server.base);
    let report = agent(&[
        "--scenario",
        "matplotlib",
        "--url",
        &url,
        "--key",
        KEY,
        "--session",
        "mcp-mpl",
    ]);
    // A figure still open at the cell's end.
    let cell = &report["cell"];
    assert_eq!(cell["isError"], false, "{cell}");
    assert!(text_of(cell).contains("plotted"), "{cell}");
    let images = images_of(cell);
    assert_eq!(images.len(), 1, "{cell}");
    assert_eq!(images[0]["mimeType"], "image/png");
    assert!(images[0]["bytes"].as_u64().unwrap() > 1000, "{cell}");
    // A script: one figure at plt.show(), one still open at exit, after its last output.
    let one_shot = &report["oneShot"];
    assert_eq!(one_shot["isError"], false, "{one_shot}");
    assert_eq!(images_of(one_shot).len(), 2, "{one_shot}");
    let results = one_shot["structured"]["results"].as_array().unwrap();
    assert!(results
        .iter()
        .all(|r| r["text/plain"].as_str().unwrap().starts_with("<Figure")));
}

/// The stdout and display events of one streamed call, in order, as ("stdout"|"display", data).
async fn streamed(server: &Server, body: Value) -> Vec<(String, String)> {
    let text = server
        .http
        .post(format!("{}/execute/stream", server.base))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|e| e["type"] == "stdout" || e["type"] == "display")
        .fold(Vec::new(), |mut events, e| {
            let (kind, data) = (e["type"].as_str().unwrap(), e["data"].as_str().unwrap());
            // Output may come in any number of pieces: consecutive stdout events are one.
            match events.last_mut() {
                Some((last, text)) if last == "stdout" && kind == "stdout" => text.push_str(data),
                _ => events.push((kind.to_string(), data.to_string())),
            }
            events
        })
}

#[tokio::test]
async fn results_stream_in_order_with_stdout_and_come_back_in_the_result() {
    let server = Server::start(&[]).await;
    let cell = json!({"request": {"runtime": "python",
        "code": "print('a')\ndisplay('shown')\nprint('b')\n6 * 7"}, "sessionId": "results-order"});
    let events = streamed(&server, cell).await;
    let display = |text: &str| {
        (
            "display".to_string(),
            json!({"text/plain": text}).to_string(),
        )
    };
    assert_eq!(
        events,
        [
            ("stdout".to_string(), "a\n".to_string()),
            display("'shown'"),
            ("stdout".to_string(), "b\n".to_string()),
            display("42"),
        ]
    );
    let (status, result) = server
        .execute(
            &json!({"request": {"runtime": "python", "code": "z = 6 * 7"},
            "sessionId": "results-order"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(result.get("results").is_none(), "{result}");
    let (_, result) = server
        .execute(&json!({"request": {"runtime": "python", "code": "z;"},
            "sessionId": "results-order"}))
        .await;
    assert!(
        result.get("results").is_none(),
        "a trailing ; hides the value: {result}"
    );
    let (_, result) = server
        .execute(&json!({"request": {"runtime": "python", "code": "z"},
            "sessionId": "results-order"}))
        .await;
    assert_eq!(result["results"], json!([{"text/plain": "42"}]));

    // node: the last value as the REPL prints it, plus JSON for plain data.
    let (_, result) = server
        .execute(&json!({"request": {"runtime": "node",
            "code": "const o = {a: [1, 2]}; o"}, "sessionId": "results-node"}))
        .await;
    assert_eq!(
        result["results"],
        json!([{"text/plain": "{ a: [ 1, 2 ] }", "application/json": {"a": [1, 2]}}]),
        "{result}"
    );
    // A one-shot python run keeps script semantics: no last-expression value.
    let (_, result) = server
        .execute(&json!({"request": {"runtime": "python", "code": "6 * 7"}}))
        .await;
    assert!(result.get("results").is_none(), "{result}");
    for id in ["results-order", "results-node"] {
        server
            .http
            .delete(format!("{}/session/{id}", server.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}
