//! Hostile code and hostile clients against a real isol8-server with default limits (one case
//! shortens the request-read timeout): every attempt fails inside the sandbox or at the door, is reported with the right status, and leaves the host,
//! the server and the next run unaffected.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{Server, KEY};
use serde_json::{json, Value};

async fn run(server: &Server, runtime: &str, code: &str) -> Value {
    let (status, result) = server
        .execute(&json!({"request": {"runtime": runtime, "code": code}}))
        .await;
    assert_eq!(status, 200, "{result}");
    result
}

/// What the next run sees: other processes, files left in the writable dirs, and whether the
/// tmpfs dirs are empty again.
const LEFTOVERS: &str = "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]\nfiles = [f for d in ('/sandbox', '/tmp', '/dev/shm') for f in os.listdir(d) if not f.startswith('.isol8_main')]\nused = [d for d in ('/sandbox', '/tmp', '/dev/shm') if os.statvfs(d).f_bfree < os.statvfs(d).f_blocks - 64]\nprint(len(procs), len(files), used)";

async fn assert_next_run_is_clean(server: &Server) {
    let next = run(server, "python", LEFTOVERS).await;
    assert_eq!(next["stdout"], "0 0 []\n", "{next}");
}

/// The escape probe: one line per attempt, `name<TAB>ALLOWED` or the errno that refused it.
const ESCAPES: &str = include_str!("../probes/escapes.py");

fn outcomes(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, outcome)| (name.to_string(), outcome.to_string()))
        .collect()
}

