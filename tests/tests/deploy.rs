//! Deployment tests: the server's container image (built from the host's binaries on isol8's own
//! bootstrapped base) running code against the host's engine, and two replicas behind a real nginx
//! configured like the Kubernetes ingress. Uses the binaries `cargo build` made (the test command
//! builds them first).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use isol8_e2e::{binary, free_port, spawn_listening, Killed};
use serde_json::{json, Value};

const KEY: &str = "deploy-test-key-0123456789";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

async fn wait_healthy(base: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} did not become healthy");
}

async fn execute(base: &str, body: Value) -> (String, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/execute"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let instance = response.headers()["x-isol8-instance"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.status(), 200);
    (instance, response.json().await.unwrap())
}

#[tokio::test]
async fn the_server_image_built_from_host_binaries_runs_code_through_the_host_engine() {
    let rootfs = String::from_utf8_lossy(
        &docker(&[
            "images",
            "--filter",
            "label=isol8.kind=rootfs",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
        .stdout,
    )
    .lines()
    .next()
    .expect("the bootstrapped base exists (isol8 setup)")
    .to_string();
    let context = tempfile::tempdir().unwrap();
    for name in ["isol8-server", "isol8"] {
        std::fs::copy(binary(name), context.path().join(name)).unwrap();
    }
    let dockerfile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile.local");
    let tag = format!("isol8-server-test:{}", std::process::id());
    let build = docker(&[
        "build",
        "-q",
        "-f",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        &format!("BASE={rootfs}"),
        "--label",
        "isol8.managed=true",
        "-t",
        &tag,
        context.path().to_str().unwrap(),
    ]);
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // The server in its container drives the host's engine through the mounted socket; it gets the
    // same CA files as the host so it finds the same runtime images.
    let port = free_port();
    let socket_gid = String::from_utf8_lossy(
        &Command::new("stat")
            .args(["-c", "%g", "/var/run/docker.sock"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    // The CA files the host trusts (its bundle, then ISOL8_EXTRA_CA_CERTS), mounted at the same
    // paths and named in the same order, so the server hashes the same images.
    let ca: Vec<String> = isol8_docker::ImageConfig::default()
        .ca_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--network".into(),
        "host".into(),
        "--label".into(),
        "isol8.managed=true".into(),
        "--label".into(),
        "isol8.kind=test-server".into(),
        "-v".into(),
        "/var/run/docker.sock:/var/run/docker.sock".into(),
        "--group-add".into(),
        socket_gid,
        "-e".into(),
        format!("ISOL8_API_KEY={KEY}"),
        "-e".into(),
        format!("PORT={port}"),
        "-e".into(),
        "ISOL8_POOL_SIZE=0".into(),
    ];
    for file in &ca {
        args.extend(["-v".into(), format!("{file}:{file}:ro")]);
    }
    args.extend([
        "-e".into(),
        "ISOL8_HOST_CA_CERTS=none".into(),
        "-e".into(),
        format!("ISOL8_EXTRA_CA_CERTS={}", ca.join(",")),
    ]);
    args.extend([tag.clone(), "--bind".into(), "127.0.0.1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = docker(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let container = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let base = format!("http://127.0.0.1:{port}");

    let outcome = async {
        wait_healthy(&base).await;
        let (instance, result) = execute(
            &base,
            json!({"request": {"runtime": "python", "code": "print(6 * 7)"}}),
        )
        .await;
        assert_eq!(result["stdout"], "42\n", "{result}");
        let health = docker(&["exec", &container, "isol8-server", "--health-check"]);
        assert!(health.status.success(), "HEALTHCHECK command failed");
        let user = docker(&["exec", &container, "id", "-u"]);
        assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001");
        instance
    }
    .await;
    // SIGTERM: the containerized server removes what it created.
    let stop = docker(&["stop", "-t", "30", &container]);
    let logs = docker(&["logs", &container]);
    docker(&["rm", "-f", &container]);
    docker(&["rmi", "-f", &tag]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=isol8.instance={outcome}"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "containers left by the server"
    );
}

/// `isol8 serve` on a loopback port of its choosing; returns the child and its address
/// (`127.0.0.1:PORT`) once it listens.
fn replica() -> (Killed, String) {
    let server = spawn_listening(
        Command::new(binary("isol8"))
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .env("ISOL8_API_KEY", KEY)
            .env("ISOL8_POOL_SIZE", "1")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let address = server.base.trim_start_matches("http://").to_string();
    (Killed(server.child), address)
}

/// nginx configured like the ingress: no buffering, long timeouts, hashing on the session header
/// (else the request id), and retry on the other replica when one is down.
fn nginx(upstreams: &[String]) -> (Killed, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("    server {u} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    let conf = format!(
        r#"daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  map $http_x_isol8_session $isol8_affinity {{
    ""      $request_id;
    default $http_x_isol8_session;
  }}
  upstream isol8 {{
    hash $isol8_affinity consistent;
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://isol8;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_next_upstream error timeout http_502;
      client_max_body_size 10m;
    }}
  }}
}}
"#,
        dir = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (the test command installs it)");
    let child = Command::new(nginx)
        .args([
            "-c",
            path.to_str().unwrap(),
            "-p",
            dir.path().to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Killed(child), format!("http://127.0.0.1:{port}"), dir)
}

#[tokio::test]
async fn two_replicas_behind_nginx_spread_runs_keep_sessions_stream_and_fail_over() {
    let (a, a_addr) = replica();
    let (b, b_addr) = replica();
    let (_proxy, base, _dir) = nginx(&[a_addr, b_addr]);
    wait_healthy(&base).await;
    let run = json!({"request": {"runtime": "bash", "code": "echo ok"}});

    // Ephemeral runs reach both replicas.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..16 {
        let (instance, result) = execute(&base, run.clone()).await;
        assert_eq!(result["stdout"], "ok\n", "{result}");
        seen.insert(instance);
    }
    assert_eq!(seen.len(), 2, "ephemeral runs all went to one replica");

    // A session's calls stay on one replica (header affinity), and its state is there.
    let http = reqwest::Client::new();
    let mut session_instances = std::collections::HashSet::new();
    for (i, code) in ["n=1", "n=$((n+1))", "n=$((n+1))", "echo $n"]
        .iter()
        .enumerate()
    {
        let response = http
            .post(format!("{base}/execute"))
            .bearer_auth(KEY)
            .header("X-Isol8-Session", "sticky")
            .json(&json!({"request": {"runtime": "bash", "code": code}}))
            .send()
            .await
            .unwrap();
        session_instances.insert(
            response.headers()["x-isol8-instance"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        let result: Value = response.json().await.unwrap();
        if i == 3 {
            assert_eq!(result["stdout"], "3\n", "{result}");
        }
    }
    assert_eq!(session_instances.len(), 1);

    // SSE through nginx arrives as produced, not at the end.
    let started = Instant::now();
    let response = http
        .post(format!("{base}/execute/stream"))
        .bearer_auth(KEY)
        .json(&json!({"request": {"runtime": "python", "code": "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')"}}))
        .send()
        .await
        .unwrap();
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = bytes.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first_at.is_none() && text.contains("first") {
            first_at = Some(started.elapsed());
        }
    }
    assert!(
        text.contains("second") && text.contains("event: result"),
        "{text}"
    );
    assert!(
        first_at.unwrap() < Duration::from_millis(1800),
        "buffered: first line after {first_at:?}"
    );

    // One replica stops: new ephemeral runs all succeed on the other.
    drop(a);
    for _ in 0..8 {
        let (_, result) = execute(&base, run.clone()).await;
        assert_eq!(result["stdout"], "ok\n", "{result}");
    }
    drop(b);
}
