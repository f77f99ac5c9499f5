//! Images a request names (`options.image`) that are not isol8's: allowed only by the server's
//! `allowedImages` patterns (the same answer for a refused image whether or not it exists),
//! never pulled, and run with every hardening setting whatever the image says. The images are
//! built here from isol8's bootstrapped root, as an operator's own image would be made.

mod common;

use std::process::{Command, Stdio};

use isol8_server::ServerConfig;
use serde_json::{json, Value};

use common::Server;

/// An image this test builds (`FROM` isol8's root with `steps`), labelled as isol8's so a
/// cleanup may remove it, and removed when dropped.
struct TestImage {
    tag: String,
}

impl TestImage {
    fn build(name: &str, steps: &str) -> TestImage {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let rootfs = isol8_docker::ImageBuilder::new(docker, isol8_docker::ImageConfig::default())
            .rootfs_tag();
        let tag = format!(
            "isol8-test-foreign-{name}:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let dockerfile = format!("FROM {rootfs}\n{steps}\n");
        let mut build = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .args([
                "--label",
                "isol8.managed=true",
                "--label",
                "isol8.kind=test",
            ])
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        build
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        let out = build.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "building {tag} (is {rootfs} there? `isol8 setup` makes it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestImage { tag }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A server allowing `patterns` besides isol8's images.
async fn allowing(patterns: &[&str]) -> Server {
    Server::start(ServerConfig {
        allowed_images: patterns.iter().map(|p| p.to_string()).collect(),
        ..common::config()
    })
    .await
}

async fn execute(server: &Server, runtime: &str, code: &str, image: &str) -> (u16, Value) {
    let response = server
        .post(
            "/execute",
            json!({"request": {"runtime": runtime, "code": code}, "options": {"image": image}}),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// What a bash program learns of its sandbox: who it runs as, what it may do, and whether a
/// setuid-root program gives it root.
const HARDENING: &str = r#"
echo "uid=$(id -u)"
echo "home=$HOME"
echo "setuid=$(/usr/local/bin/suid-id -u)"
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t'
touch /etc/planted 2>/dev/null && echo "root writable" || echo "root read-only"
echo left > /sandbox/left; echo left > /tmp/left; echo left > /dev/shm/left
"#;

const LEFTOVERS: &str = "ls -A /sandbox /tmp /dev/shm; echo uid=$(id -u)";

/// Runs HARDENING and then LEFTOVERS in `image` and checks every setting held and the second run
/// reused the first one's container after a reset that left nothing.
async fn runs_hardened_and_resets_clean(server: &Server, image: &str) {
    let (status, first) = execute(server, "bash", HARDENING, image).await;
    assert_eq!(status, 200, "{first}");
    let out = first["stdout"].as_str().unwrap();
    assert_eq!(first["exitCode"], 0, "{first}");
    let uid = out
        .lines()
        .find_map(|l| l.strip_prefix("uid="))
        .unwrap_or_else(|| panic!("{first}"));
    assert_ne!(
        uid, "0",
        "the image says USER root; the sandbox must not be root: {out}"
    );
    assert!(out.contains("home=/sandbox\n"), "{out}");
    assert!(
        out.contains(&format!("setuid={uid}\n")),
        "setuid gave privileges: {out}"
    );
    assert!(out.contains("CapEff:0000000000000000\n"), "{out}");
    assert!(out.contains("NoNewPrivs:1\n"), "{out}");
    assert!(out.contains("Seccomp:2\n"), "{out}");
    assert!(out.contains("root read-only\n"), "{out}");

    // The reset runs in the background after the answer: give it time, then the same key gets
    // the same container back, wiped.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (status, second) = execute(server, "bash", LEFTOVERS, image).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["containerId"], first["containerId"],
        "the container was not reused, so its reset did not verify: {second}"
    );
    let out = second["stdout"].as_str().unwrap();
    assert!(!out.contains("left"), "{out}");
    assert!(out.contains(&format!("uid={uid}")), "{out}");
}

#[tokio::test]
async fn an_image_allowed_images_does_not_match_gets_one_answer_whether_or_not_it_exists() {
    let foreign = TestImage::build("refused", "USER root");
    let missing = format!(
        "isol8-test-foreign-refused:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let server = allowing(&[]).await;
    let (status_existing, existing) = execute(&server, "bash", "echo ran", &foreign.tag).await;
    let (status_missing, absent) = execute(&server, "bash", "echo ran", &missing).await;
    assert_eq!(status_existing, 403, "{existing}");
    assert_eq!(status_missing, 403, "{absent}");
    assert_eq!(existing["code"], absent["code"]);
    assert_eq!(existing["code"], "policy_violation");
    // Word for word but the name.
    let message = |body: &Value, name: &str| body["error"].as_str().unwrap().replace(name, "IMAGE");
    assert_eq!(message(&existing, &foreign.tag), message(&absent, &missing));
    assert!(
        message(&existing, &foreign.tag).contains("options.image \"IMAGE\" is not allowed"),
        "{existing}"
    );
    server.stop().await;

    // Allowed by a pattern: the one that exists runs, the missing one is named as missing.
    let server = allowing(&["isol8-test-foreign-refused:*"]).await;
    let (status, ran) = execute(&server, "bash", "echo ran", &foreign.tag).await;
    assert_eq!(
        (status, ran["stdout"].as_str()),
        (200, Some("ran\n")),
        "{ran}"
    );
    let (status, absent) = execute(&server, "bash", "echo ran", &missing).await;
    assert_eq!(status, 404, "{absent}");
    let error = absent["error"].as_str().unwrap();
    assert!(
        error.contains(&missing) && error.contains("never pulls"),
        "{absent}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_image_runs_hardened_whatever_its_user_and_a_missing_interpreter_is_named() {
    // An image of another name that keeps python, says USER root and holds a setuid-root program.
    let image = TestImage::build(
        "root",
        "RUN cp /usr/bin/id /usr/local/bin/suid-id && chmod 4755 /usr/local/bin/suid-id\nUSER root",
    );
    let server = allowing(&["isol8-test-foreign-*"]).await;
    runs_hardened_and_resets_clean(&server, &image.tag).await;

    let (status, python) = execute(&server, "python", "print(6 * 7)", &image.tag).await;
    assert_eq!(
        (status, python["stdout"].as_str()),
        (200, Some("42\n")),
        "{python}"
    );

    // No node in it: the run says which program is missing, and from which image.
    let (status, node) = execute(&server, "node", "console.log(1)", &image.tag).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["status"], "error", "{node}");
    let stderr = node["stderr"].as_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "node could not be started: it is not in image {}",
            image.tag
        )) && stderr.contains("the node runtime runs code with it"),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test]
async fn code_runs_in_an_image_without_python_as_a_non_root_uid_and_resets_clean() {
    let image = TestImage::build(
        "nopython",
        "RUN cp /usr/bin/id /usr/local/bin/suid-id && chmod 4755 /usr/local/bin/suid-id \
         && rm -rf /usr/bin/python3* /usr/lib/python3*\nUSER root",
    );
    let server = allowing(&["isol8-test-foreign-*"]).await;
    runs_hardened_and_resets_clean(&server, &image.tag).await;

    let (status, python) = execute(&server, "python", "print(1)", &image.tag).await;
    assert_eq!(status, 200, "{python}");
    assert_eq!(python["status"], "error", "{python}");
    let stderr = python["stderr"].as_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "python3 could not be started: it is not in image {}",
            image.tag
        )),
        "{stderr}"
    );
    server.stop().await;
}