/// The escape probe's outcomes in a container of `image` hardened like a sandbox (read-only root,
/// uid 1000, no capabilities, no-new-privileges, no network) but under `seccomp` instead of isol8's
/// profile (`None`: Docker's default profile).
fn probe_without_our_profile(image: &str, seccomp: Option<&str>) -> BTreeMap<String, String> {
    let mut control = Command::new("docker")
        .args(["run", "--rm", "-i", "--label", "isol8.managed=true"])
        .args([
            "--label",
            "isol8.kind=test-control",
            "--read-only",
            "--tmpfs",
            "/tmp",
        ])
        .args([
            "--user",
            "1000:1000",
            "--cap-drop",
            "ALL",
            "--network",
            "none",
        ])
        .args(["--security-opt", "no-new-privileges", "--pids-limit", "64"])
        .args(["--memory", "256m", "--entrypoint", "python3"])
        .args(seccomp.map(|profile| format!("--security-opt=seccomp={profile}")))
        .args([image, "-", KEY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker run starts");
    let mut stdin = control.stdin.take().unwrap();
    stdin.write_all(ESCAPES.as_bytes()).unwrap();
    drop(stdin);
    outcomes(&String::from_utf8_lossy(
        &control.wait_with_output().unwrap().stdout,
    ))
}

// The probe uses x86_64 system call numbers.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn the_seccomp_profile_and_the_other_layers_block_every_escape() {
    let server = Server::start(&[]).await;
    let probe = format!("import sys\nsys.argv = ['probe', {KEY:?}]\n{ESCAPES}");
    let sandboxed = run(&server, "python", &probe).await;
    let inside = outcomes(sandboxed["stdout"].as_str().unwrap_or_default());
    let image = server.image_of("python");
    // What succeeds without any profile is stopped by isol8's alone; what succeeds under Docker's
    // default is what isol8's adds to it.
    let unconfined = probe_without_our_profile(&image, Some("unconfined"));
    let docker_default = probe_without_our_profile(&image, None);
    let table: String = inside
        .iter()
        .map(|(name, outcome)| {
            let other = |o: &BTreeMap<String, String>| o.get(name).cloned().unwrap_or_default();
            format!(
                "{name:32} {outcome:8} {:10} {}\n",
                other(&docker_default),
                other(&unconfined)
            )
        })
        .collect();
    let table =
        format!("attempt                          isol8    docker-default no-profile\n{table}");
    eprintln!("{table}");
    for outcomes in [&inside, &unconfined, &docker_default] {
        assert_eq!(
            outcomes.len(),
            25,
            "every attempt reported:\n{table}\n{sandboxed}"
        );
    }
    assert!(
        inside.values().all(|outcome| outcome != "ALLOWED"),
        "an escape succeeded in the sandbox:\n{table}"
    );
    // Calls that work for any unprivileged process on any kernel isol8 supports, unless a seccomp
    // profile stops them, with what Docker's default profile does about them (where that does not
    // change between Docker versions). Others in the table, such as user namespaces or io_uring,
    // also depend on the host's settings or the Docker version.
    for (attempt, under_docker_default) in [
        ("ptrace(TRACEME)", Some("ALLOWED")),
        ("modify_ldt", Some("ALLOWED")),
        ("prlimit64(pid 1)", Some("ALLOWED")),
        ("process_vm_readv", None),
        ("keyctl", Some("EPERM")),
        ("personality(ADDR_NO_RANDOMIZE)", Some("EPERM")),
    ] {
        assert_eq!(unconfined[attempt], "ALLOWED", "{attempt}:\n{table}");
        if let Some(expected) = under_docker_default {
            assert_eq!(docker_default[attempt], expected, "{attempt}:\n{table}");
        }
    }
    let next = run(&server, "python", "print('clean')").await;
    assert_eq!(next["stdout"], "clean\n");
}

#[tokio::test]
async fn floods_bombs_and_full_disks_are_cut_and_reported() {
    let server = Server::start(&[]).await;
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
    // Invalid UTF-8 and NUL bytes come back as text, not as a failure.
    let bytes = run(
        &server,
        "python",
        "import sys\nsys.stdout.buffer.write(b'a\\xff\\x00b\\n')",
    )
    .await;
    assert_eq!(bytes["status"], "completed");
    assert_eq!(bytes["stdout"], "a\u{fffd}\u{0}b\n");

    let timed = |runtime: &str, code: &str, timeout_ms: u64| json!({"request": {"runtime": runtime, "code": code, "timeoutMs": timeout_ms}});
    // A child that ignores SIGTERM and double-forks into the background dies with the timeout.
    let stubborn = timed(
        "bash",
        "trap '' TERM; (setsid bash -c 'trap \"\" TERM; sleep 300' &); sleep 300",
        1500,
    );
    let (_, stubborn) = server.execute(&stubborn).await;
    assert_eq!(stubborn["status"], "timeout", "{stubborn}");
    // A CPU spin past the timeout.
    let (_, spin) = server
        .execute(&timed("python", "while True: pass", 1500))
        .await;
    assert_eq!(spin["status"], "timeout", "{spin}");
    // A fork bomb: every process forks forever; the pids limit holds it, the timeout ends it.
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let (_, bomb) = server.execute(&timed("python", bomb, 3000)).await;
    assert_eq!(bomb["status"], "timeout", "{bomb}");
    // Programs, not the agent, are what the kernel kills first when memory runs out.
    let adj = run(
        &server,
        "python",
        "print(open('/proc/self/oom_score_adj').read().strip())",
    )
    .await;
    assert_eq!(adj["stdout"], "1000\n", "{adj}");
    // A memory bomb.
    let memory = run(
        &server,
        "python",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
    )
    .await;
    assert_eq!(memory["status"], "memory_limit", "{memory}");
    assert_next_run_is_clean(&server).await;

    // Full disks: /tmp and /dev/shm stop at their size with ENOSPC.
    let fill = |dirs: &str| {
        format!(
            "import errno\nfor d in {dirs}:\n    try:\n        with open(d + '/fill', 'wb') as f:\n            while True:\n                f.write(bytes(1 << 20))\n    except OSError as e:\n        print(d, errno.errorcode[e.errno])"
        )
    };
    let full = run(&server, "python", &fill("('/tmp', '/dev/shm')")).await;
    assert_eq!(full["status"], "completed", "{full}");
    assert_eq!(full["stdout"], "/tmp ENOSPC\n/dev/shm ENOSPC\n", "{full}");
    assert_next_run_is_clean(&server).await;
    // /sandbox is as large as the memory limit and its files are memory: filling it ends the run
    // at the memory limit, and the sandbox with it.
    let full = run(&server, "python", &fill("('/sandbox',)")).await;
    assert!(
        full["status"] == "memory_limit" || full["stdout"] == "/sandbox ENOSPC\n",
        "{full}"
    );
    assert_next_run_is_clean(&server).await;
}

#[tokio::test]
async fn the_key_other_sandboxes_and_files_outside_the_sandbox_stay_out_of_reach() {
    let server = Server::start(&[]).await;
    // A session's file, and a search for it from another sandbox.
    let (status, _) = server.execute(&json!({"request": {"runtime": "python", "code": "open('/sandbox/victim-secret.txt', 'w').write('s3cret')"},
                "sessionId": "victim"}),
    )
    .await;
    assert_eq!(status, 200);
    let search = run(
        &server,
        "python",
        &format!(
            "import os\nhits = []\nfor root, dirs, files in os.walk('/'):\n    if root.startswith(('/proc', '/sys')):\n        dirs.clear()\n        continue\n    hits += [f for f in files if f == 'victim-secret.txt']\nenv = [k for k, v in os.environ.items() if {KEY:?} in v or k.startswith('ISOL8_API')]\nprint(hits, env, sorted(p for p in os.listdir('/proc') if p.isdigit()) == sorted(['1', str(os.getpid())]))"
        ),
    )
    .await;
    assert_eq!(search["stdout"], "[] [] True\n", "{search}");

    // outputPaths that point out of the sandbox through symlinks, `..`, a FIFO or a device.
    let tricks = "import os\nos.symlink('/etc/passwd', 'passwd')\nos.symlink('/proc/1/environ', 'environ')\nos.symlink('/dev/zero', '/tmp/zero')\nos.mkfifo('fifo')\nos.symlink('loop', 'loop')\nopen('real.txt', 'w').write('mine')";
    let (status, result) = server.execute(&json!({"request": {"runtime": "python", "code": tricks, "outputPaths":
            ["passwd", "environ", "/tmp/zero", "fifo", "loop", "../etc/shadow", "/sandbox/../etc/passwd", "real.txt"]}}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    let files = result["files"].as_object().expect("files");
    assert_eq!(files.keys().collect::<Vec<_>>(), ["real.txt"], "{result}");
    let stderr = result["stderr"].as_str().unwrap();
    for refused in [
        "passwd: resolves outside",
        "environ: resolves outside",
        "/tmp/zero: resolves outside",
        "fifo: not a regular file",
        "../etc/shadow: resolves outside",
    ] {
        assert!(stderr.contains(refused), "{refused}: {stderr}");
    }
}

#[tokio::test]
async fn huge_env_and_argv_get_a_clear_error_and_leave_nothing_behind() {
    let server = Server::start(&[]).await;
    // Many variables that fit: the program sees every one.
    let env: BTreeMap<String, String> = (0..500)
        .map(|i| (format!("V{i}"), "x".repeat(100)))
        .collect();
    let (status, fits) = server.execute(&json!({"request": {"runtime": "python", "code": "import os\nprint(sum(k.startswith('V') for k in os.environ))", "env": env}}),
    )
    .await;
    assert_eq!(
        (status, fits["stdout"].as_str()),
        (200, Some("500\n")),
        "{fits}"
    );
    // Past what execve takes: one 200 KiB variable, 4 MiB of variables, a 1 MiB command line.
    let one_huge = BTreeMap::from([("HUGE".to_string(), "x".repeat(200 * 1024))]);
    let many: BTreeMap<String, String> = (0..4096)
        .map(|i| (format!("V{i}"), "x".repeat(1024)))
        .collect();
    for body in [
        json!({"request": {"runtime": "python", "code": "print(1)", "env": one_huge}}),
        json!({"request": {"runtime": "python", "code": "print(1)", "env": many}}),
        json!({"request": {"runtime": "bash", "cmd": format!("echo {}", "a".repeat(1 << 20))}}),
    ] {
        let (status, result) = server.execute(&body).await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["status"], "error", "{result}");
        assert!(
            result["stderr"]
                .as_str()
                .unwrap()
                .contains("Argument list too long"),
            "{}",
            result["stderr"]
        );
    }
    assert_next_run_is_clean(&server).await;
}

/// Every property of the `schema` component in the served OpenAPI document, with its type.
fn properties(doc: &Value, schema: &str) -> Vec<(String, String)> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, spec)| {
            let kind = spec["type"]
                .as_str()
                .or_else(|| spec["type"].as_array().and_then(|t| t[0].as_str()))
                .unwrap_or("ref");
            (name.clone(), kind.to_string())
        })
        .collect()
}

