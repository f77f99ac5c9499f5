//! `filtered` networking on the real engine: only the proxy is reachable, and it lets through exactly
//! what the rules allow. The "outside" is a web server in a container of ours on Docker's bridge; no
//! test traffic leaves the machine.

mod common;

use isol8_api::{ExecutionOptions, ExecutionRequest, NetworkFilter, NetworkMode, Runtime};
use isol8_docker::{Engine, EngineConfig, PlanDefaults, RunPlan};

/// Tries every way out and prints one line per attempt.
const PROBE: &str = r#"
import os, socket, urllib.request
WEB = os.environ["WEB"]
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r: return "ok"
    except Exception as e: return "refused" if "403" in str(e) else "error"
print("web", get("http://%s:8000/debian_version" % WEB))
print("metadata", get("http://169.254.169.254/latest/meta-data/"))
s = socket.socket(); s.settimeout(1)
try: s.connect((WEB, 8000)); print("raw reachable")
except OSError: print("raw blocked")
try: socket.getaddrinfo("example.com", 80); print("dns works")
except OSError: print("dns blocked")
try:
    s6 = socket.socket(socket.AF_INET6); s6.settimeout(1); s6.connect(("2606:4700:4700::1111", 443)); print("ipv6 reachable")
except OSError: print("ipv6 blocked")
print("bridge-host", get("http://172.17.0.1:%s/" % os.environ.get("HOST_PORT", "2375")))
proxy = os.environ["HTTP_PROXY"].split("//")[1].split(":")[0]
gateway = proxy.rsplit(".", 1)[0] + ".1"
s = socket.socket(); s.settimeout(1)
try: s.connect((gateway, 22)); print("gateway reachable")
except OSError: print("gateway blocked")
s = socket.socket(); s.settimeout(1)
try: s.connect((proxy, 22)); print("proxy-host reachable")
except OSError: print("proxy-host blocked")
"#;

async fn probe(
    engine: &Engine,
    web: &common::Served,
    allow: &[&str],
    deny: &[&str],
) -> (String, Vec<isol8_api::NetworkLogEntry>) {
    let request = ExecutionRequest {
        runtime: Runtime::Python,
        code: Some(PROBE.into()),
        env: [("WEB".to_string(), web.host.clone())].into(),
        ..Default::default()
    };
    let options = ExecutionOptions {
        network: Some(NetworkMode::Filtered),
        network_filter: Some(NetworkFilter {
            whitelist: allow.iter().map(|s| s.to_string()).collect(),
            blacklist: deny.iter().map(|s| s.to_string()).collect(),
        }),
        log_network: Some(true),
        ..Default::default()
    };
    let plan =
        RunPlan::from_request(&request, &options, &PlanDefaults::default(), "net-test").unwrap();
    let result = engine.execute(plan).await.unwrap();
    assert_eq!(result.exit_code, 0, "{}", result.stderr);
    (result.stdout, result.network_logs.unwrap_or_default())
}

