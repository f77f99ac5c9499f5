//! A real `isol8-server` process stopped with SIGTERM or killed with SIGKILL, then started again
//! with the same identity: its python, node and bash sessions keep their variables, files and
//! working directory, and `/sessions` lists them.

use isol8_e2e::{Server, KEY};
use serde_json::{json, Value};

async fn call(server: &Server, session: &str, runtime: &str, code: &str) -> Value {
    let (status, body) = server
        .execute(&json!({"request": {"runtime": runtime, "code": code}, "sessionId": session}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn sessions(server: &Server) -> Vec<String> {
    let listed: Value = server
        .http
        .get(format!("{}/sessions", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// (runtime, code that sets state, code that prints it, what it prints)
const CASES: [(&str, &str, &str, &str); 3] = [
    (
        "python",
        "import os\nx = 42\nos.makedirs('w', exist_ok=True)\nos.chdir('w')\nopen('kept.txt', 'w').write('kept')",
        "print(x, os.getcwd(), open('kept.txt').read())",
        "42 /sandbox/w kept\n",
    ),
    (
        "node",
        "globalThis.x = 42; const fs = require('fs'); fs.mkdirSync('w', {recursive: true}); process.chdir('w'); fs.writeFileSync('kept.txt', 'kept')",
        "console.log(x, process.cwd(), require('fs').readFileSync('kept.txt', 'utf8'))",
        "42 /sandbox/w kept\n",
    ),
    (
        "bash",
        "x=42; mkdir -p w; cd w; echo -n kept > kept.txt",
        "echo $x $PWD $(cat kept.txt)",
        "42 /sandbox/w kept\n",
    ),
];

async fn survives(signal: &str) {
    let data = tempfile::tempdir().unwrap();
    let id = format!(
        "e2e-restart-{}-{}",
        signal.to_lowercase(),
        std::process::id()
    );
    let data_dir = data.path().to_str().unwrap().to_string();
    let env = [
        ("ISOL8_SERVER_ID", id.as_str()),
        ("ISOL8_DATA_DIR", data_dir.as_str()),
    ];
    let server = Server::start(&env).await;
    for (runtime, set, _, _) in CASES {
        let first = call(&server, &format!("{signal}-{runtime}"), runtime, set).await;
        assert_eq!(first["sessionCreated"], true, "{runtime}: {first}");
    }
    server.kill(signal);

    let again = Server::start(&env).await;
    let mut expected: Vec<String> = CASES.iter().map(|c| format!("{signal}-{}", c.0)).collect();
    expected.sort();
    assert_eq!(sessions(&again).await, expected);
    for (runtime, _, show, shown) in CASES {
        let next = call(&again, &format!("{signal}-{runtime}"), runtime, show).await;
        assert_eq!(next["stdout"], shown, "{runtime} after {signal}: {next}");
        assert_eq!(next["sessionCreated"], false, "{runtime}: {next}");
        assert_eq!(next["sessionRestarted"], false, "{runtime}: {next}");
    }
    // Dropping `again` stops it and removes the sessions (they are this test's).
    drop(again);
    assert!(isol8_e2e::docker_ids("container", &format!("isol8.server={id}")).is_empty());
}

#[tokio::test]
async fn sessions_survive_a_sigterm_restart() {
    survives("TERM").await;
}

#[tokio::test]
async fn sessions_survive_a_sigkill_restart() {
    survives("KILL").await;
}
