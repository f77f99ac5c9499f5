//! `isol8 login`, `logout`, `keys` and `audit` against a real `isol8 serve --auth-db`, and the key
//! resolution every remote command shares (`--key`, `ISOL8_API_KEY`, stored credentials).

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

const MASTER: &str = "login-test-master-key-0123";

struct Serve {
    child: Child,
    host: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        isol8_e2e::signal_and_wait(&mut self.child, "TERM");
    }
}

fn serve(home: &Path) -> Serve {
    let db = home.join("server/auth.db");
    let server = isol8_e2e::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_isol8"))
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .arg("--auth-db")
            .arg(&db)
            .env("ISOL8_API_KEY", MASTER)
            .env("ISOL8_POOL_SIZE", "0")
            .env("HOME", home)
            .env_remove("ISOL8_CONFIG")
            .current_dir(home),
        Duration::from_secs(60),
    );
    Serve {
        child: server.child,
        host: server.base,
    }
}

/// `isol8 ARGS` with `HOME` set and no key in the environment unless `env` gives one.
fn isol8(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_isol8"));
    command
        .args(args)
        .env("HOME", home)
        .env_remove("ISOL8_API_KEY")
        .env_remove("ISOL8_HOST");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run isol8")
}

fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn credentials(home: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(home.join(".isol8/credentials.json")).unwrap())
        .unwrap()
}

#[test]
fn login_stores_a_token_that_later_commands_use_and_logout_forgets_it() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let server = serve(home.path());
    let host = server.host.as_str();

    let login = isol8(
        home.path(),
        &["login", "--host", host, "--key", MASTER, "--ttl", "600000"],
        &[],
    );
    assert!(login.status.success(), "{}", err(&login));
    assert!(err(&login).contains("[OK] Logged in"), "{}", err(&login));
    let path = home.path().join(".isol8/credentials.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored = credentials(home.path());
    assert_eq!(stored["host"], host);
    let token = stored["token"].as_str().unwrap();
    assert!(token.starts_with("isol8_") && token.len() == 70, "{stored}");
    assert!(stored["expiresAt"].is_string() && stored["keyId"].is_string());

    // No --key, no ISOL8_API_KEY: the stored token for this host.
    let listed = isol8(home.path(), &["session", "list", "--host", host], &[]);
    assert!(listed.status.success(), "{}", err(&listed));
    assert!(
        err(&listed).contains("No active sessions"),
        "{}",
        err(&listed)
    );
    // A flag wins over the stored token.
    let wrong = isol8(
        home.path(),
        &["session", "list", "--host", host, "--key", "wrong-key"],
        &[],
    );
    assert!(!wrong.status.success());
    assert!(err(&wrong).contains("Invalid API key"), "{}", err(&wrong));
    // The stored token is not the master key.
    let refused = isol8(home.path(), &["keys", "list", "--host", host], &[]);
    assert!(!refused.status.success());
    assert!(
        err(&refused).contains("Master key required for this operation"),
        "{}",
        err(&refused)
    );
    // Another host does not get this host's token.
    let elsewhere = isol8(
        home.path(),
        &["session", "list", "--host", "http://127.0.0.1:9"],
        &[],
    );
    assert!(
        err(&elsewhere).contains("API key required"),
        "{}",
        err(&elsewhere)
    );

    // An expired login: a warning, and the server's refusal.
    let short = isol8(
        home.path(),
        &["login", "--host", host, "--key", MASTER, "--ttl", "1"],
        &[],
    );
    assert!(short.status.success(), "{}", err(&short));
    std::thread::sleep(Duration::from_millis(20));
    let expired = isol8(home.path(), &["session", "list", "--host", host], &[]);
    assert!(!expired.status.success());
    assert!(
        err(&expired).contains("[WARN] The stored credentials for")
            && err(&expired).contains("expired"),
        "{}",
        err(&expired)
    );

    let logout = isol8(home.path(), &["logout"], &[]);
    assert!(logout.status.success());
    assert!(
        err(&logout).contains("[OK] Credentials removed"),
        "{}",
        err(&logout)
    );
    assert!(!path.exists());
    let again = isol8(home.path(), &["logout"], &[]);
    assert!(err(&again).contains("[INFO] No stored credentials found."));
    let none = isol8(home.path(), &["session", "list", "--host", host], &[]);
    assert!(!none.status.success());
    assert!(err(&none).contains("API key required"), "{}", err(&none));
}

