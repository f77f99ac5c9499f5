//! Hostile code against the sandbox, one test per finding of the security review that lives in the
//! engine and agent (issue 16): logs on the host's disk, output-file totals, socket buffers, what a
//! session call leaves running, one uid per sandbox, the host and other runs through the filtered proxy, IPC that
//! survives a run, secrets a session forgot, setup a client abandons, and the agent's own descriptors,
//! FIFOs and signals.

use std::process::Command;
use std::time::{Duration, Instant};

use isol8_e2e::{docker_ids, until_none_left, Server};
use serde_json::{json, Value};

fn body(code: &str) -> Value {
    json!({"request": {"runtime": "python", "code": code}})
}

async fn run(server: &Server, body: &Value) -> Value {
    let (status, result) = server.execute(body).await;
    assert_eq!(status, 200, "{result}");
    result
}

fn containers_of(server: &Server) -> Vec<String> {
    docker_ids("container", &format!("isol8.instance={}", server.instance))
}

#[tokio::test]
async fn nothing_a_sandbox_prints_is_logged_on_the_hosts_disk() {
    let server = Server::start(&[]).await;
    run(&server, &body("print('x' * 1_000_000)")).await;
    let ids = containers_of(&server);
    assert!(!ids.is_empty());
    for id in ids {
        let out = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.HostConfig.LogConfig.Type}} {{.LogPath}}",
                &id,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // Proxies keep a bounded log; sandboxes none at all.
        assert!(text.starts_with("none"), "{id}: {text}");
    }
}

#[tokio::test]
async fn output_files_are_capped_in_number_and_in_total() {
    let server = Server::start(&[]).await;
    let many: Vec<String> = (0..65).map(|i| format!("/sandbox/f{i}")).collect();
    let mut too_many = body("pass");
    too_many["request"]["outputPaths"] = json!(many);
    let (status, result) = server.execute(&too_many).await;
    assert_eq!(status, 400, "{result}");
    assert!(result["error"].as_str().unwrap().contains("outputPaths"));

    // Five files of 8 MiB against a 32 MiB total: four come back, the fifth is named as left out.
    let code = "for i in range(5):\n    open(f'/sandbox/big{i}', 'wb').write(b'x' * (8 << 20))";
    let mut big = body(code);
    big["request"]["outputPaths"] = json!((0..5)
        .map(|i| format!("/sandbox/big{i}"))
        .collect::<Vec<_>>());
    big["options"] = json!({"memoryLimit": "1g", "sandboxSize": "1g"});
    let result = run(&server, &big).await;
    let files = result["files"].as_object().unwrap();
    let total: usize = files
        .values()
        .map(|v| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            b64.decode(v.as_str().unwrap()).unwrap().len()
        })
        .sum();
    assert!(total <= 32 << 20, "{total} bytes came back");
    assert_eq!(files.len(), 4, "{:?}", files.keys().collect::<Vec<_>>());
    assert!(
        result["stderr"]
            .as_str()
            .unwrap()
            .contains("big4: left out"),
        "{}",
        result["stderr"]
    );
}