/// Sets the field at JSON `pointer` (its parent exists) to `value`.
fn set(body: &mut Value, pointer: &str, value: Value) {
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    body.pointer_mut(parent).unwrap()[field] = value;
}

#[tokio::test]
async fn wrong_types_and_control_characters_in_every_field_get_a_clear_answer() {
    let server = Server::start(&[]).await;
    let http = &server.http;
    let doc: Value = http
        .get(format!("{}/openapi.json", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = json!({"request": {"runtime": "python", "code": "print(1)"}, "options": {}});
    let nasty = "\u{0}\u{7}\u{1b}[2J\u{202e}\r\n\u{fffe}é😀";
    let mut fields = Vec::new();
    for (schema, pointer) in [
        ("ExecutionRequest", "/request"),
        ("ExecutionOptions", "/options"),
    ] {
        for (name, kind) in properties(&doc, schema) {
            fields.push((format!("{pointer}/{name}"), name, kind));
        }
    }
    assert!(fields.len() >= 25, "{fields:?}");
    for (pointer, name, kind) in &fields {
        // A value of the wrong type: 400 naming the field.
        // (A boolean for schemas by reference: some of them take a number, like `poolSize`.)
        let wrong = match kind.as_str() {
            "string" => json!(42),
            "ref" => json!(true),
            _ => json!("wrong"),
        };
        let mut body = base.clone();
        set(&mut body, pointer, wrong);
        let (status, answer) = server.execute(&body).await;
        assert_eq!(status, 400, "{pointer}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(name.as_str()),
            "{pointer}: the error does not name the field: {answer}"
        );
        // Unicode and control characters: any answer but a server error.
        let odd = match kind.as_str() {
            "array" => json!([nasty]),
            "object" => json!({nasty: nasty}),
            _ => json!(nasty),
        };
        let mut body = base.clone();
        set(&mut body, pointer, odd);
        if name == "cmd" {
            body["request"].as_object_mut().unwrap().remove("code");
        }
        let (status, answer) = server.execute(&body).await;
        assert!(
            status < 500,
            "{pointer} with control characters: {status} {answer}"
        );
        assert!(answer.is_object(), "{pointer}: {answer}");
    }
    for path in [
        "/file?sessionId=%00%1b&path=%00",
        "/session/%00%1b%5B2J",
        "/file?sessionId=a&path=..%2F..%2Fetc%2Fpasswd",
    ] {
        let response = http
            .request(
                if path.starts_with("/session") {
                    reqwest::Method::DELETE
                } else {
                    reqwest::Method::GET
                },
                format!("{}{path}", server.base),
            )
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{path}: {}",
            response.status()
        );
    }
    assert_next_run_is_clean(&server).await;
}

/// `step`, or a failure naming `what` once it has taken `seconds`: a hang is a finding, not a suite
/// that never ends.
async fn within<T>(seconds: u64, what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), step)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {seconds} s"))
}

