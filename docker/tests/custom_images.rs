//! Custom images on the real Docker engine: packages from a local package index (served by a
//! container of ours, never the public internet) baked into a python image, found by exact set or
//! superset, and a failing build that names its step.

mod common;

use std::collections::BTreeMap;

use bollard::image::RemoveImageOptions;
use bollard::Docker;
use common::LocalIndex;
use isol8_api::{ExecutionOptions, ExecutionRequest, ExecutionStatus, Runtime};
use isol8_docker::{Engine, EngineConfig, Error, ImageConfig, PackageSet, PlanDefaults, RunPlan};

#[tokio::test]
async fn packages_from_a_local_index_are_baked_in_and_found_by_exact_set_or_superset() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let probe = Engine::connect(EngineConfig::default()).await.unwrap();
    let python_image = probe.built_runtimes().await.unwrap()[&Runtime::Python].clone();
    probe.shutdown().await;
    let index = LocalIndex::start(&docker, &python_image).await;

    let images = ImageConfig {
        package_index: BTreeMap::from([
            ("PIP_INDEX_URL".to_string(), index.url.clone()),
            ("PIP_TRUSTED_HOST".to_string(), index.host.clone()),
        ]),
        ..ImageConfig::default()
    };
    let engine = common::engine_without_pool(EngineConfig {
        images,
        ..EngineConfig::default()
    })
    .await;
    let both = PackageSet::parse(Runtime::Python, &["probe-b", "probe-a"]).unwrap();
    let steps = std::sync::Mutex::new(Vec::new());
    let built = engine
        .build_custom_image(
            Runtime::Python,
            &both,
            Some("isol8-test-probes"),
            false,
            false,
            &|p| steps.lock().unwrap().push(p),
        )
        .await;

    // A package the index does not have: the build fails at the install step and shows pip's words.
    let missing = PackageSet::parse(Runtime::Python, &["probe-c"]).unwrap();
    let failed = engine
        .build_custom_image(Runtime::Python, &missing, None, false, false, &|_| {})
        .await;
    index.remove().await;

    let tag = built.expect("custom image builds from the local index");
    assert!(tag.starts_with("isol8-custom-python:"), "{tag}");
    assert!(!steps.lock().unwrap().is_empty());
    let labels = docker
        .inspect_image("isol8-test-probes:latest")
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels["isol8.packages"], "probe-a,probe-b");
    assert_eq!(labels["isol8.kind"], "custom");

    match failed {
        Err(err @ Error::ImageBuild { .. }) => {
            let text = err.to_string();
            let Error::ImageBuild {
                step, output, hint, ..
            } = err
            else {
                unreachable!()
            };
            assert!(step.contains("RUN"), "step: {step}");
            assert!(output.contains("probe-c"), "output: {output}");
            // Readable: no escapes, Docker's bookkeeping gone, the step's command shown once.
            assert!(!text.contains('\u{1b}') && !text.contains("[0m"), "{text}");
            assert!(!text.contains("Running in"), "{text}");
            assert_eq!(text.matches("/opt/isol8/pip/pip").count(), 1, "{text}");
            assert!(text.contains("the command exited with code 1"), "{text}");
            assert_eq!(hint, None, "no known cause: {text}");
        }
        other => panic!("expected a failed build, got {other:?}"),
    }

    let listed = engine.custom_images().await.unwrap();
    let probes = listed
        .iter()
        .find(|i| i.tags.first() == Some(&tag))
        .unwrap_or_else(|| panic!("{tag} not in {listed:?}"));
    assert_eq!(probes.packages, ["probe-a", "probe-b"]);
    assert!(probes
        .tags
        .contains(&"isol8-test-probes:latest".to_string()));
    assert!(probes.current && probes.size_bytes > 0, "{probes:?}");

    // Exact set and subset both resolve to the image; a package it lacks is refused with advice.
    for wanted in [vec!["probe-a", "probe-b"], vec!["probe-b"]] {
        let request = ExecutionRequest {
            runtime: Runtime::Python,
            code: Some("import probe_b; print(probe_b.VALUE)".into()),
            install_packages: wanted.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let plan = RunPlan::from_request(
            &request,
            &ExecutionOptions::default(),
            &PlanDefaults::default(),
            "t",
        )
        .unwrap();
        let result = engine.execute(plan).await.unwrap();
        assert_eq!(result.status, ExecutionStatus::Completed, "{result:?}");
        assert_eq!(result.stdout, "probe_b\n", "{wanted:?}: {}", result.stderr);
    }
    let request = ExecutionRequest {
        runtime: Runtime::Python,
        code: Some("print(1)".into()),
        install_packages: vec!["probe-a".into(), "probe-z".into()],
        ..Default::default()
    };
    let plan = RunPlan::from_request(
        &request,
        &ExecutionOptions::default(),
        &PlanDefaults::default(),
        "t",
    )
    .unwrap();
    let refused = engine.execute(plan).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("isol8 build --base python --install probe-a,probe-z"),
        "{refused}"
    );
    engine.shutdown().await;

    let remove = Some(RemoveImageOptions {
        force: true,
        noprune: false,
    });
    let _ = docker
        .remove_image("isol8-test-probes:latest", remove, None)
        .await;
    let _ = docker.remove_image(&tag, remove, None).await;
}

