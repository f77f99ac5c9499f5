//! Engine tests on the real Docker engine: runtimes, inputs, limits, isolation, masking, pool hygiene.
//! The runtime images must be built first (`isol8 setup`; the test command does it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use isol8_api::{ExecutionOptions, ExecutionRequest, ExecutionResult, ExecutionStatus, Runtime};
use isol8_docker::{Engine, EngineConfig, Error, PlanDefaults, PoolConfig, RunEvent, RunPlan};

async fn engine(pool_size: usize) -> Engine {
    let config = EngineConfig {
        pool: PoolConfig {
            size: pool_size,
            ..PoolConfig::default()
        },
        warm_runtimes: if pool_size > 0 {
            vec![Runtime::Python]
        } else {
            vec![]
        },
        ..EngineConfig::default()
    };
    Engine::connect(config)
        .await
        .expect("Docker must be running for these tests")
}

fn code(runtime: Runtime, source: &str) -> ExecutionRequest {
    ExecutionRequest {
        runtime,
        code: Some(source.to_string()),
        ..Default::default()
    }
}

fn plan(request: &ExecutionRequest, options: &ExecutionOptions) -> RunPlan {
    RunPlan::from_request(request, options, &PlanDefaults::default(), "test-owner")
        .expect("valid plan")
}

async fn run(
    engine: &Engine,
    request: ExecutionRequest,
    options: ExecutionOptions,
) -> ExecutionResult {
    engine.execute(plan(&request, &options)).await.expect("run")
}

async fn py(engine: &Engine, source: &str) -> ExecutionResult {
    run(
        engine,
        code(Runtime::Python, source),
        ExecutionOptions::default(),
    )
    .await
}