#[tokio::test]
async fn socket_buffers_stay_within_a_share_of_the_memory_limit() {
    let server = Server::start(&[]).await;
    let caps = run(
        &server,
        &body("print(open('/proc/sys/net/ipv4/tcp_rmem').read().split()[-1], open('/proc/sys/net/ipv4/tcp_wmem').read().split()[-1])"),
    )
    .await;
    assert_eq!(
        caps["stdout"], "262144 262144\n",
        "each socket's buffers: {caps}"
    );
    // Many loopback connections, each filled and never read: kernel memory the memory limit
    // does not count on cgroup v1 unless a TCP kernel-memory limit bounds it.
    let park = r#"
import resource, socket
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(4096)
held, parked = [], 0
try:
    for _ in range(1800):
        client = socket.create_connection(server.getsockname(), timeout=2)
        peer, _ = server.accept()
        client.setblocking(False)
        held.append((client, peer))
        while True:
            try:
                sent = client.send(b"x" * 65536)
            except OSError:
                break
            if sent == 0:
                break
            parked += sent
except OSError as e:
    pass
print(parked // 1048576)
"#;
    let parked = run(
        &server,
        &json!({"request": {"runtime": "python", "code": park, "timeoutMs": 60000},
                "options": {"memoryLimit": "64m"}}),
    )
    .await;
    let mib: u64 = parked["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{parked}"));
    // On cgroup v1 the TCP limit (16 MiB here) holds all but the one segment (at most 64 KiB)
    // the kernel lets each socket queue under pressure: about 40 KiB a connection, where it was
    // 280 KiB (500 MiB for these 1800). On cgroup v2 all of it counts toward the memory limit.
    assert!(
        mib <= 100,
        "a 64 MiB run parked {mib} MiB in socket buffers: {parked}"
    );
}

#[tokio::test]
async fn what_a_session_call_leaves_running_dies_at_its_deadline() {
    let server = Server::start(&[]).await;
    let call = |code: &str, timeout: u64| {
        json!({"request": {"runtime": "python", "code": code, "timeoutMs": timeout},
               "sessionId": "lingering"})
    };
    let started = run(
        &server,
        &call(
            "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)",
            2000,
        ),
    )
    .await;
    let pid: u32 = started["stdout"].as_str().unwrap().trim().parse().unwrap();
    let alive = call(
        // Alive: it exists and is not a zombie (the interpreter, its parent, does not reap it).
        &format!("try:\n    print(open('/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z')\nexcept OSError:\n    print(False)"),
        5000,
    );
    let within = run(&server, &alive).await;
    assert_eq!(
        within["stdout"], "True\n",
        "it runs within its call's deadline"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let past = run(&server, &alive).await;
    assert_eq!(past["stdout"], "False\n", "it outlived its call's timeout");
    // The session itself lives on.
    let after = run(&server, &call("print('still here')", 5000)).await;
    assert_eq!(after["stdout"], "still here\n");
}

/// One end of a veth pair with an address from a documentation range: an address of this host
/// that no real interface has. Removed when dropped.
struct TestAddress;

impl TestAddress {
    const ADDRESS: &'static str = "198.51.100.1";

    fn add() -> TestAddress {
        let _ = Command::new("ip").args(["link", "del", "isol8t0"]).status();
        let ok = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ok(&[
            "link", "add", "isol8t0", "type", "veth", "peer", "name", "isol8t0p",
        ]);
        ok(&["addr", "add", "198.51.100.1/24", "dev", "isol8t0"]);
        ok(&["link", "set", "isol8t0", "up"]);
        ok(&["link", "set", "isol8t0p", "up"]);
        TestAddress
    }
}

impl Drop for TestAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "isol8t0"]).status();
    }
}

