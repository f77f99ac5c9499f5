//! Load and soak: mixed runtimes at more concurrency than the server allows, for a bounded time.
//! Every request gets its correct result or a 429; afterwards the server's tasks, descriptors and
//! memory are back near where they started, and stopping it leaves no container or network.
//!
//! The test command runs a short form (`ISOL8_SOAK_SECONDS`, default 20); the full form is
//! `ISOL8_SOAK_SECONDS=300 cargo test -p isol8-e2e --test soak -- --nocapture`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{binary, free_port, Killed};
use serde_json::{json, Value};

const KEY: &str = "soak-test-key-0123456789";
const CLIENTS: usize = 12;
const MAX_CONCURRENT: &str = "4";
/// Tasks (and descriptors) a warm container costs the server: its attach stream and its reader.
const PER_CONTAINER: f64 = 2.0;
/// A hard bound on requests, whatever the duration.
const MAX_REQUESTS: usize = 20_000;

/// Code printing `n * n + 1`, one program per runtime.
fn program(runtime: &str, n: u64) -> String {
    match runtime {
        "python" => format!("print({n} * {n} + 1)"),
        "node" | "bun" | "deno" => format!("console.log({n} * {n} + 1)"),
        _ => format!("echo $(( {n} * {n} + 1 ))"),
    }
}

/// A gauge or counter of the server's /metrics (summed over its label sets).
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
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

/// Containers the server's pool holds, idle or running.
async fn warm_containers(http: &reqwest::Client, base: &str) -> f64 {
    metric(http, base, "isol8_pool_ready_containers").await
        + metric(http, base, "isol8_pool_busy_containers").await
}

/// Resident memory (bytes) and open descriptors of process `pid`.
fn footprint(pid: u32) -> (u64, usize) {
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

fn ours(what: &str, instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([what, "ls", "-q", "--filter"])
        .arg(format!("label=isol8.instance={instance}"))
        .args(if what == "container" {
            &["-a"][..]
        } else {
            &[][..]
        })
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_runtimes_above_the_limit_get_their_result_or_429_and_leave_nothing() {
    let seconds: u64 = std::env::var("ISOL8_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let port = free_port();
    let child = Command::new(binary("isol8-server"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .env("ISOL8_API_KEY", KEY)
        .env("ISOL8_MAX_CONCURRENT", MAX_CONCURRENT)
        .env("ISOL8_MAX_QUEUE", "4")
        .env("ISOL8_QUEUE_TIMEOUT_MS", "2000")
        .env("ISOL8_POOL_SIZE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("isol8-server starts");
    let server = Killed(child);
    let pid = server.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let instance = loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            break r.headers()["x-isol8-instance"]
                .to_str()
                .unwrap()
                .to_string();
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let runtimes = ["python", "node", "bun", "deno", "bash"];
    // Warm up every runtime once, then take the baseline.
    for runtime in runtimes {
        let body = json!({"request": {"runtime": runtime, "code": program(runtime, 1)}});
        let r: Value = http
            .post(format!("{base}/execute"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["stdout"], "2\n", "{runtime}: {r}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_start, fds_start) = footprint(pid);
    let tasks_start = metric(&http, &base, "isol8_tasks_alive").await;
    let held_start = warm_containers(&http, &base).await;

    let end = Instant::now() + Duration::from_secs(seconds);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, base, sent) = (http.clone(), base.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let (mut latencies, mut refused, mut wrong) = (Vec::new(), 0usize, Vec::new());
            let mut i = client as u64;
            while Instant::now() < end
                && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_REQUESTS
            {
                i += CLIENTS as u64;
                let runtime = runtimes[i as usize % runtimes.len()];
                let body = json!({"request": {"runtime": runtime, "code": program(runtime, i)}});
                let started = Instant::now();
                let response = http
                    .post(format!("{base}/execute"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await;
                let Ok(response) = response else {
                    wrong.push(format!("{runtime}: {response:?}"));
                    continue;
                };
                let status = response.status().as_u16();
                let result: Value = response.json().await.unwrap_or(Value::Null);
                if status == 429 {
                    refused += 1;
                    // As a well-behaved client would: back off before trying again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else if status == 200 && result["stdout"] == format!("{}\n", i * i + 1) {
                    latencies.push(started.elapsed());
                } else {
                    wrong.push(format!("{runtime} #{i}: {status} {result}"));
                }
            }
            (latencies, refused, wrong)
        }));
    }
    let (mut latencies, mut refused, mut wrong) = (Vec::new(), 0, Vec::new());
    for client in clients {
        let (l, r, w) = client.await.unwrap();
        latencies.extend(l);
        refused += r;
        wrong.extend(w);
    }
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    assert!(!latencies.is_empty(), "no request succeeded: {wrong:?}");
    eprintln!(
        "soak: {seconds} s, {CLIENTS} clients, maxConcurrent {MAX_CONCURRENT}: {} correct, {refused} refused (429), {} wrong; p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        wrong.len(),
        percentile(0.5),
        percentile(0.99),
        latencies.last().unwrap()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // Afterwards: with the runs over, every task and descriptor beyond the baseline belongs to a
    // warm container the pool keeps (its attach stream and reader); nothing else may remain.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = metric(&http, &base, "isol8_tasks_alive").await;
        let busy = metric(&http, &base, "isol8_pool_busy_containers").await;
        let extra = (warm_containers(&http, &base).await - held_start).max(0.0);
        let (rss, fds) = footprint(pid);
        eprintln!(
            "after: {extra} more warm containers; tasks {tasks} (start {tasks_start}), fds {fds} (start {fds_start}), rss {} MiB (start {} MiB)",
            rss >> 20,
            rss_start >> 20
        );
        let settled = busy == 0.0
            && tasks <= tasks_start + PER_CONTAINER * extra + 4.0
            && fds as f64 <= fds_start as f64 + PER_CONTAINER * extra + 8.0
            && rss <= rss_start + rss_start / 2 + (16 << 20);
        if settled {
            break;
        }
        assert!(
            Instant::now() < settle,
            "the server did not settle back to its baseline"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Stopping the server leaves none of its containers or networks.
    drop(server);
    let gone = Instant::now() + Duration::from_secs(20);
    while !(ours("container", &instance).is_empty() && ours("network", &instance).is_empty()) {
        assert!(
            Instant::now() < gone,
            "left behind: {:?} {:?}",
            ours("container", &instance),
            ours("network", &instance)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
