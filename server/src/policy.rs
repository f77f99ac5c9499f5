//! Server policy: a request may ask for less than the server's maximums, never more.

use isol8_api::{ExecutionOptions, ExecutionRequest, NetworkMode};
use isol8_docker::{format_size, parse_size, Limits};

use crate::error::ApiError;

/// Checks what the client asked for against the maximums; names the first limit exceeded.
pub(crate) fn check(
    request: &ExecutionRequest,
    options: &ExecutionOptions,
    max: &Limits,
    allowed_networks: &[NetworkMode],
) -> Result<(), ApiError> {
    let over = |name: &str, asked: String, allowed: String| {
        Err(ApiError::policy(format!(
            "{name} {asked} exceeds this server's maximum of {allowed}"
        )))
    };
    if let Some(ms) = request.timeout_ms.or(options.timeout_ms) {
        if ms > max.timeout.as_millis() as u64 {
            return over(
                "timeoutMs",
                ms.to_string(),
                max.timeout.as_millis().to_string(),
            );
        }
    }
    let sizes = [
        ("memoryLimit", &options.memory_limit, max.memory_bytes),
        ("sandboxSize", &options.sandbox_size, max.sandbox_bytes),
        ("tmpSize", &options.tmp_size, max.tmp_bytes),
    ];
    for (name, asked, allowed) in sizes {
        if let Some(raw) = asked {
            let bytes = parse_size(name, raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if bytes > allowed {
                return over(name, raw.clone(), format_size(allowed));
            }
        }
    }
    if let Some(cpu) = options.cpu_limit {
        if cpu > max.cpus {
            return over("cpuLimit", cpu.to_string(), max.cpus.to_string());
        }
    }
    if let Some(pids) = options.pids_limit {
        if pids > max.pids {
            return over("pidsLimit", pids.to_string(), max.pids.to_string());
        }
    }
    if let Some(out) = options.max_output_size {
        if out > max.max_output_bytes {
            return over(
                "maxOutputSize",
                out.to_string(),
                max.max_output_bytes.to_string(),
            );
        }
    }
    refuse_loosening(options)?;
    let network = options.network.unwrap_or_default();
    if !allowed_networks.contains(&network) {
        let allowed: Vec<&str> = allowed_networks.iter().map(|n| n.as_str()).collect();
        return Err(ApiError::policy(format!(
            "network mode \"{}\" is not allowed on this server (allowed: {})",
            network.as_str(),
            allowed.join(", ")
        )));
    }
    Ok(())
}

/// The reference client's fields that would loosen the sandbox if honoured: refused by name. The
/// sandbox has one hardening, whatever a request says; the ones that cannot loosen it (a disabled
/// `remoteCode`, `readonlyRootFs: true`, `seccomp: "strict"`) are accepted.
fn refuse_loosening(options: &ExecutionOptions) -> Result<(), ApiError> {
    if options.readonly_root_fs == Some(false) {
        return Err(ApiError::policy(
            "options.readonlyRootFs: false is refused: every sandbox's root filesystem is read-only",
        ));
    }
    if let Some(security) = &options.security {
        if security.seccomp.as_deref().is_some_and(|s| s != "strict") {
            return Err(ApiError::policy(
                "options.security.seccomp: only \"strict\" is available; every sandbox runs isol8's seccomp profile",
            ));
        }
        if security.custom_profile_path.is_some() {
            return Err(ApiError::policy(
                "options.security.customProfilePath is refused: the server never reads a profile a request names",
            ));
        }
    }
    let enables = |policy: &serde_json::Map<String, serde_json::Value>| {
        policy.get("enabled") == Some(&serde_json::Value::Bool(true))
    };
    if options.remote_code.as_ref().is_some_and(enables) {
        return Err(ApiError::policy(
            "options.remoteCode: the remote-code policy is this server's (remoteCode in its config); a request cannot enable it",
        ));
    }
    Ok(())
}

/// The first limit in `limits` above `max`, by its API name.
pub(crate) fn exceeds(limits: &Limits, max: &Limits) -> Option<&'static str> {
    [
        ("timeoutMs", limits.timeout > max.timeout),
        ("memoryLimit", limits.memory_bytes > max.memory_bytes),
        ("cpuLimit", limits.cpus > max.cpus),
        ("pidsLimit", limits.pids > max.pids),
        (
            "maxOutputSize",
            limits.max_output_bytes > max.max_output_bytes,
        ),
        ("sandboxSize", limits.sandbox_bytes > max.sandbox_bytes),
        ("tmpSize", limits.tmp_bytes > max.tmp_bytes),
    ]
    .into_iter()
    .find(|(_, over)| *over)
    .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_more_than_the_maximum_names_the_limit() {
        let req = ExecutionRequest::default();
        let opts = ExecutionOptions {
            memory_limit: Some("4g".into()),
            ..Default::default()
        };
        let max = Limits::default();
        let err = check(&req, &opts, &max, &[NetworkMode::None]).unwrap_err();
        assert_eq!(err.status, 403);
        assert!(
            err.message.contains("memoryLimit 4g") && err.message.contains("512m"),
            "{}",
            err.message
        );
    }

    #[test]
    fn host_network_needs_the_policy() {
        let opts = ExecutionOptions {
            network: Some(NetworkMode::Host),
            ..Default::default()
        };
        let max = Limits::default();
        assert!(check(
            &ExecutionRequest::default(),
            &opts,
            &max,
            &[NetworkMode::None]
        )
        .is_err());
        assert!(check(
            &ExecutionRequest::default(),
            &opts,
            &max,
            &[NetworkMode::None, NetworkMode::Host]
        )
        .is_ok());
    }
}
