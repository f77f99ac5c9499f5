//! The agent volume on the real engine: made once per engine, mounted read-only into every
//! sandbox and filtered-mode proxy, holding an agent that needs nothing from the image (it runs in
//! an image with no C library at all), and filled safely by several servers at once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::{
    Config, CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::image::{BuildImageOptions, RemoveImageOptions};
use bollard::models::{HostConfig, Mount, MountTypeEnum};
use bollard::system::EventsOptions;
use bollard::Docker;
use futures::StreamExt;
use isol8_api::{ExecutionOptions, ExecutionRequest, NetworkMode, Runtime};
use isol8_docker::{EngineConfig, PlanDefaults, RunPlan, AGENT_BIN, AGENT_DIR, LABEL_MANAGED};

/// What a program sees of the agent volume: whether it can write there, how it is mounted, and
/// whether the agent executable asks for a program interpreter (the dynamic loader: PT_INTERP).
const INSPECT: &str = r#"
import os, struct
try:
    open("/opt/isol8/agent/planted", "w"); print("write ok")
except OSError as e: print("write refused", e.errno)
with open("/proc/self/mountinfo") as f:
    line = [l for l in f if l.split()[4] == "/opt/isol8/agent"][0]
print("mount", line.split()[5].split(",")[0])
path = "/opt/isol8/agent/isol8-agent"
with open(path, "rb") as f: elf = f.read()
phoff, = struct.unpack_from("<Q", elf, 32)
phentsize, phnum = struct.unpack_from("<HH", elf, 54)
types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
print("elf", elf[:4] == b"\x7fELF", "interp", 3 in types, "mode", oct(os.stat(path).st_mode & 0o7777))
print("kernels", sorted(os.listdir("/opt/isol8/agent/kernels")))
"#;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How many containers with all of `labels` Docker created between `since` and now.
async fn created_since(docker: &Docker, since: u64, labels: Vec<String>) -> usize {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["create".to_string()]),
        ("label".to_string(), labels),
    ]);
    let events = docker.events(Some(EventsOptions::<String> {
        since: Some(since.to_string()),
        until: Some((now_secs() + 1).to_string()),
        filters,
    }));
    events
        .filter(|e| futures::future::ready(e.is_ok()))
        .count()
        .await
}

/// Creates a container from `config`, runs it to its end (10 s at most), removes it and returns
/// what it printed, or why it did not run.
async fn run_to_end(docker: &Docker, config: Config<String>) -> Result<String, String> {
    let id = docker
        .create_container(None::<CreateContainerOptions<String>>, config)
        .await
        .map_err(|e| e.to_string())?
        .id;
    let ran = async {
        docker
            .start_container::<String>(&id, None)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut wait = docker.wait_container(&id, None::<WaitContainerOptions<String>>);
            while wait.next().await.is_some() {}
        })
        .await
        .map_err(|_| "it did not exit within 10 s".to_string())?;
        let mut logs = docker.logs::<String>(
            &id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let mut said = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            said.push_str(&chunk.to_string());
        }
        Ok(said)
    }
    .await;
    let remove = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_container(&id, Some(remove)).await;
    ran
}