#[test]
fn keys_are_created_listed_and_revoked_and_audit_shows_the_runs() {
    let home = tempfile::tempdir().unwrap();
    let server = serve(home.path());
    let host = server.host.as_str();
    let master = [("ISOL8_API_KEY", MASTER)];

    let created = isol8(
        home.path(),
        &[
            "keys",
            "create",
            "--host",
            host,
            "--name",
            "ci",
            "--tenant",
            "team-a",
            "--max-sessions",
            "3",
        ],
        &master,
    );
    assert!(created.status.success(), "{}", err(&created));
    let key = out(&created).trim().to_string();
    assert!(key.starts_with("isol8_") && key.len() == 70, "{key}");
    assert!(err(&created).contains("shown only this once"));

    let run = isol8(
        home.path(),
        &[
            "run",
            "--host",
            host,
            "--key",
            &key,
            "-r",
            "bash",
            "-e",
            "echo from-ci",
        ],
        &[],
    );
    assert_eq!(out(&run), "from-ci\n", "{}", err(&run));

    let listed = isol8(
        home.path(),
        &["keys", "list", "--host", host, "--json"],
        &master,
    );
    assert!(listed.status.success(), "{}", err(&listed));
    assert!(!out(&listed).contains(&key));
    let list: serde_json::Value = serde_json::from_str(&out(&listed)).unwrap();
    let entry = &list["keys"][0];
    assert_eq!(entry["tenantId"], "team-a");
    assert_eq!(entry["limits"]["maxSessions"], 3);
    let id = entry["id"].as_str().unwrap().to_string();
    let table = isol8(home.path(), &["keys", "list", "--host", host], &master);
    let table = out(&table);
    assert!(
        table.starts_with("ID  ") || table.starts_with("ID "),
        "{table}"
    );
    assert!(
        table.contains("team-a") && table.contains("active"),
        "{table}"
    );

    let audit = isol8(
        home.path(),
        &["audit", "--host", host, "--tenant", "team-a", "--json"],
        &master,
    );
    assert!(audit.status.success(), "{}", err(&audit));
    let rows: serde_json::Value = serde_json::from_str(&out(&audit)).unwrap();
    let rows = rows["entries"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["keyId"], id.as_str());
    assert_eq!(rows[0]["status"], "completed");
    assert!(!out(&audit).contains("from-ci"));
    let audit_table = isol8(home.path(), &["audit", "--host", host], &master);
    assert!(
        out(&audit_table).contains("TENANT"),
        "{}",
        out(&audit_table)
    );
    assert!(
        out(&audit_table).contains("team-a"),
        "{}",
        out(&audit_table)
    );
    let bad_since = isol8(
        home.path(),
        &["audit", "--host", host, "--since", "soon"],
        &master,
    );
    assert!(!bad_since.status.success());
    assert!(err(&bad_since).contains("since"), "{}", err(&bad_since));

    let revoked = isol8(
        home.path(),
        &["keys", "revoke", "--host", host, &id],
        &master,
    );
    assert!(revoked.status.success(), "{}", err(&revoked));
    let after = isol8(
        home.path(),
        &[
            "run",
            "--host",
            host,
            "--key",
            &key,
            "-r",
            "bash",
            "-e",
            "echo again",
        ],
        &[],
    );
    assert!(!after.status.success());
    assert!(err(&after).contains("Invalid API key"), "{}", err(&after));
    let gone = isol8(
        home.path(),
        &["keys", "revoke", "--host", host, "no-such-key"],
        &master,
    );
    assert!(!gone.status.success());
    assert!(err(&gone).contains("Key not found"), "{}", err(&gone));
}