#[tokio::test]
async fn filtered_runs_never_reach_the_host_or_another_runs_proxy_even_when_allowed_by_address() {
    let _address = TestAddress::add();
    // A service of the host on that address: what the run must not reach.
    let listener = tokio::net::TcpListener::bind((TestAddress::ADDRESS, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nreached")
                .await;
        }
    });
    let server = Server::start(&[("ISOL8_ALLOWED_NETWORKS", "none,filtered")]).await;
    let fetch = |url: String, allow: &str| {
        let code = format!("import urllib.request\ntry:\n    print(urllib.request.urlopen('{url}', timeout=5).read().decode())\nexcept Exception as e:\n    print('refused', e)");
        json!({"request": {"runtime": "python", "code": code},
               "options": {"network": "filtered", "logNetwork": true,
                           "networkFilter": {"whitelist": [allow], "blacklist": []}}})
    };
    let exact = format!("^{}$", TestAddress::ADDRESS.replace('.', "\\."));
    let to_host = run(
        &server,
        &fetch(format!("http://{}:{port}/", TestAddress::ADDRESS), &exact),
    )
    .await;
    assert!(
        to_host["stdout"].as_str().unwrap().starts_with("refused"),
        "{to_host}"
    );
    let reason = to_host["networkLogs"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("never reachable"), "{to_host}");

    // Another run's proxy: a filtered run's own proxy is on Docker's networks, never a target.
    let mut slow = fetch("http://blocked.invalid/".into(), "^nothing$");
    slow["request"]["code"] = json!("import time\ntime.sleep(8)");
    let (http, url) = (server.http.clone(), format!("{}/execute", server.base));
    let slow_run = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(isol8_e2e::KEY)
            .json(&slow)
            .send()
            .await
    });
    let proxy_ip = loop {
        let out = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=isol8.instance={}", server.instance),
            ])
            .args(["--filter", "label=isol8.kind=proxy"])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
        {
            let ip = Command::new("docker")
                .args([
                    "inspect",
                    "--format",
                    "{{.NetworkSettings.Networks.bridge.IPAddress}}",
                    id,
                ])
                .output()
                .unwrap();
            break String::from_utf8_lossy(&ip.stdout).trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exact = format!("^{}$", proxy_ip.replace('.', "\\."));
    let to_proxy = run(&server, &fetch(format!("http://{proxy_ip}:3128/"), &exact)).await;
    // It listens only on its own run's network: from here it cannot even be connected to.
    assert!(
        to_proxy["stdout"].as_str().unwrap().starts_with("refused"),
        "{to_proxy}"
    );
    assert_eq!(
        to_proxy["networkLogs"][0]["reason"], "unreachable",
        "{to_proxy}"
    );
    let _ = slow_run.await;
}