#[tokio::test]
async fn one_volume_per_engine_is_made_once_and_every_sandbox_mounts_it_read_only() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let since = now_secs().saturating_sub(1);
    // Filled before, as isol8 labels it (one Docker made by itself, for another test's container
    // that named it first, is filled anew).
    let existed = docker
        .inspect_volume(isol8_docker::agent_volume_name())
        .await
        .is_ok_and(|v| v.labels.get("isol8.managed").map(String::as_str) == Some("true"));
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let plan = || {
        let request = ExecutionRequest {
            runtime: Runtime::Python,
            code: Some(INSPECT.into()),
            ..Default::default()
        };
        RunPlan::from_request(
            &request,
            &ExecutionOptions::default(),
            &PlanDefaults::default(),
            "agent-volume-test",
        )
        .unwrap()
    };
    // Four first runs at once: one makes (or finds) the volume, the others wait for it.
    let results = futures::future::join_all((0..4).map(|_| engine.execute(plan()))).await;
    for result in results {
        let result = result.unwrap();
        assert_eq!(result.exit_code, 0, "{}", result.stderr);
        let out = result.stdout;
        assert!(out.contains("write refused 30"), "{out}"); // EROFS
        assert!(out.contains("mount ro"), "{out}");
        assert!(out.contains("elf True interp False mode 0o555"), "{out}");
        assert!(
            out.contains("'bash.sh'") && out.contains("'python.py'"),
            "{out}"
        );
    }
    let helpers = created_since(
        &docker,
        since,
        vec![
            "isol8.kind=agent-helper".into(),
            format!("isol8.instance={}", engine.instance_id()),
        ],
    )
    .await;
    // A volume that is there is reused as it is; a new one is filled once.
    assert!(helpers <= 1, "the engine filled its volume {helpers} times");
    if existed {
        assert_eq!(helpers, 0, "an existing volume was looked into");
    }

    let volume = docker
        .inspect_volume(isol8_docker::agent_volume_name())
        .await
        .unwrap();
    assert_eq!(
        volume.labels.get(LABEL_MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        volume.labels.get("isol8.kind").map(String::as_str),
        Some("agent")
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_filtered_runs_proxy_mounts_the_agent_volume_read_only() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let request = ExecutionRequest {
        runtime: Runtime::Bash,
        code: Some("sleep 3".into()),
        ..Default::default()
    };
    let options = ExecutionOptions {
        network: Some(NetworkMode::Filtered),
        ..Default::default()
    };
    let plan = RunPlan::from_request(
        &request,
        &options,
        &PlanDefaults::default(),
        "agent-volume-test",
    )
    .unwrap();
    let events = engine.execute_stream(plan).await.unwrap();
    // The run is under way, so its proxy is there.
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            "isol8.kind=proxy".to_string(),
            format!("isol8.instance={}", engine.instance_id()),
        ],
    )]);
    let proxies = docker
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            filters,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    let inspect = docker
        .inspect_container(proxies[0].id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let mounts = inspect.mounts.unwrap_or_default();
    let agent = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some(AGENT_DIR))
        .unwrap_or_else(|| panic!("no agent mount in {mounts:?}"));
    assert_eq!(
        agent.name.as_deref(),
        Some(isol8_docker::agent_volume_name())
    );
    assert_eq!(agent.rw, Some(false));
    let result = isol8_docker::Engine::collect(events).await.unwrap();
    assert_eq!(result.exit_code, 0, "{}", result.stderr);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_agent_starts_in_an_image_without_a_c_library() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    // A first run makes sure the volume is there.
    let request = ExecutionRequest {
        runtime: Runtime::Bash,
        code: Some("true".into()),
        ..Default::default()
    };
    let plan = RunPlan::from_request(
        &request,
        &ExecutionOptions::default(),
        &PlanDefaults::default(),
        "agent-volume-test",
    )
    .unwrap();
    assert_eq!(engine.execute(plan).await.unwrap().exit_code, 0);
    engine.shutdown().await;

    // An image holding one empty file: no libc, no loader, no shell.
    let tag = format!(
        "isol8-test-nolibc:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut context = tar::Builder::new(Vec::new());
    for (name, text) in [
        ("Dockerfile", "FROM scratch\nCOPY empty /empty\n"),
        ("empty", ""),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        context
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    let mut build = docker.build_image(
        BuildImageOptions::<String> {
            t: tag.clone(),
            rm: true,
            labels: HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                ("isol8.kind".to_string(), "test".to_string()),
            ]),
            ..Default::default()
        },
        None,
        Some(context.into_inner().unwrap().into()),
    );
    while let Some(step) = build.next().await {
        assert!(step.unwrap().error.is_none());
    }

    let config = Config {
        image: Some(tag.clone()),
        // Any argument the agent does not know: it answers and exits. A dynamically linked
        // executable could not even start here (no loader for the kernel to run).
        entrypoint: Some(vec![AGENT_BIN.to_string(), "--isol8-test".to_string()]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            ("isol8.kind".to_string(), "test".to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            mounts: Some(vec![Mount {
                target: Some(AGENT_DIR.into()),
                source: Some(isol8_docker::agent_volume_name().into()),
                typ: Some(MountTypeEnum::VOLUME),
                read_only: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ran = run_to_end(&docker, config).await;
    docker
        .remove_image(
            &tag,
            Some(RemoveImageOptions {
                force: true,
                noprune: false,
            }),
            None,
        )
        .await
        .unwrap();
    let said = ran.expect("the static agent starts in an image without a C library, and exits");
    assert!(said.contains("isol8-agent"), "{said}");
}

#[tokio::test]
async fn servers_filling_a_new_volume_at_once_all_succeed_and_it_is_complete() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let engine = common::engine_without_pool(EngineConfig::default()).await;
    let image = engine.built_runtimes().await.unwrap()[&Runtime::Python].clone();
    // A volume of this test's own (same content, another name), new to the engine.
    let prefix = format!(
        "isol8-agent-test-{}-",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let fills = futures::future::join_all(
        (0..3).map(|_| isol8_docker::fill_agent_volume_named(&docker, &image, &prefix)),
    )
    .await;
    let names: Vec<String> = fills.into_iter().map(|f| f.unwrap()).collect();
    assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
    // Once more, on the complete volume: found, not filled again.
    assert_eq!(
        isol8_docker::fill_agent_volume_named(&docker, &image, &prefix)
            .await
            .unwrap(),
        names[0]
    );

    let config = Config {
        image: Some(image.clone()),
        entrypoint: Some(vec![
            "sh".into(),
            "-c".into(),
            "cd /opt/isol8/agent && ls -l isol8-agent && find . -type f | sort".into(),
        ]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            ("isol8.kind".to_string(), "test".to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            mounts: Some(vec![Mount {
                target: Some(AGENT_DIR.into()),
                source: Some(names[0].clone()),
                typ: Some(MountTypeEnum::VOLUME),
                read_only: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let listing = run_to_end(&docker, config)
        .await
        .expect("the listing container runs");
    // Unused now: what `isol8 cleanup --images` lists, and would remove (only listed here).
    let managed = engine
        .list_managed(isol8_docker::CleanupScope::Engine, true)
        .await
        .unwrap();
    docker.remove_volume(&names[0], None).await.unwrap();
    engine.shutdown().await;
    assert!(managed.volumes.contains(&names[0]), "{:?}", managed.volumes);

    assert!(listing.contains("-r-xr-xr-x"), "{listing}");
    for file in [
        "./isol8-agent",
        "./kernels/python.py",
        "./kernels/js.mjs",
        "./kernels/bash.sh",
        "./display/isol8_display.py",
        "./display/isol8_mpl.py",
        "./.isol8-content",
    ] {
        assert!(
            listing.lines().any(|l| l == file),
            "{file} missing:\n{listing}"
        );
    }
}
