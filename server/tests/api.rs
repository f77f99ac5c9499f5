//! HTTP API tests: a real server on loopback, a real HTTP client (reqwest), real Docker.

use std::time::{Duration, Instant};

use futures::StreamExt;
use isol8_server::ServerConfig;
use serde_json::{json, Value};

mod common;

use common::{config, error_body, Server, KEY};

#[tokio::test]
async fn health_needs_no_key_and_every_protected_path_refuses_without_one() {
    let server = Server::start(config()).await;
    let health: Value = server
        .http
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let spec: Value = server
        .http
        .get(server.url("/openapi.json"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 6, "{paths:?}");
    let mut checked = 0;
    let mut public = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // The spec says which operations need the key; only the probes may go without.
            if operation.get("security").is_none() {
                public.push(path.as_str());
                continue;
            }
            let no_key = server
                .http
                .request(method.clone(), server.url(path))
                .send()
                .await
                .unwrap();
            let (status, body) = error_body(no_key).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            let wrong = server
                .http
                .request(method.clone(), server.url(path))
                .bearer_auth("wrong-key")
                .send()
                .await
                .unwrap();
            let (status, _) = error_body(wrong).await;
            assert_eq!(status, 403, "{method} {path}");
            checked += 1;
        }
    }
    assert_eq!(public, ["/health", "/ready"]);
    assert!(checked >= 5);
    let spec_no_key = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(spec_no_key.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_served_one() {
    let generated = serde_json::to_value(isol8_server::openapi()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    if std::env::var_os("ISOL8_UPDATE_OPENAPI").is_some() {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&generated).unwrap() + "\n",
        )
        .unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed, generated,
        "openapi/openapi.json is stale; regenerate with ISOL8_UPDATE_OPENAPI=1 cargo test -p isol8-server --test api"
    );
}