/// An HTTPS server with a certificate of its own making (self-signed), as a private index or a
/// TLS-inspecting proxy would present one that nothing trusts.
const UNTRUSTED_TLS_SERVER: &str = r#"
import http.server, ssl, subprocess
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=isol8-test", "-keyout", "/tmp/key.pem", "-out", "/tmp/cert.pem"],
               check=True, capture_output=True)
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

#[tokio::test]
async fn a_build_against_an_untrusted_tls_index_says_in_one_line_what_failed_and_what_fixes_it() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let probe = Engine::connect(EngineConfig::default()).await.unwrap();
    let python_image = probe.built_runtimes().await.unwrap()[&Runtime::Python].clone();
    probe.shutdown().await;
    let server = common::Served::start(&docker, &python_image, &["-c", UNTRUSTED_TLS_SERVER]).await;
    // The address as one decimal number: pip (with truststore) cannot check a certificate for
    // a dotted IP at all (it fails before verifying, see the hint for that), and the build has
    // no DNS for a name. `2886729730` resolves like 172.16.0.2 without being seen as an IP.
    let number: u32 = server.host.parse::<std::net::Ipv4Addr>().unwrap().into();
    let address = format!("{number}:8443");

    let images = ImageConfig {
        package_index: BTreeMap::from([(
            "PIP_INDEX_URL".to_string(),
            format!("https://{address}/simple"),
        )]),
        ..ImageConfig::default()
    };
    let engine = common::engine_without_pool(EngineConfig {
        images,
        ..EngineConfig::default()
    })
    .await;
    // Unique, so no image from an earlier run is found instead of building.
    let name = format!("probe-tls{}", std::process::id());
    let packages = PackageSet::parse(Runtime::Python, &[name.as_str()]).unwrap();
    let failed = engine
        .build_custom_image(Runtime::Python, &packages, None, false, false, &|_| {})
        .await;
    engine.shutdown().await;
    server.remove().await;

    let err = failed.expect_err("the index's certificate is trusted by nothing");
    let text = err.to_string();
    let Error::ImageBuild { hint, .. } = err else {
        panic!("expected a failed build, got {text}");
    };
    let hint = hint.unwrap_or_else(|| panic!("no hint in: {text}"));
    assert!(!hint.contains('\n'), "{hint}");
    assert!(
        hint.starts_with(&format!(
            "TLS certificate verification failed connecting to {address}: set ISOL8_EXTRA_CA_CERTS="
        )),
        "{hint}"
    );
    assert!(text.ends_with(&format!("\nhint: {hint}")), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}
