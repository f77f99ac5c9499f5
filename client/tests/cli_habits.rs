//! The habits users of other sandbox CLIs bring, through the built `isol8` binary: python as the
//! default for -e and stdin, --cmd, --setup, --workdir, --files, remote-code flags, `isol8 images`,
//! quiet exits on a closed stdout, help that reads like a synopsis, and filtered runs against a
//! default `isol8 serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn isol8_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_isol8"));
    cmd.args(args)
        .env_remove("ISOL8_API_KEY")
        .env_remove("ISOL8_ALLOWED_NETWORKS")
        .env_remove("ISOL8_DEFAULT_NETWORK");
    cmd
}

fn isol8(args: &[&str]) -> Output {
    isol8_cmd(args).output().expect("run isol8")
}

/// Runs isol8 with `input` on its standard input.
fn isol8_stdin(args: &[&str], input: &str) -> Output {
    let mut child = isol8_cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn eval_and_code_on_stdin_default_to_python() {
    let out = isol8(&["run", "-e", "import sys; print(sys.version_info[0] * 341)"]);
    assert_eq!(stdout(&out), "1023\n", "{}", stderr(&out));
    assert!(out.status.success());
    let out = isol8_stdin(&["run"], "print(2 ** 10)\n");
    assert_eq!(stdout(&out), "1024\n", "{}", stderr(&out));
    // An explicit runtime still wins.
    let out = isol8_stdin(&["run", "-r", "bash"], "echo $((6 * 7))\n");
    assert_eq!(stdout(&out), "42\n", "{}", stderr(&out));
}

#[test]
fn cmd_runs_bash_in_the_runtime_image_and_refuses_a_second_source() {
    let out = isol8(&["run", "--cmd", "echo \"$0\"; echo $((40 + 2))"]);
    assert_eq!(stdout(&out), "bash\n42\n", "{}", stderr(&out));
    // In the python image: its interpreter is there for the command.
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--cmd",
        "python3 -c 'print(3 * 3)' && exit 3",
    ]);
    assert_eq!(stdout(&out), "9\n", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3));
    let out = isol8(&["run", "--cmd", "ls", "-e", "print(1)"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn setup_runs_first_from_files_and_inline_commands_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("prepare.sh");
    std::fs::write(&script, "echo from-file\necho made > /sandbox/made.txt\n").unwrap();
    let out = isol8(&[
        "run",
        "--setup",
        script.to_str().unwrap(),
        "--setup",
        "echo inline",
        "-e",
        "print(open('/sandbox/made.txt').read().strip())",
    ]);
    assert_eq!(
        stdout(&out),
        "from-file\ninline\nmade\n",
        "{}",
        stderr(&out)
    );
    assert!(out.status.success());
}

#[test]
fn workdir_is_where_the_program_starts_and_must_stay_in_the_sandbox() {
    let out = isol8(&["run", "--workdir", "/sandbox/app/src", "--cmd", "pwd"]);
    assert_eq!(stdout(&out), "/sandbox/app/src\n", "{}", stderr(&out));
    let out = isol8(&["run", "-e", "import os; print(os.getcwd())"]);
    assert_eq!(stdout(&out), "/sandbox\n", "{}", stderr(&out));
    let out = isol8(&["run", "--workdir", "/etc", "--cmd", "pwd"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("workdir"), "{}", stderr(&out));
}

#[test]
fn files_copies_nested_folders_and_skips_vcs_dependency_and_cache_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("pkg/sub/deeper")).unwrap();
    std::fs::write(root.join("main.py"), "import pkg.sub.deeper.leaf\n").unwrap();
    std::fs::write(root.join("pkg/__init__.py"), "").unwrap();
    std::fs::write(root.join("pkg/sub/__init__.py"), "").unwrap();
    std::fs::write(root.join("pkg/sub/deeper/__init__.py"), "").unwrap();
    std::fs::write(root.join("pkg/sub/deeper/leaf.py"), "print('leaf')\n").unwrap();
    for skipped in [
        ".git",
        "node_modules/lib",
        "__pycache__",
        ".venv/bin",
        "venv",
        ".tox",
        "pkg/node_modules",
    ] {
        std::fs::create_dir_all(root.join(skipped)).unwrap();
        std::fs::write(root.join(skipped).join("skipped.txt"), "no").unwrap();
    }
    let out = isol8(&[
        "run",
        "-r",
        "python",
        "--files",
        root.to_str().unwrap(),
        "--cmd",
        "find /sandbox -type f | sort; python3 /sandbox/main.py",
    ]);
    assert_eq!(
        stdout(&out),
        "/sandbox/main.py\n/sandbox/pkg/__init__.py\n/sandbox/pkg/sub/__init__.py\n\
         /sandbox/pkg/sub/deeper/__init__.py\n/sandbox/pkg/sub/deeper/leaf.py\nleaf\n",
        "{}",
        stderr(&out)
    );
    let file = root.join("main.py");
    let out = isol8(&["run", "--files", file.to_str().unwrap(), "--cmd", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--files path is not a directory"),
        "{}",
        stderr(&out)
    );
}

/// A loopback HTTP server that records the requests it gets and answers each with `status` and
/// an isol8 error body, so a test sees exactly what the CLI sent.
fn recording_server(
    answers: usize,
    status: u16,
) -> (
    String,
    std::thread::JoinHandle<Vec<(String, serde_json::Value)>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..answers {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            seen.push((path, serde_json::from_slice(&body).unwrap()));
            let answer = r#"{"error":"remote code is disabled on this server","code":"forbidden","requestId":"t"}"#;
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status} Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .unwrap();
        }
        seen
    });
    (url, handle)
}

