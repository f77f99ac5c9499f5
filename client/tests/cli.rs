//! Black-box tests of the built `isol8` binary: local runs through the embedded server, and remote
//! runs against a real `isol8 serve`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use isol8_e2e::{spawn_listening, Listening};

fn isol8(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isol8"))
        .args(args)
        .env_remove("ISOL8_API_KEY")
        .output()
        .expect("run isol8")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_readme_example_prints_1024() {
    let out = isol8(&["run", "-e", "print(2 ** 10)", "--runtime", "python"]);
    assert_eq!(stdout(&out), "1024\n", "{}", stderr(&out));
    assert!(out.status.success());
}

#[test]
fn files_run_with_the_runtime_their_extension_names() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("a.py", "print('py')", "py\n"),
        ("a.mjs", "console.log('node')", "node\n"),
        ("a.ts", "const x: string = 'bun'; console.log(x)", "bun\n"),
        (
            "a.mts",
            "const x: string = 'deno'; console.log(x)",
            "deno\n",
        ),
        ("a.sh", "echo sh", "sh\n"),
    ];
    for (name, code, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, code).unwrap();
        let out = isol8(&["run", path.to_str().unwrap()]);
        assert_eq!(stdout(&out), expected, "{name}: {}", stderr(&out));
    }
}

#[test]
fn stdin_no_stream_out_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.txt");
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--no-stream",
        "--stdin",
        "abc",
        "--out",
        out_file.to_str().unwrap(),
        "-e",
        "import sys; print(sys.stdin.read()[::-1]); sys.exit(7)",
    ]);
    assert_eq!(stdout(&out), "cba\n");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(out_file).unwrap(), "cba\n");
}

#[test]
fn secrets_are_masked_and_malformed_ones_refused() {
    let out = isol8(&[
        "run",
        "-r",
        "bash",
        "--secret",
        "TOKEN=s3cr3t-value",
        "-e",
        "echo token=$TOKEN",
    ]);
    assert_eq!(stdout(&out), "token=***\n");
    let bad = isol8(&["run", "-r", "bash", "--secret", "NOEQUALS", "-e", "echo"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("KEY=VALUE"), "{}", stderr(&bad));
}

#[test]
fn limits_are_reported_with_a_reason_and_a_failing_status() {
    let out = isol8(&["run", "-r", "bash", "--timeout", "1000", "-e", "sleep 20"]);
    assert_eq!(out.status.code(), Some(137));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--memory",
        "64m",
        "-e",
        "x = bytearray(512 * 1024 * 1024)",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("memory limit"), "{}", stderr(&out));
    let out = isol8(&[
        "run",
        "-r",
        "bash",
        "--pids-limit",
        "8",
        "-e",
        "for i in $(seq 20); do sleep 2 & done; wait",
    ]);
    assert!(
        stderr(&out).contains("Resource temporarily unavailable"),
        "{}",
        stderr(&out)
    );
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--max-output",
        "100",
        "-e",
        "print('y' * 1000)",
    ]);
    assert_eq!(stdout(&out).len(), 100);
    assert!(stderr(&out).contains("output limit"), "{}", stderr(&out));
}