#[tokio::test]
async fn hostile_clients_leave_the_server_answering_others_promptly_in_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // This test holds well over a thousand sockets at once.
    rlimit::increase_nofile_limit(8192).unwrap();
    let server = Server::start(&[("ISOL8_REQUEST_READ_TIMEOUT_MS", "2000")]).await;
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let http = reqwest::Client::new();
    run(&server, "python", "print('warm')").await;
    let rss_before = server.footprint().0;

    // A body past the size limit is refused from its Content-Length, before it is read.
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let headers = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        11 << 20
    );
    stream.write_all(headers.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    within(10, "the 413 answer", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, b"HTTP/1.1 413");
    // A body trickled a byte at a time: 408 once the read timeout passes.
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let headers = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(headers.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = vec![0u8; 12];
    within(10, "the 408 answer", reader.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, b"HTTP/1.1 408");
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.abort();
    // Deeply nested JSON: a clear 400.
    let deep = format!(
        "{{\"request\": {{\"runtime\": \"python\", \"code\": \"1\", \"metadata\": {}1{}}}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let r = within(
        10,
        "the answer to deeply nested JSON",
        http.post(format!("{}/execute", server.base))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(deep)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Slowloris: 50 connections trickling headers a byte at a time, and 300 that send nothing.
    // The server cuts both off at the header-read timeout.
    let mut slow = Vec::new();
    for i in 0..350 {
        let port = port.clone();
        slow.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .ok()?;
            if i < 50 {
                for byte in b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Slow: "
                    .iter()
                    .cycle()
                    .take(200)
                {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return None; // never cut off
            }
            let mut buf = [0u8; 64];
            // Read until the server closes the connection (0 bytes) or resets it; a client the
            // server never cut off gives up after 20 s (the assertion below names it).
            let cut = async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(20), cut)
                .await
                .ok()?;
            Some(Instant::now())
        }));
    }
    let opened = Instant::now();
    // A thousand streams opened and dropped at once (most are refused with 429: the slots are
    // bounded).
    let mut dropped = Vec::new();
    for _ in 0..1000 {
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
    within(
        60,
        "the dropped streams' answers",
        futures::future::join_all(dropped),
    )
    .await;
    // Meanwhile the server answers a normal request promptly.
    let started = Instant::now();
    let health = within(
        10,
        "/health",
        http.get(format!("{}/health", server.base)).send(),
    )
    .await
    .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "health took {:?}",
        started.elapsed()
    );
    for task in slow {
        let cut = task
            .await
            .unwrap()
            .expect("a slow client was never cut off");
        let held = cut - opened;
        assert!(
            held < Duration::from_secs(6),
            "a slow client held its connection {held:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, result) = within(
            40,
            "a run after the flood",
            server
                .execute(&json!({"request": {"runtime": "python", "code": "print('still here')"}})),
        )
        .await;
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
    let rss_after = server.footprint().0;
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "server memory grew from {rss_before} to {rss_after} bytes"
    );
}

