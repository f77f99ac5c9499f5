//! Hostile code through the HTTP API with default limits: each attempt must fail inside the sandbox,
//! be reported with the right status, and leave the next run unaffected. (A first part of the
//! reliability suite; the rest of it — load, soak, hostile input — is still to come.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{binary, free_port, Killed};
use serde_json::{json, Value};

const KEY: &str = "hostile-test-key-0123456789";

struct Server {
    _child: Killed,
    base: String,
}

fn server() -> Server {
    let port = free_port();
    let child = Command::new(binary("isol8-server"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .env("ISOL8_API_KEY", KEY)
        .env("ISOL8_POOL_SIZE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("isol8-server starts");
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        _child: child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn run(server: &Server, runtime: &str, code: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/execute", server.base))
        .bearer_auth(KEY)
        .json(&json!({"request": {"runtime": runtime, "code": code}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Each attempt prints "BLOCKED <name>" when the kernel or the sandbox refused it.
const ESCAPES: &str = r#"
import ctypes, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, fn):
    try:
        ok = fn()
    except Exception:
        ok = False
    print(("ESCAPED " if ok else "BLOCKED ") + name)
attempt("mount", lambda: libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None) == 0)
attempt("unshare-user", lambda: libc.unshare(0x10000000) == 0)
attempt("ptrace-pid1", lambda: libc.ptrace(16, 1, None, None) == 0)
attempt("setuid-root", lambda: libc.setuid(0) == 0)
attempt("raw-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) is not None)
attempt("keyctl", lambda: libc.syscall(250, 0, None) >= 0)
attempt("bpf", lambda: libc.syscall(321, 0, None, 0) >= 0)
attempt("perf_event_open", lambda: libc.syscall(298, None, 0, -1, -1, 0) >= 0)
attempt("init_module", lambda: libc.syscall(175, None, 0, b"") == 0)
attempt("write-rootfs", lambda: open("/usr/bin/evil", "w") is not None)
attempt("write-proc-sys", lambda: open("/proc/sys/kernel/hostname", "w").write("x") > 0)
attempt("write-sys", lambda: open("/sys/kernel/uevent_helper", "w").write("x") > 0)
attempt("sudo-like-setuid-binary", lambda: subprocess.run(["su", "-c", "id -u", "root"], capture_output=True, timeout=5, input=b"").stdout.strip() == b"0")
attempt("agent-environment", lambda: b"ISOL8_API_KEY" in open("/proc/1/environ", "rb").read())
"#;

#[tokio::test]
async fn escapes_are_blocked_and_the_next_run_is_clean() {
    let server = server();
    let result = run(&server, "python", ESCAPES).await;
    let out = result["stdout"].as_str().unwrap_or_default();
    assert!(!out.contains("ESCAPED"), "{out}\n{}", result["stderr"]);
    assert_eq!(
        out.matches("BLOCKED").count(),
        14,
        "{out}\n{}",
        result["stderr"]
    );
    let next = run(&server, "python", "print('clean')").await;
    assert_eq!(next["stdout"], "clean\n");
}

#[tokio::test]
async fn floods_and_bombs_are_cut_and_reported() {
    let server = server();
    // A single 100 MB line with no newline, on stdout and stderr at once.
    let flood = run(
        &server,
        "python",
        "import sys, threading\nt = threading.Thread(target=lambda: sys.stderr.write('e' * 100_000_000))\nt.start()\nsys.stdout.write('o' * 100_000_000)",
    )
    .await;
    assert_eq!(flood["status"], "output_limit", "{}", flood["status"]);
    assert_eq!(flood["truncated"], true);
    assert!(flood["stdout"].as_str().unwrap().len() <= 1024 * 1024);
    // A child that ignores SIGTERM and double-forks into the background dies with the timeout.
    let stubborn = json!({"request": {"runtime": "bash", "timeoutMs": 1500,
        "code": "trap '' TERM; (setsid bash -c 'trap \"\" TERM; sleep 300' &); sleep 300"}});
    let response: Value = reqwest::Client::new()
        .post(format!("{}/execute", server.base))
        .bearer_auth(KEY)
        .json(&stubborn)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["status"], "timeout", "{response}");
    // Invalid UTF-8 and NUL bytes come back as text, not as a failure.
    let bytes = run(
        &server,
        "python",
        "import sys\nsys.stdout.buffer.write(b'a\\xff\\x00b\\n')",
    )
    .await;
    assert_eq!(bytes["status"], "completed");
    assert_eq!(bytes["stdout"], "a\u{fffd}\u{0}b\n");
    // Nothing of any of it is left for the next run.
    let next = run(
        &server,
        "python",
        "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]\nfiles = [f for f in os.listdir('/sandbox') if not f.startswith('.isol8_main')] + os.listdir('/tmp')\nprint(len(procs), len(files))",
    )
    .await;
    assert_eq!(next["stdout"], "0 0\n", "{next}");
}

#[tokio::test]
async fn hostile_input_leaves_the_server_answering_others_promptly() {
    use tokio::io::AsyncWriteExt;
    let server = server();
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let http = reqwest::Client::new();

    // Deeply nested JSON in a field: a clear 400, not a crash.
    let deep = format!(
        "{{\"request\": {{\"runtime\": \"python\", \"code\": \"1\", \"metadata\": {}1{}}}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let r = http
        .post(format!("{}/execute", server.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Slow clients: 50 connections trickling a request a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let port = port.clone();
        slow.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await
            else {
                return;
            };
            for byte in b"POST /execute HTTP/1.1\r\nHost: x\r\n".iter() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Many streams opened and dropped at once (most are refused with 429: the slots are bounded).
    let mut dropped = Vec::new();
    for _ in 0..200 {
        let (http, base) = (http.clone(), server.base.clone());
        dropped.push(tokio::spawn(async move {
            let response = http
                .post(format!("{base}/execute/stream"))
                .bearer_auth(KEY)
                .json(&json!({"request": {"runtime": "bash", "code": "sleep 5"}}))
                .send()
                .await;
            drop(response);
        }));
    }
    futures::future::join_all(dropped).await;
    // Meanwhile the server answers a normal request promptly.
    let started = Instant::now();
    let health = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "health took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = run(&server, "python", "print('still here')").await;
        if result["stdout"] == "still here\n" {
            break;
        }
        // Dropped streams free their slots as their runs are killed; until then 429 is fair.
        assert!(
            Instant::now() < deadline,
            "the server did not recover: {result}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in slow {
        task.abort();
    }
}