#[test]
fn bad_input_gets_clear_errors() {
    let out = isol8(&["run", "/nonexistent/file.py"]);
    assert!(
        stderr(&out).contains("[ERR] File not found: /nonexistent/file.py"),
        "{}",
        stderr(&out)
    );
    let out = isol8(&["run", "-r", "cobol", "-e", "x"]);
    assert!(
        stderr(&out).contains("Use --runtime to specify."),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a.xyz");
    std::fs::write(&odd, "x").unwrap();
    let out = isol8(&["run", odd.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("Use --runtime to specify."),
        "{}",
        stderr(&out)
    );
    let out = isol8(&[
        "run",
        "--host",
        "http://127.0.0.1:9",
        "-r",
        "python",
        "-e",
        "1",
    ]);
    assert!(
        stderr(&out).contains("API key required. Use --key, set ISOL8_API_KEY"),
        "{}",
        stderr(&out)
    );
    let out = isol8(&["serve"]);
    assert!(
        stderr(&out).contains("API key required"),
        "{}",
        stderr(&out)
    );
    let out = isol8(&["serve", "--key", "k", "--port", "99999"]);
    assert!(
        stderr(&out).contains("Invalid port from --port: 99999"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn remote_runs_against_a_real_serve_with_and_without_the_right_key() {
    let Listening {
        child: mut server,
        base: host,
        ..
    } = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .env("ISOL8_API_KEY", "remote-key"),
        Duration::from_secs(60),
    );
    let ok = isol8(&[
        "run",
        "--host",
        &host,
        "--key",
        "remote-key",
        "-r",
        "python",
        "-e",
        "print(6 * 7)",
    ]);
    assert_eq!(stdout(&ok), "42\n", "{}", stderr(&ok));
    let wrong = isol8(&[
        "run", "--host", &host, "--key", "nope", "-r", "python", "-e", "print(1)",
    ]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("Invalid API key"),
        "{}",
        stderr(&wrong)
    );
    // SIGTERM: graceful shutdown removes what the server created.
    isol8_e2e::signal_and_wait(&mut server, "TERM");
}

#[test]
fn no_arguments_prints_help_and_version_works() {
    let out = isol8(&[]);
    assert!(stderr(&out).contains("Usage") || stdout(&out).contains("Usage"));
    let out = isol8(&["--version"]);
    assert!(stdout(&out).starts_with("isol8 "), "{}", stdout(&out));
}

#[test]
fn persist_keeps_the_container_and_prints_its_id() {
    let out = isol8(&[
        "run",
        "-r",
        "bash",
        "--persist",
        "-e",
        "echo kept > /sandbox/note; echo hi",
    ]);
    assert_eq!(stdout(&out), "hi\n", "{}", stderr(&out));
    let err = stderr(&out);
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("[INFO] container kept: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no container id in: {err}"))
        .to_string();
    assert!(err.contains(&format!("docker rm -f {id}")), "{err}");
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.Running}} {{index .Config.Labels \"isol8.kind\"}}",
            &id,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "true kept");
    let note = Command::new("docker")
        .args(["exec", &id, "cat", "/sandbox/note"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&note.stdout), "kept\n");
    Command::new("docker")
        .args(["rm", "-f", &id])
        .output()
        .unwrap();
}

/// Runs the binary in `dir` with extra environment variables.
fn isol8_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isol8"))
        .args(args)
        .current_dir(dir)
        .env_remove("ISOL8_API_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run isol8")
}

#[test]
fn config_shows_its_source_and_json_parses_with_file_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let home = home.to_str().unwrap();
    let out = isol8_in(dir.path(), &["config"], &[("HOME", home)]);
    assert!(
        stdout(&out).contains("using the defaults"),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        dir.path().join("isol8.config.json"),
        r#"{"maxConcurrent": 3, "maximums": {"memoryLimit": "1g"}}"#,
    )
    .unwrap();
    let out = isol8_in(
        dir.path(),
        &["config", "--json"],
        &[("HOME", home), ("ISOL8_POOL_SIZE", "5")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("config --json is JSON");
    assert_eq!(config["maxConcurrent"], 3);
    assert_eq!(config["poolSize"], 5);
    assert_eq!(config["maximums"]["memoryLimit"], "1g");
    assert_eq!(config["maximums"]["timeoutMs"], 300000);
    let out = isol8_in(dir.path(), &["config"], &[("HOME", home)]);
    assert!(
        stdout(&out).contains("isol8.config.json"),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        dir.path().join("isol8.config.json"),
        r#"{"maxConcurent": 3}"#,
    )
    .unwrap();
    let out = isol8_in(dir.path(), &["config", "--json"], &[("HOME", home)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("maxConcurent"), "{}", stderr(&out));
}

#[test]
fn build_refuses_bad_input_clearly() {
    let out = isol8(&["build", "--base", "python"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No packages specified. Use --install <package>."),
        "{}",
        stderr(&out)
    );
    let out = isol8(&["build", "--base", "cobol", "--install", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cobol"), "{}", stderr(&out));
    let out = isol8(&["build", "--base", "python", "--install", "six;rm -rf /"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a valid python package name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn install_selects_filtered_networking_unless_net_is_given() {
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--install",
        "six",
        "-e",
        "import six",
    ]);
    assert!(
        stderr(&out).contains("--install without --net: using filtered networking"),
        "{}",
        stderr(&out)
    );
    for net in [["--net", "none"].as_slice(), ["--net=none"].as_slice()] {
        let mut args = vec!["run", "-r", "python", "--install", "isol8-absent-pkg"];
        args.extend_from_slice(net);
        args.extend_from_slice(&["-e", "print(1)"]);
        let out = isol8(&args);
        assert!(!out.status.success());
        assert!(
            !stderr(&out).contains("using filtered networking"),
            "{net:?}"
        );
        assert!(
            stderr(&out).contains("no python image holds isol8-absent-pkg"),
            "{net:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn completions_and_serve_update_answer() {
    let out = isol8(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("_isol8()"), "{}", stdout(&out));
    let out = isol8(&["serve", "--update"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("built into this isol8 binary"),
        "{}",
        stderr(&out)
    );
}

/// Starts `isol8 serve` with `env` and waits for its "listening on" line (see `spawn_listening`).
fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> Listening {
    spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .arg("serve")
            .args(args)
            .env_remove("ISOL8_PORT")
            .env_remove("PORT")
            .envs(env.iter().copied())
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    )
}

fn stop(mut child: std::process::Child) {
    isol8_e2e::signal_and_wait(&mut child, "TERM");
}

#[test]
fn serve_port_comes_from_flag_then_isol8_port_then_port_and_a_busy_one_falls_back() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let Listening {
        child, said: lines, ..
    } = spawn_serve(
        &["--bind", "127.0.0.1", "--port", &busy_port],
        &[("ISOL8_API_KEY", "k")],
    );
    stop(child);
    let warning = format!("[WARN] Port {busy_port} is in use. Falling back to available port ");
    assert!(lines.iter().any(|l| l.starts_with(&warning)), "{lines:?}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("listening on http://127.0.0.1:"),
        "{lines:?}"
    );

    // ISOL8_PORT wins over PORT, which is then never read (so its bad value does not matter).
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let Listening {
        child, said: lines, ..
    } = spawn_serve(
        &["--bind", "127.0.0.1"],
        &[
            ("ISOL8_API_KEY", "k"),
            ("ISOL8_PORT", &free),
            ("PORT", "junk"),
        ],
    );
    stop(child);
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with(&format!("127.0.0.1:{free}")),
        "{lines:?}"
    );
    for (var, value) in [("ISOL8_PORT", "abc"), ("PORT", "0")] {
        let out = Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["serve", "--key", "k"])
            .env_remove("ISOL8_PORT")
            .env_remove("PORT")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!(
                "Invalid port from {var}: {value}. Expected 1-65535."
            )),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn json_logs_carry_request_ids_and_never_code_secrets_or_keys() {
    let Listening {
        child: server,
        base: host,
        said,
        rest,
    } = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .env("ISOL8_API_KEY", "log-test-key-123")
            .env("ISOL8_LOG_FORMAT", "json")
            .env("ISOL8_LOG", "debug")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let mut ran = None;
    for _ in 0..50 {
        let out = isol8(&[
            "run",
            "--host",
            &host,
            "--key",
            "log-test-key-123",
            "-r",
            "python",
            "--secret",
            "TOKEN=secret-value-456",
            "--stdin",
            "stdin-marker-789",
            "-e",
            "print('code-marker-' + 'abc')",
        ]);
        if out.status.success() {
            ran = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stdout(&ran.expect("the server answered")),
        "code-marker-abc\n"
    );
    stop(server);
    // Its stderr ended with it: every line it wrote.
    let lines: Vec<String> = said.into_iter().chain(rest.iter()).collect();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!json.is_empty(), "no JSON log lines: {lines:?}");
    assert!(
        json.iter().any(|l| l["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)),
        "no request id in the logs: {lines:?}"
    );
    let all = lines.join("\n");
    for secret in [
        "log-test-key-123",
        "secret-value-456",
        "stdin-marker-789",
        "code-marker-",
    ] {
        assert!(
            !all.contains(secret),
            "{secret} leaked into the logs:\n{all}"
        );
    }
}

#[test]
fn cli_sessions_continue_across_processes_and_can_be_listed_and_stopped() {
    let name = format!("cli-test-{}", std::process::id());
    let first = isol8(&[
        "run",
        "-r",
        "python",
        "--session-id",
        &name,
        "-e",
        "count = 41",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!("[INFO] Session ID: {name}")),
        "{}",
        stderr(&first)
    );
    let second = isol8(&[
        "run",
        "-r",
        "python",
        "--session-id",
        &name,
        "-e",
        "count += 1; print(count)",
    ]);
    assert_eq!(stdout(&second), "42\n", "{}", stderr(&second));

    let listed = isol8(&["session", "list", "--json"]);
    let sessions: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == name.as_str()),
        "{sessions}"
    );
    let stopped = isol8(&["session", "stop", &name]);
    assert!(
        stderr(&stopped).contains(&format!("[OK] Session \"{name}\" destroyed.")),
        "{}",
        stderr(&stopped)
    );
    let again = isol8(&["session", "stop", &name]);
    assert!(!again.status.success());

    // --persistent without a name makes one and says it; the next run continues it.
    let made = isol8(&["run", "-r", "bash", "--persistent", "-e", "kept=yes"]);
    let id = stderr(&made)
        .lines()
        .find_map(|l| l.strip_prefix("[INFO] Session ID: ").map(str::to_string))
        .expect("a generated session id");
    let used = isol8(&["run", "-r", "bash", "--session-id", &id, "-e", "echo $kept"]);
    assert_eq!(stdout(&used), "yes\n", "{}", stderr(&used));
    isol8(&["session", "stop", &id]);
}

#[test]
fn a_killed_server_leaves_no_sandbox_or_session_containers() {
    let Listening {
        child: server,
        base: host,
        ..
    } = spawn_serve(
        &["--bind", "127.0.0.1", "--port", "0"],
        &[
            ("ISOL8_API_KEY", "crash-key-0123456789"),
            ("ISOL8_POOL_SIZE", "1"),
        ],
    );
    let out = isol8(&[
        "run",
        "--host",
        &host,
        "--key",
        "crash-key-0123456789",
        "-r",
        "python",
        "--session-id",
        "doomed",
        "-e",
        "x = 1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let instance = {
        let inspect = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                "label=isol8.session=doomed",
                "--format",
                "{{.Label \"isol8.instance\"}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&inspect.stdout).trim().to_string()
    };
    assert!(!instance.is_empty(), "the session's container exists");
    // SIGKILL: no graceful shutdown runs. Docker removes the containers once their connection is gone.
    let mut server = server;
    server.kill().unwrap();
    server.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=isol8.instance={instance}"),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&left.stdout).trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containers outlived their server"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn filtered_runs_reach_only_allowed_hosts_and_log_network_prints_each_request() {
    let out = isol8(&[
        "run", "-r", "python", "--net", "filtered", "--allow", "^example\\.org$", "--deny", "^example\\.org$",
        "--log-network", "-e",
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org/x', timeout=5)\nexcept Exception as e:\n    print('refused' if '403' in str(e) else e)",
    ]);
    assert_eq!(stdout(&out), "refused\n", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("BLOCK GET example.org/x (denied by rule)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn two_cli_processes_on_one_local_session_take_turns() {
    let name = format!("turns-{}", std::process::id());
    let first = isol8(&[
        "run",
        "-r",
        "python",
        "--session-id",
        &name,
        "-e",
        "log = []",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let spawn = |code: &str| {
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["run", "-r", "python", "--session-id", &name, "-e", code])
            .env_remove("ISOL8_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("import time\nlog.append('a'); time.sleep(1); log.append('a')");
    let b = spawn("import time\nlog.append('b'); time.sleep(1); log.append('b')");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    let log = isol8(&[
        "run",
        "-r",
        "python",
        "--session-id",
        &name,
        "-e",
        "print(''.join(log))",
    ]);
    let text = stdout(&log);
    assert!(
        text == "aabb\n" || text == "bbaa\n",
        "interleaved: {text:?}"
    );
    isol8(&["session", "stop", &name]);
}

#[test]
fn a_local_run_may_use_any_local_image_hardened_and_never_pulls() {
    // An image of the user's own, made from isol8's bootstrapped root, that says USER root.
    let rootfs = Command::new("docker")
        .args(["images", "-q", "--filter", "label=isol8.kind=rootfs"])
        .output()
        .unwrap();
    let rootfs = String::from_utf8_lossy(&rootfs.stdout)
        .split_whitespace()
        .next()
        .expect("isol8's root image (`isol8 setup` makes it)")
        .to_string();
    let tag = format!("isol8-test-cli-image:{}", std::process::id());
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "--label", "isol8.managed=true"])
        .args(["--label", "isol8.kind=test", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    let dockerfile = format!("FROM {rootfs}\nUSER root\n");
    build
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    assert!(build.wait().unwrap().success());

    let bash = isol8(&[
        "run",
        "--image",
        &tag,
        "-r",
        "bash",
        "-e",
        "echo uid=$(id -u) $HOME",
    ]);
    let node = isol8(&["run", "--image", &tag, "-r", "node", "-e", "console.log(1)"]);
    let missing = isol8(&[
        "run",
        "--image",
        "isol8-test-cli-no-such:1",
        "-e",
        "print(1)",
    ]);
    let _ = Command::new("docker")
        .args(["rmi", "-f", &tag])
        .stdout(Stdio::null())
        .status();

    assert!(bash.status.success(), "{}", stderr(&bash));
    let said = stdout(&bash);
    assert!(
        said.starts_with("uid=") && !said.starts_with("uid=0 "),
        "{said}"
    );
    assert!(said.ends_with(" /sandbox\n"), "{said}");
    assert!(!node.status.success());
    assert!(
        stderr(&node).contains(&format!(
            "node could not be started: it is not in image {tag}"
        )),
        "{}",
        stderr(&node)
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("isol8-test-cli-no-such:1")
            && stderr(&missing).contains("never pulls"),
        "{}",
        stderr(&missing)
    );
}