#[tokio::test]
async fn a_sandbox_killed_from_outside_is_reported_and_replaced() {
    let server = Server::start(&[]).await;
    run(&server, "bash", "true").await;
    let base = server.base.clone();
    let running = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/execute"))
            .bearer_auth(KEY)
            .json(&json!({"request": {"runtime": "bash", "code": "echo started; sleep 60"}}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill every bash container of this server: the busy one and any warm one.
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=isol8.instance={}", server.instance),
        ])
        .args(["--filter", "label=isol8.runtime=bash"])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(!ids.is_empty());
    let killed = Command::new("docker")
        .arg("kill")
        .args(&ids)
        .output()
        .unwrap();
    assert!(killed.status.success());
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the run ended")
        .unwrap();
    assert_eq!(result["status"], "error", "{result}");
    assert!(
        result["stderr"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly"),
        "{result}"
    );
    let next = run(&server, "bash", "echo fine").await;
    assert_eq!(next["stdout"], "fine\n", "{next}");
}

#[tokio::test]
async fn only_isol8_images_of_the_runtime_may_run_code() {
    let server = Server::start(&[]).await;
    run(&server, "python", "print(1)").await;
    // An image of no isol8 origin (an empty one, made here), and a python image asked to run bash.
    let foreign = "isol8-hostile-test-foreign:latest";
    let mut import = Command::new("docker")
        .args(["import", "-", foreign])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    import
        .stdin
        .take()
        .unwrap()
        .write_all(&[0u8; 1024])
        .unwrap();
    assert!(import.wait().unwrap().success());
    let python = server.image_of("python");
    for (runtime, image, expected, refusal) in [
        ("python", foreign, 403, "is not one of isol8's images"),
        (
            "bash",
            python.as_str(),
            400,
            "is a python image, not a bash one",
        ),
    ] {
        let (status, answer) = server.execute(&json!({"request": {"runtime": runtime, "code": "echo escaped"}, "options": {"image": image}}),
        )
        .await;
        assert_eq!(status, expected, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(refusal),
            "{answer}"
        );
    }
    let _ = Command::new("docker")
        .args(["rmi", foreign])
        .stdout(Stdio::null())
        .status();
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_silent_ones_are_cut_off() {
    let server = Server::start(&[
        ("ISOL8_MAX_CONNECTIONS", "2"),
        ("ISOL8_REQUEST_READ_TIMEOUT_MS", "1500"),
    ])
    .await;
    let address = server.base.trim_start_matches("http://").to_string();
    // Two connections that never send a byte take both slots...
    let silent = [
        tokio::net::TcpStream::connect(&address).await.unwrap(),
        tokio::net::TcpStream::connect(&address).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third client is answered only once the read timeout has cut them off.
    let started = Instant::now();
    let health = reqwest::Client::new()
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(health.status(), 200);
    assert!(
        waited > Duration::from_millis(800) && waited < Duration::from_secs(5),
        "answered after {waited:?}"
    );
    drop(silent);
}
