//! Faults: the Docker engine restarted mid-run, the server SIGKILLed mid-run, runtime images gone.
//! These disturb the whole Docker engine (restart it, untag images), so they are ignored by a plain
//! `cargo test`; the test command runs them alone, one at a time:
//! `cargo test -p isol8-e2e --test faults -- --ignored --test-threads=1`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isol8_e2e::{docker_ids, until_none_left, Server, KEY};
use serde_json::{json, Value};

async fn ready(server: &Server) -> (u16, Value) {
    let response = server
        .http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls until `python` runs again; panics after `within`.
async fn until_it_runs(server: &Server, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, result) = server
            .execute(&json!({"request": {"runtime": "python", "code": "print('back')"}}))
            .await;
        if status == 200 && result["stdout"] == "back\n" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not come back: {status} {result}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How the running Docker engine was started, so it can be started again the same way.
enum Engine {
    Systemd,
    Process(Vec<String>),
}

/// A stopped Docker engine, started again when this goes: even when a check fails while it is
/// down, the rest of the suite finds it running.
struct Stopped(Option<Engine>);

impl Stopped {
    fn start(mut self) {
        start_docker(self.0.take().expect("stopped"));
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(engine) = self.0.take() {
            start_docker(engine);
        }
    }
}

fn stop_docker() -> Stopped {
    Stopped(Some(stop_engine()))
}

fn stop_engine() -> Engine {
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if systemd {
        assert!(Command::new("systemctl")
            .args(["stop", "docker", "docker.socket"])
            .status()
            .unwrap()
            .success());
        return Engine::Systemd;
    }
    let pid = String::from_utf8(
        Command::new("pidof")
            .arg("dockerd")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(!pid.is_empty(), "no dockerd process to restart");
    let argv: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    Engine::Process(argv)
}

fn start_docker(engine: Engine) {
    match engine {
        Engine::Systemd => assert!(Command::new("systemctl")
            .args(["start", "docker"])
            .status()
            .unwrap()
            .success()),
        Engine::Process(argv) => {
            use std::os::unix::process::CommandExt;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open("/var/log/isol8-dockerd.log")
                .unwrap();
            // Its own process group, never waited for: the engine must outlive this test (init
            // adopts it when the test exits).
            #[expect(clippy::zombie_processes, reason = "dockerd outlives the test")]
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("dockerd starts again");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_answers() {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test]
#[ignore = "restarts the Docker engine; run by scripts/test.sh on its own"]
async fn the_docker_engine_restarted_mid_run_fails_the_run_clearly_and_the_server_recovers() {
    let server = Server::start(&[]).await;
    until_it_runs(&server, Duration::from_secs(30)).await;
    let long_run = json!({"request": {"runtime": "python",
        "code": "import time\nprint('started', flush=True)\ntime.sleep(120)"}});
    let stop_soon = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(stop_docker).await.unwrap()
    };
    // The run in flight ends promptly with an error that says what happened.
    let (answer, stopped) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), server.execute(&long_run)),
        stop_soon
    );
    let (status, result) = answer.expect("the run in flight ended");
    let said = format!("{status} {result}");
    assert!(
        (status == 200 && result["status"] == "error") || status == 503,
        "{said}"
    );
    assert!(
        said.contains("sandbox") || said.contains("Docker"),
        "{said}"
    );
    // While Docker is down: not ready, and executions are refused with 503, not hung.
    let (status, body) = ready(&server).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        server.execute(&json!({"request": {"runtime": "python", "code": "print(1)"}})),
    )
    .await
    .expect("refused promptly");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Docker"), "{body}");

    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();
    // The same server process recovers: ready again, runs again, and its pool refills.
    until_it_runs(&server, Duration::from_secs(60)).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let warm = server.metric("isol8_pool_ready_containers").await;
        if warm >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not refill: {warm} warm containers"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let instance = format!("isol8.instance={}", server.instance);
    drop(server);
    until_none_left(&instance, Duration::from_secs(20)).await;
}

