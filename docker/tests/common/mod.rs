//! Shared by the engine's test files: a small package index in a container of ours.
#![allow(dead_code)] // each test file uses its own part of this

use std::collections::HashMap;

use bollard::container::{Config, CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use isol8_docker::{Engine, EngineConfig, PoolConfig, LABEL_MANAGED};

/// An engine with no warm pool (each test makes the containers it needs), on `config`.
pub(crate) async fn engine_without_pool(config: EngineConfig) -> Engine {
    Engine::connect(EngineConfig {
        pool: PoolConfig {
            size: 0,
            ..PoolConfig::default()
        },
        warm_runtimes: vec![],
        ..config
    })
    .await
    .expect("Docker must be running for these tests")
}

/// Makes two pure-Python wheels (probe-a, probe-b) and a PEP 503 simple index, then serves it.
const INDEX_SERVER: &str = r#"
import base64, hashlib, os, zipfile
root = "/tmp/index"
os.makedirs(root + "/files")
for name in ("probe_a", "probe_b"):
    dist = name.replace("_", "-")
    files = {
        name + "/__init__.py": "VALUE = %r\n" % name,
        name + "-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % dist,
        name + "-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: isol8-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(text.encode())))
    record.append(name + "-1.0.dist-info/RECORD,,")
    files[name + "-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = "%s-1.0-py3-none-any.whl" % name
    with zipfile.ZipFile(root + "/files/" + wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    os.makedirs("%s/simple/%s" % (root, dist))
    with open("%s/simple/%s/index.html" % (root, dist), "w") as f:
        f.write('<a href="../../files/%s">%s</a>\n' % (wheel, wheel))
os.chdir(root)
import http.server
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

/// A python process serving HTTP on port 8000 in a labelled container of ours on Docker's default
/// bridge (the "outside" of network tests; no traffic leaves the machine). `remove` ends it.
pub(crate) struct Served {
    docker: Docker,
    id: String,
    pub host: String,
}

impl Served {
    pub(crate) async fn start(docker: &Docker, image: &str, args: &[&str]) -> Served {
        let mut cmd = vec!["python3".to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let config = Config {
            image: Some(image.to_string()),
            entrypoint: Some(cmd),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                ("isol8.kind".to_string(), "test-server".to_string()),
            ])),
            ..Default::default()
        };
        let id = docker
            .create_container(None::<CreateContainerOptions<String>>, config)
            .await
            .expect("create the test server container")
            .id;
        docker
            .start_container::<String>(&id, None)
            .await
            .expect("start the test server container");
        let host = docker
            .inspect_container(&id, None)
            .await
            .unwrap()
            .network_settings
            .and_then(|n| n.ip_address)
            .filter(|ip| !ip.is_empty())
            .expect("the test server has an address on the bridge");
        Served {
            docker: docker.clone(),
            id,
            host,
        }
    }

    pub(crate) async fn remove(self) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let _ = self.docker.remove_container(&self.id, Some(options)).await;
    }
}

/// A package index (two wheels it makes itself) served from a container of ours.
pub(crate) struct LocalIndex {
    served: Served,
    pub url: String,
    pub host: String,
}

impl LocalIndex {
    pub(crate) async fn start(docker: &Docker, image: &str) -> LocalIndex {
        let served = Served::start(docker, image, &["-c", INDEX_SERVER]).await;
        LocalIndex {
            url: format!("http://{}:8000/simple", served.host),
            host: served.host.clone(),
            served,
        }
    }

    pub(crate) async fn remove(self) {
        self.served.remove().await;
    }
}
