//! Load and soak: mixed runtimes at more concurrency than the server allows, for a bounded time.
//! Every request gets its correct result or a 429; afterwards the server's tasks, descriptors and
//! memory are back near where they started, and stopping it leaves no container or network.
//!
//! The test command runs a short form (`ISOL8_SOAK_SECONDS`, default 20); the full form is
//! `ISOL8_SOAK_SECONDS=300 cargo test -p isol8-e2e --test soak -- --nocapture`.

use std::time::{Duration, Instant};

use isol8_e2e::{until_none_left, Server, KEY};
use serde_json::{json, Value};

const CLIENTS: usize = 12;
const MAX_CONCURRENT: &str = "4";
/// Tasks (and descriptors) a warm container costs the server: the reader of its attach stream.
const PER_CONTAINER: f64 = 1.0;
/// A hard bound on requests per second of the soak, however fast the server answers.
const MAX_REQUESTS_PER_SECOND: u64 = 400;

/// Code printing `n * n + 1`, one program per runtime.
fn program(runtime: &str, n: u64) -> String {
    match runtime {
        "python" => format!("print({n} * {n} + 1)"),
        "node" | "bun" | "deno" => format!("console.log({n} * {n} + 1)"),
        _ => format!("echo $(( {n} * {n} + 1 ))"),
    }
}

/// Containers the server's pool holds, idle or running.
async fn warm_containers(server: &Server) -> f64 {
    server.metric("isol8_pool_ready_containers").await
        + server.metric("isol8_pool_busy_containers").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_runtimes_above_the_limit_get_their_result_or_429_and_leave_nothing() {
    let seconds: u64 = std::env::var("ISOL8_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let server = Server::start(&[
        ("ISOL8_MAX_CONCURRENT", MAX_CONCURRENT),
        ("ISOL8_MAX_QUEUE", "4"),
        ("ISOL8_QUEUE_TIMEOUT_MS", "2000"),
    ])
    .await;
    let base = server.base.clone();
    let runtimes = ["python", "node", "bun", "deno", "bash"];
    // Warm up every runtime once, then take the baseline.
    for runtime in runtimes {
        let body = json!({"request": {"runtime": runtime, "code": program(runtime, 1)}});
        let (_, r) = server.execute(&body).await;
        assert_eq!(r["stdout"], "2\n", "{runtime}: {r}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_start, fds_start) = server.footprint();
    let tasks_start = server.metric("isol8_tasks_alive").await;
    let held_start = warm_containers(&server).await;

    let end = Instant::now() + Duration::from_secs(seconds);
    let max_requests = (seconds * MAX_REQUESTS_PER_SECOND) as usize;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The load's own connections, closed when it ends so they are not counted as left over.
    let load = reqwest::Client::new();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, base, sent) = (load.clone(), base.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let (mut latencies, mut refused, mut wrong) = (Vec::new(), 0usize, Vec::new());
            let mut i = client as u64;
            while Instant::now() < end
                && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max_requests
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
    drop(load);
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
        let tasks = server.metric("isol8_tasks_alive").await;
        let busy = server.metric("isol8_pool_busy_containers").await;
        let extra = (warm_containers(&server).await - held_start).max(0.0);
        let (rss, fds) = server.footprint();
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
    let instance = format!("isol8.instance={}", server.instance);
    drop(server);
    until_none_left(&instance, Duration::from_secs(20)).await;
}