#[tokio::test]
async fn filtered_reaches_only_what_the_rules_allow_through_the_proxy() {
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let image = engine.built_runtimes().await.unwrap()[&Runtime::Python].clone();
    let web = common::Served::start(
        &docker,
        &image,
        &["-m", "http.server", "8000", "--directory", "/etc"],
    )
    .await;
    let web_ip = web.host.clone();
    let exact_ip = format!("^{}$", web.host.replace('.', "\\."));

    // The web server's address is private: reachable only because a rule names it exactly.
    let (allowed, logs) = probe(&engine, &web, &[&exact_ip, ".*", r"^172\.17\.0\.1$"], &[]).await;
    // Deny beats allow; an empty allow list allows nothing; a broad pattern does not reach private
    // or link-local (metadata) addresses.
    let (denied, _) = probe(&engine, &web, &[&exact_ip], &[&exact_ip]).await;
    let (empty, _) = probe(&engine, &web, &[], &[]).await;
    let (broad, _) = probe(&engine, &web, &[".*"], &[]).await;
    web.remove().await;
    engine.shutdown().await;

    assert!(allowed.contains("web ok"), "{allowed}");
    for out in [&allowed, &denied, &empty, &broad] {
        assert!(out.contains("metadata refused"), "{out}");
        assert!(out.contains("raw blocked"), "{out}");
        assert!(out.contains("dns blocked"), "{out}");
        assert!(out.contains("ipv6 blocked"), "{out}");
        assert!(out.contains("proxy-host blocked"), "{out}");
        assert!(out.contains("gateway blocked"), "{out}");
        assert!(!out.contains("bridge-host ok"), "{out}");
    }
    assert!(denied.contains("web refused"), "{denied}");
    assert!(empty.contains("web refused"), "{empty}");
    assert!(broad.contains("web refused"), "{broad}");

    let web_log = logs
        .iter()
        .find(|l| l.host == web_ip)
        .expect("the web request is logged");
    assert!(
        web_log.action == isol8_api::NetworkAction::Allow
            && web_log.method == "GET"
            && web_log.path.as_deref() == Some("/debian_version"),
        "{web_log:?}"
    );
    let metadata_log = logs
        .iter()
        .find(|l| l.host == "169.254.169.254")
        .expect("the metadata request is logged");
    assert!(
        metadata_log.action == isol8_api::NetworkAction::Block,
        "{metadata_log:?}"
    );
    assert!(
        metadata_log
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("never reachable"),
        "{metadata_log:?}"
    );

    // Nothing of the runs is left: no proxy, no network.
    let networks = docker.list_networks::<String>(None).await.unwrap();
    let ours: Vec<_> = networks
        .iter()
        .filter(|n| {
            n.labels
                .as_ref()
                .and_then(|l| l.get("isol8.instance"))
                .map(String::as_str)
                == Some(engine.instance_id())
        })
        .collect();
    assert!(ours.is_empty(), "networks left: {ours:?}");
}

/// Every request of a run is in its network log and among its events, also those made just
/// before it ends: the log is read up to the proxy's end line, not as far as Docker has copied
/// the proxy's output when the run ends (it copies on its own time).
#[tokio::test]
async fn the_network_log_holds_every_request_up_to_the_end_of_the_run() {
    const REQUESTS: usize = 40;
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let code = format!(
        r#"
import urllib.request
for i in range({REQUESTS}):
    try: urllib.request.urlopen("http://blocked-%d.invalid/p" % i, timeout=5)
    except Exception as e: assert "403" in str(e), e
"#
    );
    let request = ExecutionRequest {
        runtime: Runtime::Python,
        code: Some(code),
        ..Default::default()
    };
    let options = ExecutionOptions {
        network: Some(NetworkMode::Filtered),
        network_filter: Some(NetworkFilter {
            whitelist: vec![r"^allowed\.invalid$".into()],
            blacklist: vec![],
        }),
        log_network: Some(true),
        ..Default::default()
    };
    let expected: Vec<String> = (0..REQUESTS)
        .map(|i| format!("blocked-{i}.invalid"))
        .collect();
    // Four at once, so that Docker's copying lags as it does on a busy host.
    let run = |round: usize| {
        let (engine, request, options, expected) = (&engine, &request, &options, &expected);
        async move {
            let plan = RunPlan::from_request(request, options, &PlanDefaults::default(), "net-log")
                .unwrap();
            let mut streamed = Vec::new();
            let events = engine.execute_stream(plan).await.unwrap();
            let result = Engine::collect_observed(events, |event| {
                if let isol8_docker::RunEvent::Network(entry) = event {
                    streamed.push(entry.host.clone());
                }
            })
            .await
            .unwrap();
            assert_eq!(result.exit_code, 0, "run {round}: {}", result.stderr);
            let logs = result.network_logs.expect("a network log");
            let logged: Vec<String> = logs.iter().map(|entry| entry.host.clone()).collect();
            assert_eq!(&logged, expected, "run {round}: the result's log");
            assert_eq!(&streamed, expected, "run {round}: the streamed events");
            assert!(
                logs.iter()
                    .all(|entry| entry.action == isol8_api::NetworkAction::Block
                        && entry.path.as_deref() == Some("/p")),
                "run {round}: {logs:?}"
            );
        }
    };
    futures::future::join_all((0..4).map(run)).await;
    engine.shutdown().await;
}

/// Runs `code` in filtered mode with the local index as pip's, installing `packages` at run time
/// through the proxy; `allow` is the request's allow list, `registry` the server's registry hosts.
async fn install_run(
    engine: &Engine,
    index: &common::LocalIndex,
    packages: &[&str],
    allow: &[String],
    registry: &[String],
    code: &str,
) -> isol8_api::ExecutionResult {
    install_run_on(
        NetworkMode::Filtered,
        engine,
        index,
        packages,
        allow,
        registry,
        code,
    )
    .await
}

