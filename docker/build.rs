//! Builds the in-container agent (`agent/`, package isol8-agent) as a static executable and
//! leaves it in OUT_DIR for `agent_volume.rs` to embed: it runs in any Linux image, whatever its
//! C library, because it needs none at run time.
//!
//! Only the gnu target is there to build with, so "static" is glibc's `+crt-static`. The nested
//! cargo gets its own target directory (the outer cargo holds the lock on its own, so sharing it
//! would deadlock), an explicit `--target` (so the flag reaches the agent only, never build
//! scripts or proc-macros), and none of the outer build's wrappers or flags (clippy's driver,
//! coverage flags, a CARGO_TARGET_DIR). It inherits the outer cargo's jobserver through the
//! environment, so both together use no more than the `-j` the user gave.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables of the outer build that must not reach the nested one.
const STRIPPED_ENV: [&str; 12] = [
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_PATH",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("docker/ sits in the workspace")
        .to_path_buf();
    let agent = workspace.join("agent");
    rerun_if_changed(&agent.join("src"));
    println!(
        "cargo:rerun-if-changed={}",
        agent.join("Cargo.toml").display()
    );
    // The lock, and the root manifest (`[profile.agent]`, the workspace's dependency versions).
    for file in ["Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(file).display());
    }

    let target = env("TARGET");
    let target_dir = workspace.join("target").join("agent-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "-p", "isol8-agent", "--bin", "isol8-agent"])
        .args(["--profile", "agent", "--locked", "--target", &target])
        .arg("--target-dir")
        .arg(&target_dir);
    for name in STRIPPED_ENV {
        command.env_remove(name);
    }
    // The flags of any `CARGO_TARGET_<triple>_RUSTFLAGS` the user set would join ours.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_TARGET_") && name.ends_with("_RUSTFLAGS") {
            command.env_remove(&*name);
        }
    }
    command.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");

    let output = command.output().unwrap_or_else(|err| {
        panic!("isol8-docker: could not run cargo to build the static isol8-agent: {err}")
    });
    if !output.status.success() {
        panic!(
            "isol8-docker: building the static isol8-agent (cargo build -p isol8-agent --profile agent --target {target}, \
             target dir {}) failed with {}:\n{}",
            target_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(&target).join("agent").join("isol8-agent");
    let out = PathBuf::from(env("OUT_DIR")).join("isol8-agent");
    std::fs::copy(&built, &out).unwrap_or_else(|err| {
        panic!(
            "isol8-docker: the nested build succeeded but {} could not be copied to {}: {err}",
            built.display(),
            out.display()
        )
    });
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("isol8-docker build script: {name} is not set"))
}

/// Every file under `dir` (and `dir` itself, for files added later).
fn rerun_if_changed(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rerun_if_changed(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
