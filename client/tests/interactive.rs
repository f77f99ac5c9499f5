//! `isol8 run -i` through the built binary: a pipe's lines reach the program one at a time while
//! it runs, Ctrl-C (SIGINT to the CLI) reaches the program, a second one exits the CLI, locally
//! and against a remote `isol8 serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Long enough for a first run that starts a container on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

/// A running `isol8` with a pipe on its stdin and its stdout read line by line.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(args)
            .env_remove("ISOL8_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run isol8");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The program's next stdout line, failing the test (with the CLI's stderr) after `WAIT`.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no output line; stderr: {}", self.stderr_text());
            }
        }
    }

    fn stderr_text(&mut self) -> String {
        let handle = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        handle.join().unwrap()
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The CLI's exit status (within `limit`) and its stderr; the stdin pipe stays as it is.
    fn exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr_text());
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "isol8 did not exit within {limit:?}; stderr: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Two lines, each answered before the next is written (so input reaches the program while it
/// runs, not all at once at the start), then the rest up to end-of-file and an exit code.
fn converse(args: &[&str]) {
    let code = "import sys\nfor _ in range(2):\n    print('got', input(), flush=True)\n\
                print('rest', repr(sys.stdin.read()), flush=True)\nsys.exit(3)";
    let mut all = args.to_vec();
    all.extend(["-i", "-e", code]);
    let mut run = Running::start(&all);
    run.send("one\n");
    assert_eq!(run.line(), "got one");
    run.send("two\n");
    assert_eq!(run.line(), "got two");
    run.send("tail");
    drop(run.stdin.take()); // end-of-file
    assert_eq!(run.line(), "rest 'tail'");
    let (status, stderr) = run.exit(WAIT);
    assert_eq!(status.code(), Some(3), "{stderr}");
}

#[test]
fn each_line_of_a_pipe_reaches_the_program_while_it_runs() {
    converse(&["run"]);
}

#[test]
fn ctrl_c_reaches_the_program_as_sigint() {
    let code = "import time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n\
                except KeyboardInterrupt:\n    print('caught SIGINT', flush=True)";
    let mut run = Running::start(&["run", "-i", "-e", code]);
    assert_eq!(run.line(), "ready");
    run.interrupt();
    assert_eq!(run.line(), "caught SIGINT");
    let (status, stderr) = run.exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_second_ctrl_c_exits_the_cli() {
    let code = "import signal, time\n\
                signal.signal(signal.SIGINT, lambda *_: print('got one', flush=True))\n\
                print('ready', flush=True)\nwhile True:\n    time.sleep(1)";
    let mut run = Running::start(&["run", "-i", "-e", code]);
    assert_eq!(run.line(), "ready");
    run.interrupt();
    assert_eq!(run.line(), "got one");
    run.interrupt();
    // Well before the run's own 30 s timeout.
    let (status, stderr) = run.exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
}

/// Starts `isol8 serve` on a loopback port of its own with `key`.
fn serve(key: &str) -> (Child, String) {
    let server = isol8_e2e::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .env("ISOL8_API_KEY", key)
            .env("HOME", std::env::temp_dir())
            .env_remove("ISOL8_CONFIG")
            .stdin(Stdio::null()),
        WAIT,
    );
    (server.child, server.base)
}

#[test]
fn interactive_runs_against_a_remote_server_with_its_key() {
    let (mut server, host) = serve("interactive-remote-key");
    converse(&["run", "--host", &host, "--key", "interactive-remote-key"]);
    // Refused on the upgrade request, with the server's error.
    let out = Command::new(env!("CARGO_BIN_EXE_isol8"))
        .args([
            "run", "-i", "--host", &host, "--key", "wrong", "-e", "print(1)",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    // Refused by the server's policy once the socket is open: its message, status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_isol8"))
        .args([
            "run",
            "-i",
            "--host",
            &host,
            "--key",
            "interactive-remote-key",
        ])
        .args(["--net", "host", "-e", "print(1)"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[ERR]") && stderr.contains("host"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    isol8_e2e::signal_and_wait(&mut server, "TERM");
}
