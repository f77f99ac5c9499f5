//! Hostile clients against a real isol8-server, at the door and in its policy: kept containers,
//! queues on busy sessions, metrics labels, request bodies in flight, the unauthenticated probe,
//! image probing and key comparison (issue 16). Each test starts its own server; traffic goes only
//! to loopback and the server's own containers, and each test removes what it made.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{Server, KEY};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A keys file with one tenant key, removed when dropped.
struct KeysFile {
    path: std::path::PathBuf,
    key: String,
}

impl KeysFile {
    fn new(tenant: &str) -> KeysFile {
        let key = format!("hostile-tenant-key-{}-0123456789", std::process::id());
        let path = std::env::temp_dir().join(format!("isol8-hostile-keys-{tenant}.json"));
        std::fs::write(
            &path,
            json!([{"name": "attacker", "key": key, "tenant": tenant}]).to_string(),
        )
        .unwrap();
        KeysFile { path, key }
    }

    fn env(&self) -> (&'static str, &str) {
        ("ISOL8_KEYS_FILE", self.path.to_str().unwrap())
    }
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn post(server: &Server, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .http
        .post(format!("{}{path}", server.base))
        .bearer_auth(key)
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Finding 3: a tenant's key cannot keep containers unless the server allows it; where allowed,
/// it keeps at most `persist.maxPerKey`, they go with the tenant's own `/cleanup`, and they are
/// removed after `persist.maxAgeMs`.
#[tokio::test]
async fn kept_containers_are_refused_to_tenants_capped_cleaned_up_and_expired() {
    let tenant = format!("hostile-persist-{}", std::process::id());
    let keys = KeysFile::new(&tenant);
    let persist =
        json!({"request": {"runtime": "bash", "code": "echo kept"}, "options": {"persist": true}});
    let server = Server::start(&[keys.env()]).await;
    let (status, answer) = post(&server, &keys.key, "/execute", &persist).await;
    assert_eq!(
        status, 403,
        "a tenant kept a container by default: {answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("persist"),
        "{answer}"
    );
    drop(server);

    let server = Server::start(&[
        keys.env(),
        ("ISOL8_PERSIST_ALLOW_TENANTS", "true"),
        ("ISOL8_PERSIST_MAX_PER_KEY", "1"),
        ("ISOL8_PERSIST_MAX_AGE_MS", "4000"),
    ])
    .await;
    let mut made = Vec::new();
    let (status, first) = post(&server, &keys.key, "/execute", &persist).await;
    assert_eq!(status, 200, "{first}");
    let kept = first["containerId"].as_str().unwrap().to_string();
    made.push(kept.clone());
    assert!(
        container_exists(&kept),
        "the kept container is gone at once"
    );
    // Past the cap: refused, naming the limit.
    let (status, second) = post(&server, &keys.key, "/execute", &persist).await;
    if let Some(id) = second["containerId"].as_str() {
        made.push(id.to_string());
    }
    assert_eq!(
        status, 429,
        "a second kept container past maxPerKey 1: {second}"
    );
    assert!(
        second["error"].as_str().unwrap().contains("maxPerKey"),
        "{second}"
    );
    // The tenant's own cleanup removes what it kept.
    let (status, cleaned) = post(&server, &keys.key, "/cleanup", &json!({})).await;
    assert_eq!(status, 200, "{cleaned}");
    assert!(
        !container_exists(&kept),
        "the tenant's /cleanup left its kept container: {cleaned}"
    );
    // And what it keeps expires.
    let (status, third) = post(&server, &keys.key, "/execute", &persist).await;
    assert_eq!(status, 200, "the cap is free again after /cleanup: {third}");
    let expiring = third["containerId"].as_str().unwrap().to_string();
    made.push(expiring.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    while container_exists(&expiring) {
        assert!(
            Instant::now() < deadline,
            "a kept container outlived persist.maxAgeMs (4 s) by 11 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server);
    for id in made {
        docker_quiet(&["rm", "-f", &id]);
    }
}

/// Finding 9: calls queued on a busy session count toward `maxQueue` and wait at most
/// `queueTimeoutMs`, like calls waiting for an execution slot.
#[tokio::test]
async fn calls_waiting_for_a_busy_session_are_refused_within_the_queue_limits() {
    let server =
        Server::start(&[("ISOL8_MAX_QUEUE", "2"), ("ISOL8_QUEUE_TIMEOUT_MS", "1500")]).await;
    let session = format!("hostile-busy-{}", std::process::id());
    let call = |code: &str| json!({"request": {"runtime": "bash", "code": code, "timeoutMs": 20000}, "sessionId": session});
    let (status, warm) = post(&server, KEY, "/execute", &call("true")).await;
    assert_eq!(status, 200, "{warm}");
    let busy = {
        let (http, base, body) = (server.http.clone(), server.base.clone(), call("sleep 7"));
        tokio::spawn(async move {
            http.post(format!("{base}/execute"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let waiters = (0..4).map(|_| {
        let (http, base, body) = (server.http.clone(), server.base.clone(), call("echo late"));
        async move {
            let response = http
                .post(format!("{base}/execute"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), started.elapsed())
        }
    });
    let answers = futures::future::join_all(waiters).await;
    for (status, after) in &answers {
        assert_eq!(
            *status, 429,
            "a call waited for the busy session: {answers:?}"
        );
        assert!(
            *after < Duration::from_secs(4),
            "refused only after {after:?} (queueTimeoutMs 1500): {answers:?}"
        );
    }
    assert_eq!(busy.await.unwrap().unwrap(), 200);
    let _ = server
        .http
        .delete(format!("{}/session/{session}", server.base))
        .bearer_auth(KEY)
        .send()
        .await;
}

/// Finding 10: requests with made-up methods and paths, without a key, add no metrics series.
#[tokio::test]
async fn made_up_methods_and_paths_add_no_metrics_series() {
    let server = Server::start(&[]).await;
    for i in 0..60 {
        let method = reqwest::Method::from_bytes(format!("XSCAN{i}").as_bytes()).unwrap();
        let _ = server
            .http
            .request(method, format!("{}/health", server.base))
            .send()
            .await
            .unwrap();
        let _ = server
            .http
            .get(format!("{}/scan-{i}", server.base))
            .send()
            .await
            .unwrap();
    }
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("isol8_http_requests") && !l.starts_with('#'))
        .collect();
    assert!(
        series
            .iter()
            .all(|l| !l.contains("XSCAN") && !l.contains("scan-")),
        "{series:#?}"
    );
    assert!(series.len() <= 10, "{} series: {series:#?}", series.len());
}

/// Sends `head` and `body` on a fresh connection and returns it (the body may be incomplete).
async fn send_partial(address: &str, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream
}

/// The status of the answer on `stream`, or `None` if none comes within `within`.
async fn status_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<u16> {
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(within, stream.read(&mut buffer)).await;
    let n = read.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Finding 11: the bytes of request bodies held at once are bounded server-wide, whatever the
/// number of connections; no body is read before the key is checked, and the probes read none.
#[tokio::test]
async fn request_bodies_in_flight_share_one_budget_and_none_is_read_before_the_key() {
    let server = Server::start(&[
        ("ISOL8_MAX_BODY_BYTES", "262144"),
        ("ISOL8_MAX_BODY_BYTES_IN_FLIGHT", "1048576"),
    ])
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    let head = |path: &str, key: Option<&str>, length: usize| {
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    };
    // Without a key: refused at once, with the body not sent (so not waited for).
    let mut anonymous = send_partial(&address, &head("/execute", None, 200_000), b"{").await;
    assert_eq!(
        status_within(&mut anonymous, Duration::from_secs(2)).await,
        Some(401)
    );
    // A probe takes no body: answered at once, not after the body (or the read timeout).
    let mut probe = send_partial(&address, &head("/health", None, 200_000), b"{").await;
    assert_eq!(
        status_within(&mut probe, Duration::from_secs(2)).await,
        Some(405),
        "a probe waited for a body nobody sent"
    );
    // Four connections declaring 256 KiB each take the whole 1 MiB budget...
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(
            send_partial(
                &address,
                &head("/execute", Some(KEY), 262_144),
                &[b' '; 1000],
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a fifth body is refused at once, with a clear answer.
    let small = json!({"request": {"runtime": "bash", "code": "echo ok"}});
    let started = Instant::now();
    let (status, refused) = post(&server, KEY, "/execute", &small).await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["code"], "body_budget_exhausted", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("maxBodyBytesInFlight"),
        "{refused}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Once they hang up, their bytes are back.
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, answer) = post(&server, KEY, "/execute", &small).await;
        if status == 200 {
            assert_eq!(answer["stdout"], "ok\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the budget did not come back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finding 18: `/ready` without a key says whether the server is ready, and which runtimes,
/// nothing about where Docker is or why it does not answer.
#[tokio::test]
async fn the_ready_probe_names_no_docker_address_and_no_error_detail() {
    let hidden = std::env::temp_dir().join(format!(
        "isol8-hostile-hidden-engine-{}.sock",
        std::process::id()
    ));
    // A socket nobody listens on: the server starts, and Docker does not answer.
    let _ = std::fs::remove_file(&hidden);
    drop(std::os::unix::net::UnixListener::bind(&hidden).unwrap());
    let address = format!("unix://{}", hidden.display());
    let server = Server::start(&[("DOCKER_HOST", address.as_str())]).await;
    let response = server
        .http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    for leak in [
        "hidden-engine",
        "unix",
        ".sock",
        "No such file",
        "tmp",
        "error trying",
    ] {
        assert!(!body.contains(leak), "/ready told {leak:?}: {body}");
    }
    drop(server);
    let _ = std::fs::remove_file(&hidden);
    let server = Server::start(&[]).await;
    let response = server
        .http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap();
    if response.status() == 200 {
        let body: Value = response.json().await.unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["runtimes", "status", "version"], "{body}");
        assert!(
            body["runtimes"]
                .as_array()
                .unwrap()
                .contains(&json!("python")),
            "{body}"
        );
    }
}

/// Finding 19 and the labels: `options.image` answers the same for a missing image and for one
/// that exists but is not isol8's, and an image carrying isol8's labels (built `FROM` a runtime
/// image, which inherits them, or given them by hand) is not isol8's.
#[tokio::test]
async fn image_probing_learns_nothing_and_isol8_labels_prove_nothing() {
    let server = Server::start(&[]).await;
    let (status, _) = server
        .execute(&json!({"request": {"runtime": "python", "code": "print(1)"}}))
        .await;
    assert_eq!(status, 200);
    let python = server.image_of("python");
    let id = std::process::id();
    let foreign = format!("isol8-hostile-foreign-{id}:latest");
    let forged = format!("isol8-hostile-forged-{id}:latest");
    let derived = format!("isol8-hostile-derived-{id}:latest");
    let missing = format!("isol8-hostile-missing-{id}:latest");
    let import = |name: &str, changes: &[&str]| {
        let mut command = Command::new("docker");
        command.arg("import");
        for change in changes {
            command.args(["--change", change]);
        }
        let mut child = command
            .args(["-", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&[0u8; 1024]).unwrap();
        assert!(child.wait().unwrap().success());
    };
    import(&foreign, &[]);
    import(
        &forged,
        &[
            "LABEL isol8.managed=true",
            "LABEL isol8.kind=runtime",
            "LABEL isol8.runtime=python",
        ],
    );
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &derived, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    build
        .stdin
        .take()
        .unwrap()
        .write_all(format!("FROM {python}\nLABEL hostile=derived\n").as_bytes())
        .unwrap();
    assert!(build.wait().unwrap().success());

    let mut answers = Vec::new();
    for image in [&missing, &foreign, &forged, &derived] {
        let (status, answer) = server
            .execute(&json!({"request": {"runtime": "python", "code": "print('escaped')"}, "options": {"image": image}}))
            .await;
        let message = answer["error"]
            .as_str()
            .unwrap_or_default()
            .replace(image.as_str(), "IMAGE");
        answers.push((status, answer["code"].clone(), message, answer));
    }
    for image in [&foreign, &forged, &derived] {
        docker_quiet(&["rmi", "-f", image]);
    }
    let (status, code, message, _) = &answers[0];
    for answer in &answers {
        assert_eq!(
            (&answer.0, &answer.1, &answer.2),
            (status, code, message),
            "different answers: {answers:#?}"
        );
    }
    assert_eq!(*status, 403, "{answers:#?}");
    // isol8's own image, by any of its names, still runs.
    let (status, answer) = server
        .execute(&json!({"request": {"runtime": "python", "code": "print('ours')"}, "options": {"image": python}}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stdout"], "ours\n");
}

/// Keys are compared as fixed-length digests, so the comparison's time says nothing about the
/// key's length (a timing difference of nanoseconds cannot be measured reliably over HTTP; this
/// pins the behaviour around it): near misses of every length are refused.
#[tokio::test]
async fn near_miss_keys_of_every_length_are_refused() {
    let server = Server::start(&[]).await;
    let mut changed = KEY.to_string();
    changed.pop();
    changed.push('X');
    let near: Vec<String> = vec![
        String::new(),
        KEY[..1].to_string(),
        KEY[..KEY.len() - 1].to_string(),
        changed,
        format!("{KEY}0"),
        KEY.repeat(40),
    ];
    for key in &near {
        let response = server
            .http
            .get(format!("{}/sessions", server.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        assert!(
            [401, 403].contains(&response.status().as_u16()),
            "a key of {} characters passed",
            key.len()
        );
    }
    let response = server
        .http
        .get(format!("{}/sessions", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