#[tokio::test]
#[ignore = "kills a server with runs in flight; run by scripts/test.sh on its own"]
async fn a_server_killed_mid_run_leaves_nothing_once_the_next_one_starts() {
    let dead = Server::start(&[]).await;
    until_it_runs(&dead, Duration::from_secs(30)).await;
    let instance = format!("isol8.instance={}", dead.instance);
    // An ephemeral run and a session call in flight (their answers never come).
    let in_flight = [
        json!({"request": {"runtime": "python", "code": "import time\ntime.sleep(120)"}}),
        json!({"request": {"runtime": "bash", "code": "sleep 120"}, "sessionId": "doomed"}),
    ]
    .map(|body| {
        let request = dead
            .http
            .post(format!("{}/execute", dead.base))
            .bearer_auth(KEY)
            .json(&body);
        tokio::spawn(request.send())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let image = dead.image_of("python");
    let pid = dead.child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    for call in in_flight {
        assert!(call.await.unwrap().is_err(), "the dead server answered");
    }
    // What held a connection to the dead server goes with it (Docker removes it), but its session,
    // kept for the server's next process with the same identity (tests/tests/restart.rs)...
    let session = docker_ids("container", &format!("isol8.server={}", dead.server_id));
    assert_eq!(
        session.len(),
        1,
        "the session's container outlives the crash"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while docker_ids("container", &instance) != session {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            docker_ids("container", &instance)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ...but a container whose removal the crash cut short would stay: stopped, labelled as the
    // dead server's.
    let stopped = Command::new("docker")
        .args(["run", "--label", "isol8.managed=true", "--label", &instance])
        .args([
            "--label",
            "isol8.kind=sandbox",
            "--entrypoint",
            "true",
            &image,
        ])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert_eq!(docker_ids("container", &instance).len(), 2);
    // ...and the next server to start (another identity) removes the rest, not the session.
    let next = Server::start(&[]).await;
    until_it_runs(&next, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while docker_ids("container", &instance) != session {
        assert!(
            Instant::now() < deadline,
            "the stopped container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Dropping the dead server's handle removes its session (the test's).
    drop(dead);
    until_none_left(&instance, Duration::from_secs(10)).await;
}

/// Puts an untagged image's name back when the test ends, passed or not.
struct Retag {
    backup: String,
    original: String,
}

impl Drop for Retag {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["tag", &self.backup, &self.original])
            .status();
        let _ = Command::new("docker")
            .args(["rmi", &self.backup])
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test]
#[ignore = "untags a runtime image other tests use; run by scripts/test.sh on its own"]
async fn a_runtime_image_gone_makes_ready_false_and_runs_fail_clearly_until_it_is_back() {
    // No warm containers: every run needs the image.
    let server = Server::start(&[
        ("ISOL8_POOL_SIZE", "0"),
        ("ISOL8_REUSE_CONTAINERS", "false"),
    ])
    .await;
    until_it_runs(&server, Duration::from_secs(30)).await;
    let newest = Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "isol8-python",
        ])
        .output()
        .unwrap();
    let original = String::from_utf8(newest.stdout).unwrap();
    let original = original
        .lines()
        .next()
        .expect("an isol8-python image")
        .to_string();
    let backup = "isol8-faults-test-backup:python".to_string();
    assert!(Command::new("docker")
        .args(["tag", &original, &backup])
        .status()
        .unwrap()
        .success());
    let _restore = Retag {
        backup,
        original: original.clone(),
    };
    assert!(Command::new("docker")
        .args(["rmi", &original])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());

    let (status, body) = ready(&server).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("python"), "{body}");
    let (status, body) = server
        .execute(&json!({"request": {"runtime": "python", "code": "print(1)"}}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("isol8 setup"),
        "{body}"
    );
    // Other runtimes keep working.
    let (status, body) = server
        .execute(&json!({"request": {"runtime": "bash", "code": "echo ok"}}))
        .await;
    assert_eq!(
        (status, body["stdout"].as_str()),
        (200, Some("ok\n")),
        "{body}"
    );

    drop(_restore);
    until_it_runs(&server, Duration::from_secs(10)).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
}