#[tokio::test]
async fn every_runtime_runs_hello_world_and_returns_its_exit_code() {
    let engine = engine(0).await;
    let cases = [
        (
            Runtime::Python,
            "print('hello from python')\nimport sys; sys.exit(3)",
            "hello from python\n",
        ),
        (
            Runtime::Node,
            "console.log('hello from node'); process.exit(3)",
            "hello from node\n",
        ),
        (
            Runtime::Bun,
            "console.log('hello from bun'); process.exit(3)",
            "hello from bun\n",
        ),
        (
            Runtime::Deno,
            "console.log('hello from deno'); Deno.exit(3)",
            "hello from deno\n",
        ),
        (
            Runtime::Bash,
            "echo 'hello from bash'; exit 3",
            "hello from bash\n",
        ),
    ];
    for (runtime, source, expected) in cases {
        let result = run(&engine, code(runtime, source), ExecutionOptions::default()).await;
        assert_eq!(result.stdout, expected, "{runtime}: {result:?}");
        assert_eq!(result.exit_code, 3, "{runtime}: {result:?}");
        assert_eq!(result.status, ExecutionStatus::Completed, "{runtime}");
        assert_eq!(result.runtime, runtime);
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn stdin_env_files_workdir_and_output_paths_reach_the_program() {
    let engine = engine(0).await;
    let mut request = code(
        Runtime::Python,
        "import os, sys\nprint(sys.stdin.read().upper(), end='')\nprint(os.environ['GREETING'])\n\
         print(open('data/in.txt').read())\nprint(os.getcwd())\nopen('out.bin','wb').write(bytes(range(256)))",
    );
    request.stdin = Some("piped input\n".into());
    request.env = BTreeMap::from([("GREETING".into(), "hi".into())]);
    request.workdir = Some("/sandbox/work".into());
    request.files = BTreeMap::from([("data/in.txt".into(), "file content".into())]);
    request.output_paths = vec!["/sandbox/work/out.bin".into(), "/sandbox/missing".into()];
    let result = run(&engine, request, ExecutionOptions::default()).await;
    assert_eq!(
        result.stdout, "PIPED INPUT\nhi\nfile content\n/sandbox/work\n",
        "{result:?}"
    );
    let files = result.files.expect("files");
    use base64::Engine as _;
    let out = base64::engine::general_purpose::STANDARD
        .decode(&files["/sandbox/work/out.bin"])
        .unwrap();
    assert_eq!(out, (0..=255).collect::<Vec<u8>>());
    assert!(!files.contains_key("/sandbox/missing"));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_shell_command_runs_with_bash() {
    let engine = engine(0).await;
    let request = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some("python3 -c 'print(6*7)' && echo $0".into()),
        ..Default::default()
    };
    let result = run(&engine, request, ExecutionOptions::default()).await;
    assert_eq!(result.stdout, "42\nbash\n");
    engine.shutdown().await;
}

#[tokio::test]
async fn output_is_exact_and_not_trimmed_and_invalid_utf8_is_replaced() {
    let engine = engine(0).await;
    let result = py(&engine, "import sys\nsys.stdout.write('  a\\n\\n')\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\x00z')").await;
    assert_eq!(result.stdout, "  a\n\n\u{FFFD}\u{0}z");
    engine.shutdown().await;
}

#[tokio::test]
async fn timeout_kills_the_whole_process_tree_including_children_ignoring_sigterm() {
    let engine = engine(0).await;
    let request = ExecutionRequest {
        runtime: Runtime::Bash,
        code: Some(
            "trap '' TERM\n( trap '' TERM; setsid bash -c 'trap \"\" TERM; while :; do sleep 1; done' & ) \n\
             echo started\nwhile :; do :; done"
                .into(),
        ),
        timeout_ms: Some(1500),
        ..Default::default()
    };
    let started = Instant::now();
    let result = run(&engine, request, ExecutionOptions::default()).await;
    assert_eq!(result.status, ExecutionStatus::Timeout, "{result:?}");
    assert_eq!(result.exit_code, 137);
    assert_eq!(result.stdout, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn memory_bomb_is_reported_as_memory_limit() {
    let engine = engine(0).await;
    let options = ExecutionOptions {
        memory_limit: Some("64m".into()),
        ..Default::default()
    };
    let result = run(
        &engine,
        code(
            Runtime::Python,
            "x = []\nwhile True: x.append(bytearray(16*1024*1024))",
        ),
        options,
    )
    .await;
    assert_eq!(result.status, ExecutionStatus::MemoryLimit, "{result:?}");
    assert_ne!(result.exit_code, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn fork_bomb_is_held_by_the_pids_limit() {
    let engine = engine(0).await;
    let request = ExecutionRequest {
        runtime: Runtime::Bash,
        code: Some("bomb() { bomb | bomb & }; bomb 2>/dev/null; sleep 2; echo survived".into()),
        timeout_ms: Some(5000),
        ..Default::default()
    };
    let result = run(&engine, request, ExecutionOptions::default()).await;
    // The pids limit stops the bomb; the run ends by itself or at its timeout, never hangs the host.
    assert!(
        matches!(
            result.status,
            ExecutionStatus::Completed | ExecutionStatus::Timeout
        ),
        "{result:?}"
    );
    // Counted: forking stops at the pids limit (64 with the agent and the program itself).
    let counted = py(
        &engine,
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\n    n += 1\nprint(n)",
    )
    .await;
    let forked: u32 = counted.stdout.trim().parse().expect("a count");
    assert!((1..64).contains(&forked), "forked {forked} processes");
    // The engine still works afterwards.
    assert_eq!(py(&engine, "print('ok')").await.stdout, "ok\n");
    engine.shutdown().await;
}

#[tokio::test]
async fn output_flood_is_cut_at_the_cap_and_flagged() {
    let engine = engine(0).await;
    // Past the cap the program runs on (its output discarded) until it ends or times out.
    let options = ExecutionOptions {
        max_output_size: Some(10_000),
        timeout_ms: Some(2_000),
        ..Default::default()
    };
    let request = code(
        Runtime::Python,
        "import sys\nwhile True: sys.stdout.write('x' * 4096)",
    );
    let result = run(&engine, request, options).await;
    assert_eq!(
        result.status,
        ExecutionStatus::Timeout,
        "{:?}",
        result.status
    );
    assert!(result.truncated);
    assert_eq!(result.stdout.len(), 10_000);
    engine.shutdown().await;
}

#[tokio::test]
async fn filling_the_sandbox_fails_inside_and_leaves_the_engine_working() {
    let engine = engine(0).await;
    let options = ExecutionOptions {
        sandbox_size: Some("8m".into()),
        ..Default::default()
    };
    let request = ExecutionRequest {
        runtime: Runtime::Bash,
        code: Some("head -c 20000000 /dev/zero > /sandbox/fill; echo rc=$?".into()),
        ..Default::default()
    };
    let result = run(&engine, request, options).await;
    assert!(
        result.stderr.contains("No space left on device"),
        "{result:?}"
    );
    assert_eq!(result.stdout, "rc=1\n");
    engine.shutdown().await;
}

#[tokio::test]
async fn the_sandbox_is_locked_down() {
    let engine = engine(0).await;
    let script = r#"
import os, socket
print("uid", os.getuid(), os.geteuid())
try:
    open("/etc/evil", "w"); print("rootfs writable")
except OSError as e: print("rootfs", e.errno)
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1, os.getpid()])
for fam, kind, addr in [(socket.AF_INET, socket.SOCK_STREAM, ("1.1.1.1", 53)), (socket.AF_INET, socket.SOCK_DGRAM, ("8.8.8.8", 53))]:
    s = socket.socket(fam, kind); s.settimeout(2)
    try:
        s.connect(addr); s.send(b"x"); print("net reachable")
    except OSError as e: print("net", type(e).__name__)
try:
    socket.getaddrinfo("example.com", 80); print("dns works")
except OSError: print("dns fails")
# ICMP: raw sockets need CAP_NET_RAW (dropped); unprivileged ping sockets find no route.
for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
    try:
        s = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        s.settimeout(2)
        s.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("1.1.1.1", 0)); print("icmp sent")
    except OSError as e: print("icmp", type(e).__name__)
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2)
    s.connect(("2606:4700:4700::1111", 53)); print("ipv6 reachable")
except OSError as e: print("ipv6", type(e).__name__)
print("ifaces", sorted(os.listdir("/sys/class/net")))
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd", "NoNewPrivs", "Seccomp:"))]
print("".join(caps), end="")
"#;
    let result = py(&engine, script).await;
    let out = result.stdout;
    let uids: Vec<u32> = out
        .lines()
        .find_map(|l| l.strip_prefix("uid "))
        .unwrap_or_else(|| panic!("{out}"))
        .split(' ')
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids[0], uids[1], "{out}");
    assert!(
        uids[0] > 65535,
        "its own uid, in no host user's range: {out}"
    );
    assert!(out.contains("rootfs 30"), "read-only root: {out}");
    assert!(out.contains("pids True"), "own pid namespace: {out}");
    assert!(!out.contains("net reachable"), "{out}");
    assert!(out.contains("dns fails"), "{out}");
    assert!(!out.contains("icmp sent"), "{out}");
    assert!(!out.contains("ipv6 reachable"), "{out}");
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "seccomp filter on: {out}");
    engine.shutdown().await;
}