#[tokio::test]
async fn execute_returns_the_result() {
    let server = Server::start(config()).await;
    let response = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "print(2 ** 10)"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["stdout"], "1024\n");
    assert_eq!(result["exitCode"], 0);
    assert_eq!(result["status"], "completed");
    assert_eq!(result["runtime"], "python");
    server.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_with_the_error_body() {
    let server = Server::start(config()).await;
    let cases: Vec<(&str, String)> = vec![
        ("malformed json", "{not json".into()),
        ("missing request", "{}".into()),
        ("unknown field", json!({"request": {"runtime": "python", "code": "1", "bogus": 1}}).to_string()),
        ("wrong type", json!({"request": {"runtime": "python", "code": 5}}).to_string()),
        ("unknown runtime", json!({"request": {"runtime": "cobol", "code": "1"}}).to_string()),
        ("empty code", json!({"request": {"runtime": "python", "code": "  "}}).to_string()),
        ("code and cmd", json!({"request": {"runtime": "python", "code": "1", "cmd": "ls"}}).to_string()),
        ("bad size", json!({"request": {"runtime": "python", "code": "1"}, "options": {"memoryLimit": "12xb"}}).to_string()),
        ("workdir escape", json!({"request": {"runtime": "python", "code": "1", "workdir": "/etc"}}).to_string()),
        ("zero pids", json!({"request": {"runtime": "python", "code": "1"}, "options": {"pidsLimit": 0}}).to_string()),
    ];
    for (name, body) in cases {
        let response = server
            .http
            .post(server.url("/execute"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = error_body(response).await;
        assert_eq!(status, 400, "{name}: {body}");
    }
    // A cleanup body must be an object: serde alone would read `[]` as "no options" and go ahead.
    for body in ["[]", "[true]", "true"] {
        let response = server
            .http
            .post(server.url("/cleanup"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = error_body(response).await;
        assert_eq!(status, 400, "cleanup {body}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies_get_the_error_body() {
    let server = Server::start(ServerConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let r = server
        .http
        .get(server.url("/nope"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(r).await.0, 404);
    let r = server
        .http
        .get(server.url("/execute"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(r).await.0, 405);
    let big = json!({"request": {"runtime": "python", "code": "x".repeat(10_000)}});
    let r = server.post("/execute", big).await;
    assert_eq!(error_body(r).await.0, 413);
    server.stop().await;
}

#[tokio::test]
async fn asking_for_more_than_the_policy_allows_is_403_naming_the_limit() {
    let server = Server::start(config()).await;
    let r = server
        .post("/execute", json!({"request": {"runtime": "python", "code": "1"}, "options": {"memoryLimit": "64g"}}))
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(status, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("memoryLimit 64g exceeds"),
        "{body}"
    );
    let r = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "1"}, "options": {"network": "host"}}),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("host"), "{body}");
    server.stop().await;
}

/// Reads SSE frames from a response as (event name, data JSON, time since start).
async fn read_sse(response: reqwest::Response, started: Instant) -> Vec<(String, Value, Duration)> {
    let mut frames = Vec::new();
    let mut buf = String::new();
    let mut bytes = response.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                frames.push((
                    name,
                    serde_json::from_str(&data).unwrap(),
                    started.elapsed(),
                ));
            }
        }
    }
    frames
}

#[tokio::test]
async fn the_stream_is_framed_and_delivers_output_as_it_is_produced() {
    let server = Server::start(config()).await;
    let code = "import time, sys\nprint('first')\ntime.sleep(2)\nprint('second')\nsys.exit(3)";
    let started = Instant::now();
    let response = server
        .post(
            "/execute/stream",
            json!({"request": {"runtime": "python", "code": code}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let frames = read_sse(response, started).await;
    for (name, data, _) in &frames {
        assert_eq!(data["type"], name.as_str());
    }
    // The program may write a line in several chunks; what matters is when each line arrives.
    let (output, ending) = frames.split_at(frames.len() - 2);
    assert!(
        output
            .iter()
            .all(|f| f.0 == "stdout" && f.1["phase"] == "code"),
        "{frames:?}"
    );
    let text_until = |limit: Duration| -> String {
        output
            .iter()
            .filter(|f| f.2 < limit)
            .map(|f| f.1["data"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        text_until(Duration::from_millis(1800)),
        "first\n",
        "{frames:?}"
    );
    assert_eq!(text_until(Duration::MAX), "first\nsecond\n", "{frames:?}");
    assert_eq!(ending[0].0, "exit");
    assert_eq!(ending[0].1["data"], "3");
    assert_eq!(ending[1].0, "result");
    let result = &ending[1].1["result"];
    assert_eq!(result["status"], "completed");
    assert_eq!(result["exitCode"], 3);
    assert_eq!(result["truncated"], false);
    server.stop().await;
}

#[tokio::test]
async fn the_stream_alias_and_timeouts_report_the_same_status() {
    let server = Server::start(config()).await;
    let body =
        json!({"request": {"runtime": "bash", "code": "echo hi; sleep 30", "timeoutMs": 1000}});
    let frames = read_sse(server.post("/stream", body).await, Instant::now()).await;
    let names: Vec<&str> = frames.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, ["stdout", "error", "exit", "result"], "{frames:?}");
    assert_eq!(frames[1].1["data"], "EXECUTION TIMED OUT");
    assert_eq!(frames[2].1["data"], "137");
    assert_eq!(frames[3].1["result"]["status"], "timeout");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_kills_its_run_and_frees_its_container() {
    let server = Server::start(ServerConfig {
        max_concurrent: 1,
        max_queue: 0,
        ..config()
    })
    .await;
    let body = json!({"request": {"runtime": "python", "code": "import time\nprint('x', flush=True)\ntime.sleep(60)"}});
    let response = server.post("/execute/stream", body).await;
    let mut bytes = response.bytes_stream();
    let _ = bytes.next().await;
    // While it runs, the only slot is taken: the next request is refused at once.
    let busy = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "print(1)"}}),
        )
        .await;
    assert_eq!(busy.status(), 429);
    assert!(busy.headers().contains_key("retry-after"));
    drop(bytes);
    // The slot comes back once the run is killed.
    let started = Instant::now();
    loop {
        let r = server
            .post(
                "/execute",
                json!({"request": {"runtime": "python", "code": "print(1)"}}),
            )
            .await;
        if r.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn docker_down_is_503_and_the_server_keeps_answering() {
    // A socket where nothing listens: bound once, then closed.
    let path = std::env::temp_dir().join(format!("isol8-no-docker-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let address = format!("unix://{}", path.display());
    let server = Server::start_with(config(), Some(&address)).await;
    let r = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "print(1)"}}),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Docker"), "{body}");
    let r = server
        .http
        .get(server.url("/ready"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_body(r).await.0, 503);
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn ready_when_images_exist_and_shutdown_leaves_no_containers() {
    let server = Server::start(ServerConfig {
        pool_size: 1,
        ..config()
    })
    .await;
    let r = server
        .http
        .get(server.url("/ready"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .post(
            "/execute",
            json!({"request": {"runtime": "bash", "code": "echo ok"}}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["stdout"], "ok\n");
    let instance = server.instance.clone();
    server.stop().await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("isol8.instance={instance}")],
    )]);
    let left = docker
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn metrics_count_the_runs_that_used_a_pre_started_interpreter() {
    let server = Server::start(config()).await;
    let metrics = || async {
        let response = server
            .http
            .get(server.url("/metrics"))
            .bearer_auth(KEY)
            .send();
        response.await.unwrap().text().await.unwrap()
    };
    let python = json!({"request": {"runtime": "python", "code": "print(1)"}});
    // The first run gets a fresh container (no warm pool here); its reset leaves the next run's
    // interpreter started, which the second run, once the container is back, uses.
    assert_eq!(server.post("/execute", python.clone()).await.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !metrics()
        .await
        .lines()
        .any(|l| l == "isol8_pool_ready_containers 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics()
        .await
        .lines()
        .any(|l| l == "isol8_prestarted_runs_total 0"));
    assert_eq!(server.post("/execute", python).await.status(), 200);
    let text = metrics().await;
    assert!(
        text.lines().any(|l| l == "isol8_prestarted_runs_total 1"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_executions_and_requests_by_route() {
    let server = Server::start(config()).await;
    let ok = server
        .post(
            "/execute",
            json!({"request": {"runtime": "bash", "code": "echo hi"}}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    let timed_out = server
        .post(
            "/execute",
            json!({"request": {"runtime": "bash", "code": "sleep 5", "timeoutMs": 300}}),
        )
        .await;
    assert_eq!(timed_out.status(), 200);
    let unknown = server.post("/no/such/route", json!({})).await;
    assert_eq!(unknown.status(), 404);

    let response = server
        .http
        .get(server.url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        r#"isol8_executions_total{runtime="bash",status="completed"} 1"#,
        r#"isol8_executions_total{runtime="bash",status="timeout"} 1"#,
        r#"isol8_execution_duration_seconds_count{runtime="bash"} 2"#,
        r#"isol8_http_requests_total{route="/execute",method="POST",status="200"} 2"#,
        r#"isol8_http_requests_total{route="unmatched",method="POST",status="404"} 1"#,
        "# TYPE isol8_pool_ready_containers gauge",
        "isol8_sessions_active 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_image_name_is_the_callers_error() {
    let server = Server::start(config()).await;
    let r = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": "1"}, "options": {"image": "Not/A:Valid:Image"}}),
        )
        .await;
    let (status, body) = error_body(r).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Not/A:Valid:Image"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_servers_network_lists_join_the_requests_and_its_deny_wins() {
    let server = Server::start(ServerConfig {
        allowed_networks: vec![
            isol8_api::NetworkMode::None,
            isol8_api::NetworkMode::Filtered,
        ],
        default_network: isol8_api::NetworkMode::Filtered,
        network_deny: vec![r"^example\.org$".into()],
        ..config()
    })
    .await;
    let code = "import os, urllib.request\nprint(bool(os.environ.get('HTTP_PROXY')))\ntry:\n    urllib.request.urlopen('http://example.org/', timeout=5)\nexcept Exception as e:\n    print('403' in str(e))";
    let r = server
        .post(
            "/execute",
            json!({"request": {"runtime": "python", "code": code},
                   "options": {"networkFilter": {"whitelist": ["^example\\.org$"]}, "logNetwork": true}}),
        )
        .await;
    let result: Value = r.json().await.unwrap();
    assert_eq!(result["stdout"], "True\nTrue\n", "{result}");
    assert_eq!(
        result["networkLogs"][0]["reason"], "denied by rule",
        "{result}"
    );
    server.stop().await;
}

#[tokio::test]
async fn network_logs_also_stream_as_events() {
    let server = Server::start(ServerConfig {
        allowed_networks: vec![
            isol8_api::NetworkMode::None,
            isol8_api::NetworkMode::Filtered,
        ],
        ..config()
    })
    .await;
    let code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://blocked.example/', timeout=5)\nexcept Exception:\n    pass\nimport time\ntime.sleep(0.5)";
    let response = server
        .post(
            "/execute/stream",
            json!({"request": {"runtime": "python", "code": code},
                   "options": {"network": "filtered", "logNetwork": true}}),
        )
        .await;
    let frames = read_sse(response, Instant::now()).await;
    let network: Vec<&Value> = frames
        .iter()
        .filter(|f| f.0 == "network")
        .map(|f| &f.1)
        .collect();
    assert_eq!(network.len(), 1, "{frames:?}");
    let entry: Value = serde_json::from_str(network[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(entry["host"], "blocked.example");
    assert_eq!(entry["action"], "BLOCK");
    let result = &frames.last().unwrap().1["result"];
    assert_eq!(
        result["networkLogs"][0]["host"], "blocked.example",
        "{result}"
    );
    server.stop().await;
}
