//! Black-box tests of the built `isol8` binary: local runs through the embedded server, and remote
//! runs against a real `isol8 serve`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
        stderr(&out).contains("API key required. Use --key or set ISOL8_API_KEY."),
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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new(env!("CARGO_BIN_EXE_isol8"))
        .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
        .env("ISOL8_API_KEY", "remote-key")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let mut listening = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening on") {
            listening = true;
            break;
        }
    }
    assert!(listening, "server did not start");
    let host = format!("http://127.0.0.1:{port}");
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
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let start = std::time::Instant::now();
    while server.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
        .unwrap_or_else(|| panic!("no container id in: {err}"))
        .trim()
        .to_string();
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