#[tokio::test]
async fn secrets_are_masked_even_when_split_across_writes() {
    let engine = engine(0).await;
    let options = ExecutionOptions {
        secrets: BTreeMap::from([("API_TOKEN".into(), "sk-very-secret-value".into())]),
        ..Default::default()
    };
    let source = "import os, sys, time\nt = os.environ['API_TOKEN']\nprint('token', t)\n\
                  sys.stdout.write(t[:7]); sys.stdout.flush(); time.sleep(0.3)\nsys.stdout.write(t[7:] + '\\n')\n\
                  print(t, file=sys.stderr)";
    let result = run(&engine, code(Runtime::Python, source), options).await;
    assert_eq!(result.stdout, "token ***\n***\n");
    assert_eq!(result.stderr, "***\n");
    engine.shutdown().await;
}

#[tokio::test]
async fn nothing_leaks_from_one_run_to_the_next() {
    let engine = engine(1).await;
    let first = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some(
            "echo a > /sandbox/left; echo b > /tmp/left; echo c > /dev/shm/left; mkdir -p /sandbox/d/e; chmod 000 /sandbox/d; \
             touch /sandbox/..hidden; (setsid sleep 300 &) ; export LEAK=1; echo done"
                .into(),
        ),
        ..Default::default()
    };
    let mut options = ExecutionOptions {
        secrets: BTreeMap::from([("S".into(), "zzz".into())]),
        ..Default::default()
    };
    let result = run(&engine, first, options.clone()).await;
    assert_eq!(result.stdout, "done\n");
    let first_container = result.container_id.clone();
    options.secrets.clear();
    // The same owner's next run may reuse the container, but only after a verified reset.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let check = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some("ls -A /sandbox /tmp /dev/shm; ps -eo comm= | grep -c sleep; echo LEAK=${LEAK:-} S=${S:-}".into()),
        ..Default::default()
    };
    let result = run(&engine, check, options).await;
    assert_eq!(
        result.stdout, "/dev/shm:\n\n/sandbox:\n\n/tmp:\n0\nLEAK= S=\n",
        "{result:?}"
    );
    eprintln!("first {first_container}, second {}", result.container_id);
    engine.shutdown().await;
}