/// Linux users of this machine (the test runs on the Docker host).
fn host_uids() -> Vec<u32> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(':').nth(2)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn each_sandbox_has_its_own_uid_that_no_host_user_has_and_shares_no_per_uid_limit() {
    let server = Server::start(&[("ISOL8_POOL_SIZE", "2")]).await;
    // A takes every inotify instance its uid may have and holds them; B, running meanwhile in
    // another sandbox, must still get one (with a shared uid it got EMFILE).
    let hog = "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\nheld = []\nwhile True:\n    fd = libc.inotify_init()\n    if fd < 0: break\n    held.append(fd)\nprint(os.getuid(), os.getgid(), len(held), os.strerror(ctypes.get_errno()))\ntime.sleep(6)";
    let other = "import ctypes, os, time\ntime.sleep(2)\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.inotify_init()\nprint(os.getuid(), fd >= 0, os.strerror(ctypes.get_errno()) if fd < 0 else 'ok')";
    let (hog, other) = (body(hog), body(other));
    let (a, b) = tokio::join!(run(&server, &hog), run(&server, &other));
    let words = |result: &Value| -> Vec<String> {
        let out = result["stdout"].as_str().unwrap_or_default();
        out.split_whitespace().map(String::from).collect()
    };
    let (a_out, b_out) = (words(&a), words(&b));
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        a_out[2],
        limit.to_string(),
        "A held its uid's whole quota: {a}"
    );
    assert_eq!(b_out[1..3], ["True", "ok"], "B was not starved by A: {b}");
    let (uid_a, uid_b): (u32, u32) = (a_out[0].parse().unwrap(), b_out[0].parse().unwrap());
    assert_ne!(uid_a, uid_b, "two sandboxes ran as one uid");
    assert_eq!(a_out[1], a_out[0], "the gid is the sandbox's own too");
    let host = host_uids();
    for uid in [uid_a, uid_b] {
        assert!(uid > 65535, "{uid} is in the range host users are given");
        assert!(!host.contains(&uid), "{uid} is a host user's uid");
    }
    // And the filtered-mode proxy runs as none of them, nor as a host user.
    let proxy_server = Server::start(&[("ISOL8_ALLOWED_NETWORKS", "none,filtered")]).await;
    let filtered = json!({"request": {"runtime": "python", "code": "import time; time.sleep(10)"},
        "options": {"network": "filtered",
                    "networkFilter": {"whitelist": ["^example\\.com$"], "blacklist": []}}});
    // Looked for while the run sleeps: its proxy exists from before the program starts until
    // the run ends (setup can take seconds on a busy machine).
    let probe = async {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let users: Vec<String> = docker_ids(
                "container",
                &format!("isol8.instance={}", proxy_server.instance),
            )
            .iter()
            .map(|id| {
                let out = Command::new("docker")
                    .args([
                        "inspect",
                        "-f",
                        "{{.Config.User}} {{index .Config.Labels \"isol8.kind\"}}",
                        id,
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect();
            if users.iter().any(|u| u.ends_with(" proxy")) || Instant::now() > deadline {
                break users;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (users, done) = tokio::join!(probe, run(&proxy_server, &filtered));
    assert_eq!(done["exitCode"], 0, "{done}");
    let proxy_user = users
        .iter()
        .find_map(|u| u.strip_suffix(" proxy"))
        .unwrap_or_else(|| panic!("no proxy among {users:?}"));
    let proxy_uid: u32 = proxy_user.split(':').next().unwrap().parse().unwrap();
    assert!(
        proxy_uid > 65535 && !host.contains(&proxy_uid),
        "{proxy_user}"
    );
}

#[tokio::test]
async fn ipc_objects_do_not_survive_into_the_next_run() {
    let server = Server::start(&[("ISOL8_POOL_SIZE", "0")]).await;
    let make = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nIPC_CREAT = 0o1000\nprint(libc.shmget(0x1234, 4096, IPC_CREAT | 0o600) >= 0, libc.semget(0x1235, 1, IPC_CREAT | 0o600) >= 0, libc.msgget(0x1236, IPC_CREAT | 0o600) >= 0)\nlibc.mq_open.restype = ctypes.c_int\nprint(libc.mq_open(b'/left', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0)";
    let made = run(&server, &body(make)).await;
    assert_eq!(made["stdout"], "True True True\nTrue\n", "{made}");
    // The container comes back once its reset verified it clean; on a busy machine that can take
    // longer than a run waits for it before taking a fresh one, so wait for it here.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("isol8_pool_ready_containers").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the container never came back from its reset"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let look = "import os\nprint([len(open('/proc/sysvipc/' + t).read().splitlines()) - 1 for t in ('shm', 'sem', 'msg')], os.listdir('/dev/mqueue'))";
    let next = run(&server, &body(look)).await;
    assert_eq!(next["stdout"], "[0, 0, 0] []\n", "{next}");
    assert_eq!(
        next["containerId"], made["containerId"],
        "the same warm container served both"
    );
}

#[tokio::test]
async fn every_secret_a_session_was_given_stays_masked_and_network_logs_are_masked() {
    let server = Server::start(&[("ISOL8_ALLOWED_NETWORKS", "none,filtered")]).await;
    let call = |code: &str, secret: &str| {
        json!({"request": {"runtime": "python", "code": code},
               "options": {"secrets": {"TOKEN": secret}}, "sessionId": "masked"})
    };
    run(
        &server,
        &call("import os\nold = os.environ['TOKEN']", "first-secret-value"),
    )
    .await;
    let shown = run(
        &server,
        &call("print(old, os.environ['TOKEN'])", "second-secret-value"),
    )
    .await;
    assert_eq!(shown["stdout"], "*** ***\n", "{shown}");

    let code = "import os, urllib.request\ntry:\n    urllib.request.urlopen('http://' + os.environ['TOKEN'] + '.invalid/' + os.environ['TOKEN'], timeout=5)\nexcept Exception:\n    pass";
    let filtered = json!({"request": {"runtime": "python", "code": code},
        "options": {"network": "filtered", "logNetwork": true, "secrets": {"TOKEN": "leakedvalue"},
                    "networkFilter": {"whitelist": ["^nothing$"], "blacklist": []}}});
    let result = run(&server, &filtered).await;
    let logs = result["networkLogs"].to_string();
    assert!(
        !logs.contains("leakedvalue") && logs.contains("***"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_during_filtered_setup_leaves_no_network_or_proxy() {
    let server = Server::start(&[("ISOL8_ALLOWED_NETWORKS", "none,filtered")]).await;
    let label = format!("isol8.instance={}", server.instance);
    let body = json!({"request": {"runtime": "python", "code": "print(1)"},
        "options": {"network": "filtered", "networkFilter": {"whitelist": ["^x$"], "blacklist": []}}});
    for delay_ms in [50, 150, 300, 600, 1000] {
        let request = server
            .http
            .post(format!("{}/execute", server.base))
            .bearer_auth(isol8_e2e::KEY)
            .json(&body)
            .send();
        // Hang up part-way through the setup.
        let _ = tokio::time::timeout(Duration::from_millis(delay_ms), request).await;
    }
    let started = Instant::now();
    // Only warm sandboxes may remain: no proxy, no network.
    loop {
        let proxies = docker_ids("container", "isol8.kind=proxy")
            .into_iter()
            .filter(|id| {
                let out = Command::new("docker")
                    .args([
                        "inspect",
                        "--format",
                        "{{index .Config.Labels \"isol8.instance\"}}",
                        id,
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim() == server.instance
            })
            .count();
        let networks = docker_ids("network", &label).len();
        if proxies == 0 && networks == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "left behind: {proxies} proxies, {networks} networks"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server);
    until_none_left(&label, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn the_agent_survives_what_a_program_can_do_to_it() {
    let server = Server::start(&[]).await;
    // Signals to PID 1.
    let signalled = run(&server, &body("import os, signal\nos.kill(1, signal.SIGINT)\nos.kill(1, signal.SIGTERM)\nprint('sent')")).await;
    assert_eq!(signalled["stdout"], "sent\n", "{signalled}");
    let next = run(&server, &body("print('agent alive')")).await;
    assert_eq!(next["stdout"], "agent alive\n");
    assert_eq!(signalled["status"], "completed", "{signalled}");

    // A FIFO where a file is to be written: refused at once, the agent answers.
    let session =
        |code: &str| json!({"request": {"runtime": "python", "code": code}, "sessionId": "fifo"});
    run(&server, &session("import os\nos.mkfifo('/sandbox/pipe')")).await;
    let started = Instant::now();
    let write = server
        .http
        .post(format!("{}/file", server.base))
        .bearer_auth(isol8_e2e::KEY)
        .json(&json!({"sessionId": "fifo", "path": "/sandbox/pipe", "content": "aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 400);
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut into_fifo = session("print(open('/sandbox/x').read())");
    into_fifo["request"]["files"] = json!({"/sandbox/pipe": "hi"});
    let (status, refused) = server.execute(&into_fifo).await;
    assert!(status == 200 && refused["status"] == "error", "{refused}");
    assert_eq!(
        run(&server, &session("print('ok')")).await["stdout"],
        "ok\n"
    );

    // A bash session's background job cannot answer for a later cell through the kernel's pipes.
    let bash =
        |code: &str| json!({"request": {"runtime": "bash", "code": code}, "sessionId": "fds"});
    let probe = run(
        &server,
        &bash("for fd in 3 4; do test -e /proc/$BASHPID/fd/$fd && echo open || echo closed; done; (sleep 0.3; echo '{\"exit\": 99}' >&4) 2>/dev/null &"),
    )
    .await;
    assert_eq!(probe["stdout"], "closed\nclosed\n", "{probe}");
    let next = run(&server, &bash("sleep 0.6; echo real")).await;
    assert_eq!(next["stdout"], "real\n");
    assert_eq!(
        next["exitCode"], 0,
        "a background job answered for the cell: {next}"
    );
}