#[test]
fn remote_code_flags_send_code_url_hash_and_the_insecure_opt_in() {
    let (host, server) = recording_server(3, 403);
    let hash = "ab".repeat(32);
    let runs: [&[&str]; 3] = [
        &[
            "--github",
            "octo/tools/v1.2/scripts/hello.py",
            "--hash",
            &hash,
        ],
        &["--gist", "0123abcd/snippet.sh"],
        &[
            "--url",
            "http://code.internal/job.js?x=1",
            "--allow-insecure-code-url",
            "-r",
            "node",
        ],
    ];
    for flags in runs {
        let mut args = vec!["run", "--host", &host, "--key", "k"];
        args.extend_from_slice(flags);
        let out = isol8(&args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("remote code is disabled on this server (HTTP 403"),
            "{}",
            stderr(&out)
        );
    }
    let seen = server.join().unwrap();
    let requests: Vec<&serde_json::Value> = seen.iter().map(|(_, b)| &b["request"]).collect();
    assert!(
        seen.iter().all(|(path, _)| path == "/execute/stream"),
        "{seen:?}"
    );
    assert_eq!(
        requests[0]["codeUrl"],
        "https://raw.githubusercontent.com/octo/tools/v1.2/scripts/hello.py"
    );
    assert_eq!(requests[0]["codeHash"], hash.as_str());
    assert_eq!(requests[0]["runtime"], "python");
    assert_eq!(requests[0]["fileExtension"], ".py");
    assert_eq!(
        requests[1]["codeUrl"],
        "https://gist.githubusercontent.com/0123abcd/raw/snippet.sh"
    );
    assert_eq!(requests[1]["runtime"], "bash");
    assert_eq!(requests[2]["codeUrl"], "http://code.internal/job.js?x=1");
    assert_eq!(requests[2]["allowInsecureCodeUrl"], true);
    assert_eq!(requests[2]["runtime"], "node");
    for request in &requests {
        assert!(
            request.get("code").is_none() && request.get("cmd").is_none(),
            "{request}"
        );
    }
    assert!(requests[0].get("allowInsecureCodeUrl").is_none());

    // Bad forms are refused before anything is sent.
    for (flags, message) in [
        (
            ["--github", "octo/tools/main"].as_slice(),
            "--github format must be owner/repo/ref/path/to/file",
        ),
        (
            ["--gist", "only-an-id"].as_slice(),
            "--gist format must be gistId/file.ext",
        ),
        (
            ["--url", "https://x.example/run"].as_slice(),
            "Cannot detect the runtime from the URL path",
        ),
        (
            ["--url", "https://x.example/a.py", "--hash", "12"].as_slice(),
            "--hash \"12\" must be a SHA-256",
        ),
        (
            ["-e", "1", "--hash", &hash].as_slice(),
            "--hash and --allow-insecure-code-url go with",
        ),
    ] {
        let mut args = vec!["run", "--host", "http://127.0.0.1:9", "--key", "k"];
        args.extend_from_slice(flags);
        let out = isol8(&args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(message),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
}

/// Runs isol8 with a standard output whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = isol8_cmd(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_printing_command_exits_quietly_with_0_when_its_stdout_is_closed() {
    let commands: [&[&str]; 12] = [
        &["config", "--json"],
        &["config"],
        &["--help"],
        &["run", "--help"],
        &["--version"],
        &["completions", "bash"],
        &["images"],
        &["images", "--json"],
        &["session", "list", "--json"],
        &["run", "-e", "print('x' * 100000)"],
        &["run", "--no-stream", "--cmd", "seq 1 1000"],
        &["serve", "--help"],
    ];
    for args in commands {
        let out = with_closed_stdout(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked") && !stderr(&out).contains("Broken pipe"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn images_lists_custom_images_with_packages_size_and_age() {
    // An image labelled as `isol8 build` labels its images, on a base that is not current.
    let base = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["images", "-q", "--filter", "label=isol8.kind=runtime"])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .next()
    .expect("a runtime image (isol8 setup)")
    .to_string();
    let tag = format!("isol8-custom-python:clitest{}", std::process::id());
    let mut build = Command::new("docker")
        .args([
            "build",
            "-q",
            "-t",
            &tag,
            "--label",
            "isol8.managed=true",
            "--label",
            "isol8.kind=custom",
            "--label",
            "isol8.runtime=python",
            "--label",
            "isol8.packages=probe-a,probe-b",
            "--label",
            "isol8.base=isol8-python:gone",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(build.stdin.take().unwrap(), "FROM {base}").unwrap();
    assert!(build.wait().unwrap().success());

    let text = isol8(&["images"]);
    let json = isol8(&["images", "--json"]);
    let alias = isol8(&["list-custom"]);
    Command::new("docker").args(["rmi", &tag]).output().unwrap();

    let table = stdout(&text);
    assert!(table.starts_with("IMAGE "), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&tag))
        .unwrap_or_else(|| panic!("{tag} not listed: {table}"));
    for expected in ["(stale", "python", "probe-a,probe-b", "MB", "just now"] {
        assert!(row.contains(expected), "{expected} missing: {row}");
    }
    assert!(stdout(&alias).contains(&tag), "{}", stdout(&alias));
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tags"][0] == tag.as_str())
        .expect("listed in --json");
    assert_eq!(entry["packages"], serde_json::json!(["probe-a", "probe-b"]));
    assert_eq!(entry["runtime"], "python");
    assert_eq!(entry["current"], false);
    assert!(entry["sizeBytes"].as_u64().unwrap() > 1_000_000, "{entry}");
}

#[test]
fn help_reads_like_a_synopsis_with_defaults_and_three_examples() {
    let commands: [&[&str]; 10] = [
        &[],
        &["run"],
        &["serve"],
        &["setup"],
        &["build"],
        &["images"],
        &["session"],
        &["config"],
        &["cleanup"],
        &["completions"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = isol8(&args);
        assert!(out.status.success(), "{args:?}");
        let help = stdout(&out);
        let examples = help
            .split("Examples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{args:?} has no examples:\n{help}"));
        let lines = examples
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| l.trim_start().starts_with("isol8 ") || l.contains(" isol8 "))
            .count();
        assert!(lines >= 3, "{args:?} has {lines} examples:\n{help}");
    }
    let run = stdout(&isol8(&["run", "--help"]));
    for default in [
        "[default: the server's defaults.timeoutMs, 30000]",
        "[default: /sandbox]",
        "[default runtime: python]",
        "[default runtime: bash]",
    ] {
        assert!(run.contains(default), "{default} missing:\n{run}");
    }
}

/// Starts `isol8 serve` with only a key (every other setting its default) on a port of its own.
fn default_serve(key: &str) -> (std::process::Child, String) {
    let server = isol8_e2e::spawn_listening(
        isol8_cmd(&["serve", "--bind", "127.0.0.1", "--port", "0"])
            .env("ISOL8_API_KEY", key)
            .env("HOME", std::env::temp_dir())
            .env_remove("ISOL8_CONFIG")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    (server.child, server.base)
}

#[test]
fn a_default_server_runs_the_filtered_example() {
    let (mut server, host) = default_serve("filtered-default-key");
    let code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://api.openai.com/v1', timeout=5)\nexcept Exception as e:\n    print('refused' if '403' in str(e) else e)";
    let out = isol8(&[
        "run",
        "--host",
        &host,
        "--key",
        "filtered-default-key",
        "--net",
        "filtered",
        "--allow",
        "^api\\.openai\\.com$",
        "--deny",
        "^api\\.openai\\.com$",
        "--log-network",
        "-e",
        code,
    ]);
    isol8_e2e::signal_and_wait(&mut server, "TERM");
    // Filtered is allowed (no 403); the deny rule keeps this test's traffic on the machine.
    assert_eq!(stdout(&out), "refused\n", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("BLOCK GET api.openai.com/v1 (denied by rule)"),
        "{}",
        stderr(&out)
    );
}