async fn install_run_on(
    network: NetworkMode,
    engine: &Engine,
    index: &common::LocalIndex,
    packages: &[&str],
    allow: &[String],
    registry: &[String],
    code: &str,
) -> isol8_api::ExecutionResult {
    let request = ExecutionRequest {
        runtime: Runtime::Python,
        code: Some(code.into()),
        install_packages: packages.iter().map(|s| s.to_string()).collect(),
        env: [
            ("PIP_INDEX_URL".to_string(), index.url.clone()),
            ("PIP_TRUSTED_HOST".to_string(), index.host.clone()),
        ]
        .into(),
        ..Default::default()
    };
    let options = ExecutionOptions {
        network: Some(network),
        network_filter: Some(NetworkFilter {
            whitelist: allow.to_vec(),
            blacklist: vec![],
        }),
        log_network: Some(true),
        ..Default::default()
    };
    let mut plan =
        RunPlan::from_request(&request, &options, &PlanDefaults::default(), "install-test")
            .unwrap();
    plan.registry_hosts = registry.to_vec();
    engine.execute(plan).await.unwrap()
}

const USE_PROBE: &str = "import probe_a\nprint(probe_a.VALUE)";

#[tokio::test]
async fn packages_install_at_run_time_through_the_proxy_and_fail_cleanly_when_not_allowed() {
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let image = engine.built_runtimes().await.unwrap()[&Runtime::Python].clone();
    let index = common::LocalIndex::start(&docker, &image).await;
    let exact = format!("^{}$", index.host.replace('.', "\\."));

    let exact = std::slice::from_ref(&exact);
    let installed = install_run(&engine, &index, &["probe-a"], exact, &[], USE_PROBE).await;
    let missing = install_run(&engine, &index, &["probe-missing"], exact, &[], USE_PROBE).await;
    let not_allowed = install_run(&engine, &index, &["probe-a"], &[], &[], USE_PROBE).await;
    // The server's registry hosts open the index to a run that installs, and to no other run.
    let fetch = format!(
        "import urllib.request\ntry:\n    print(urllib.request.urlopen('{}', timeout=5).status)\nexcept Exception as e:\n    print('refused', e)",
        index.url
    );
    let via_registry = install_run(&engine, &index, &["probe-a"], &[], exact, USE_PROBE).await;
    let no_install = install_run(&engine, &index, &[], &[], exact, &fetch).await;
    // Over the host network the install needs no proxy, as in the reference.
    let over_host = install_run_on(
        NetworkMode::Host,
        &engine,
        &index,
        &["probe-a"],
        &[],
        &[],
        USE_PROBE,
    )
    .await;
    index.remove().await;
    engine.shutdown().await;

    for installed in [&installed, &via_registry, &over_host] {
        assert_eq!(
            installed.stdout, "probe_a\n",
            "{}\n{:?}",
            installed.stderr, installed.network_logs
        );
    }
    let refused = no_install.network_logs.clone().unwrap_or_default();
    assert!(
        no_install.stdout.starts_with("refused")
            && refused
                .iter()
                .any(|l| l.action == isol8_api::NetworkAction::Block
                    && l.reason.as_deref() == Some("not in the allow list")),
        "a run that installs nothing reached the registry: {no_install:?}"
    );
    for failed in [&missing, &not_allowed] {
        assert_eq!(
            failed.status,
            isol8_api::ExecutionStatus::Error,
            "{failed:?}"
        );
        assert!(
            failed.stdout.is_empty(),
            "the program must not run: {failed:?}"
        );
    }
    assert!(
        missing.stderr.contains("probe-missing"),
        "the installer's words: {}",
        missing.stderr
    );
    // pip reports the refused index as "no versions"; the proxy's log says why.
    assert!(
        not_allowed
            .stderr
            .contains("No matching distribution found for probe-a"),
        "{}",
        not_allowed.stderr
    );
    let blocked = not_allowed.network_logs.clone().unwrap_or_default();
    assert!(
        blocked
            .iter()
            .any(|l| l.action == isol8_api::NetworkAction::Block
                && l.reason.as_deref() == Some("not in the allow list")),
        "{blocked:?}"
    );
}
