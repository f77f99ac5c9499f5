//! Custom images on the real Docker engine: packages from a local package index (served by a
//! container of ours, never the public internet) baked into a python image, found by exact set or
//! superset, and a failing build that names its step.

mod common;

use std::collections::BTreeMap;

use bollard::image::RemoveImageOptions;
use bollard::Docker;
use common::LocalIndex;
use isol8_api::{ExecutionOptions, ExecutionRequest, ExecutionStatus, Runtime};
use isol8_docker::{Engine, EngineConfig, Error, ImageConfig, Limits, PackageSet, RunPlan};

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
        Err(Error::ImageBuild { step, output, .. }) => {
            assert!(step.contains("RUN"), "step: {step}");
            assert!(output.contains("probe-c"), "output: {output}");
        }
        other => panic!("expected a failed build, got {other:?}"),
    }

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
            &Limits::default(),
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
        &Limits::default(),
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