#[tokio::test]
async fn containers_are_never_shared_between_owners() {
    let engine = engine(0).await;
    let req = code(Runtime::Python, "print(1)");
    let a = engine
        .execute(
            RunPlan::from_request(
                &req,
                &ExecutionOptions::default(),
                &PlanDefaults::default(),
                "alice",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a2 = engine
        .execute(
            RunPlan::from_request(
                &req,
                &ExecutionOptions::default(),
                &PlanDefaults::default(),
                "alice",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let b = engine
        .execute(
            RunPlan::from_request(
                &req,
                &ExecutionOptions::default(),
                &PlanDefaults::default(),
                "bob",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        a.container_id, a2.container_id,
        "same owner reuses after reset"
    );
    assert_ne!(
        a.container_id, b.container_id,
        "another owner never gets it"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn streaming_delivers_output_as_it_is_produced() {
    let engine = engine(0).await;
    let request = code(
        Runtime::Python,
        "import time\nprint('first')\ntime.sleep(2)\nprint('second')",
    );
    let mut events = engine
        .execute_stream(plan(&request, &ExecutionOptions::default()))
        .await
        .unwrap();
    let started = Instant::now();
    let mut first_at = None;
    let mut seen = Vec::new();
    while let Some(event) = events.recv().await {
        if let RunEvent::Stdout { text, .. } = &event {
            if first_at.is_none() {
                first_at = Some(started.elapsed());
            }
            seen.push(text.clone());
        }
        if let RunEvent::Finished(result) = &event {
            assert_eq!(result.status, ExecutionStatus::Completed);
            break;
        }
    }
    assert_eq!(seen.concat(), "first\nsecond\n");
    assert!(
        first_at.unwrap() < Duration::from_millis(1500),
        "first line came after {first_at:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn dropping_the_stream_kills_the_run() {
    let engine = engine(0).await;
    let request = code(
        Runtime::Python,
        "import time\nprint('x', flush=True)\ntime.sleep(60)",
    );
    let mut events = engine
        .execute_stream(plan(&request, &ExecutionOptions::default()))
        .await
        .unwrap();
    let _ = events.recv().await;
    drop(events);
    // The container is destroyed in the background; shutdown must find nothing running for long.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(engine.pool_stats().busy, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let engine = engine(0).await;
    let bad_image = ExecutionOptions {
        image: Some("isol8-no-such-image:nope".into()),
        ..Default::default()
    };
    let err = engine
        .execute(plan(&code(Runtime::Python, "print(1)"), &bad_image))
        .await
        .unwrap_err();
    // A missing image gets the same answer as a foreign one: nothing to learn about the engine.
    assert!(
        matches!(&err, Error::NotAllowed(m) if m.contains("is not one of isol8's images")),
        "{err}"
    );
    let err = RunPlan::from_request(
        &code(Runtime::Python, "x"),
        &ExecutionOptions {
            tmp_size: Some("12xb".into()),
            ..Default::default()
        },
        &PlanDefaults::default(),
        "o",
    )
    .unwrap_err();
    assert!(err.to_string().contains("tmpSize"), "{err}");
    engine.shutdown().await;
}

#[tokio::test]
async fn docker_unreachable_names_the_address() {
    // No socket at all: connecting fails and says where it looked.
    let missing = EngineConfig {
        docker_host: Some("unix:///tmp/isol8-no-docker-here.sock".into()),
        ..EngineConfig::default()
    };
    let err = Engine::connect(missing).await.unwrap_err();
    assert!(err.is_docker_unavailable());
    assert!(
        err.to_string().contains("/tmp/isol8-no-docker-here.sock"),
        "{err}"
    );

    // A socket where nothing listens (Docker stopped): the engine starts and every call says so.
    let path = std::env::temp_dir().join(format!("isol8-dead-docker-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let dead = EngineConfig {
        docker_host: Some(format!("unix://{}", path.display())),
        ..EngineConfig::default()
    };
    let engine = Engine::connect(dead)
        .await
        .expect("connect is lazy when the socket exists");
    let err = engine.ping().await.unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let err = engine
        .execute(plan(
            &code(Runtime::Python, "print(1)"),
            &ExecutionOptions::default(),
        ))
        .await
        .unwrap_err();
    assert!(err.is_docker_unavailable(), "{err}");
    engine.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn warm_runs_reuse_started_containers_and_shutdown_removes_everything() {
    let engine = engine(2).await;
    // Let the pool fill.
    for _ in 0..100 {
        if engine.pool_stats().ready >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine.pool_stats().ready >= 2, "pool did not fill");
    for i in 0..5 {
        let result = py(&engine, &format!("print({i})")).await;
        assert_eq!(result.stdout, format!("{i}\n"));
    }
    engine.shutdown().await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("isol8.instance={}", engine.instance_id())],
    )]);
    let left = docker
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(left.is_empty(), "containers left after shutdown: {left:?}");
}

#[tokio::test]
async fn a_new_engine_removes_exited_sandboxes_of_dead_instances_but_not_live_ones() {
    use bollard::container::{
        Config, CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions,
    };
    use futures::StreamExt;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let probe = engine(0).await;
    let image = probe.built_runtimes().await.unwrap()[&Runtime::Bash].clone();
    probe.shutdown().await;
    let make = |cmd: &str| Config {
        image: Some(image.clone()),
        entrypoint: Some(vec!["bash".into(), "-c".into(), cmd.into()]),
        labels: Some(
            [
                ("isol8.managed", "true"),
                ("isol8.kind", "sandbox"),
                ("isol8.instance", "some-other-instance"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        ..Default::default()
    };
    let dead = docker
        .create_container(None::<CreateContainerOptions<String>>, make("true"))
        .await
        .unwrap()
        .id;
    docker.start_container::<String>(&dead, None).await.unwrap();
    let mut wait = docker.wait_container(&dead, None::<WaitContainerOptions<String>>);
    while wait.next().await.is_some() {}
    let live = docker
        .create_container(None::<CreateContainerOptions<String>>, make("sleep 60"))
        .await
        .unwrap()
        .id;
    docker.start_container::<String>(&live, None).await.unwrap();

    let engine = engine(0).await;
    // Every engine this binary's other tests connect reclaims orphans too: when one of them is
    // removing `dead` already, ours gets "removal in progress" and returns while it still shows.
    let mut dead_gone = false;
    for _ in 0..50 {
        dead_gone = docker.inspect_container(&dead, None).await.is_err();
        if dead_gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live_kept = docker.inspect_container(&live, None).await.is_ok();
    engine.shutdown().await;
    let force = Some(RemoveContainerOptions {
        force: true,
        ..Default::default()
    });
    let _ = docker.remove_container(&live, force).await;
    let _ = docker.remove_container(&dead, force).await;
    assert!(dead_gone, "the exited orphan was not removed");
    assert!(
        live_kept,
        "a running container of another instance was removed"
    );
}

#[tokio::test]
async fn signals_a_program_sends_the_agent_leave_the_sandbox_serving() {
    let engine = engine(1).await;
    // PID 1 is the agent: every signal a program of the sandbox may send it is lost on it.
    let hostile = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some(
            "for s in TERM INT HUP USR1 USR2 QUIT PIPE ALRM; do kill -s $s 1 || echo \"kill $s failed\"; done; \
             sleep 0.2; echo alive"
                .into(),
        ),
        ..Default::default()
    };
    let result = run(&engine, hostile, ExecutionOptions::default()).await;
    assert_eq!(result.status, ExecutionStatus::Completed, "{result:?}");
    assert_eq!(result.stdout, "alive\n", "{result:?}");
    assert_eq!(result.stderr, "", "{result:?}");
    let again = run(
        &engine,
        ExecutionRequest {
            runtime: Runtime::Python,
            cmd: Some("echo again".into()),
            ..Default::default()
        },
        ExecutionOptions::default(),
    )
    .await;
    assert_eq!(again.stdout, "again\n", "{again:?}");
    assert_eq!(again.status, ExecutionStatus::Completed, "{again:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn strict_mode_lets_a_finished_sandbox_go_and_docker_removes_it_without_a_kill() {
    use bollard::system::EventsOptions;
    use futures::StreamExt;
    let engine = Engine::connect(EngineConfig {
        pool: PoolConfig {
            size: 0,
            reuse: false,
            ..PoolConfig::default()
        },
        warm_runtimes: vec![],
        ..EngineConfig::default()
    })
    .await
    .expect("Docker must be running for these tests");
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let instance = format!("isol8.instance={}", engine.instance_id());
    let filters = std::collections::HashMap::from([
        ("label".to_string(), vec![instance.clone()]),
        ("type".to_string(), vec!["container".to_string()]),
    ]);
    let mut events = docker.events(Some(EventsOptions::<String> {
        filters,
        ..Default::default()
    }));
    assert_eq!(py(&engine, "print(1)").await.stdout, "1\n");
    // The run's answer comes first; its container ends in the background.
    let mut actions = Vec::new();
    let gone = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = events.next().await {
            let action = event.unwrap().action.unwrap_or_default();
            actions.push(action.clone());
            if action == "destroy" {
                break;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the container was not removed: {actions:?}");
    assert!(actions.iter().any(|a| a == "die"), "{actions:?}");
    assert!(
        !actions.iter().any(|a| a == "kill"),
        "a finished sandbox is let go, not killed: {actions:?}"
    );
    let left = docker
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters: [("label".to_string(), vec![instance])].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(left.is_empty(), "containers left: {left:?}");
    engine.shutdown().await;
}
