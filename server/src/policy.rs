//! Server policy: a request may ask for less than the server's maximums, never more.

use isol8_api::{ExecutionOptions, NetworkMode};
use isol8_docker::{Limits, RunPlan};

use crate::error::ApiError;

/// Checks a validated plan against the maximums and the allowed networks, and the options a
/// sandbox never honours; names the first limit exceeded. Defaults never exceed the maximums
/// (the config is refused at load otherwise), so what is over is what the client asked for.
pub(crate) fn check(
    plan: &RunPlan,
    options: &ExecutionOptions,
    max: &Limits,
    allowed_networks: &[NetworkMode],
) -> Result<(), ApiError> {
    if let Some((name, asked, allowed)) = plan.limits.first_above(max) {
        return Err(ApiError::policy(format!(
            "{name} {asked} exceeds this server's maximum of {allowed}"
        )));
    }
    refuse_loosening(options)?;
    if !allowed_networks.contains(&plan.network) {
        let allowed: Vec<&str> = allowed_networks.iter().map(|n| n.as_str()).collect();
        return Err(ApiError::policy(format!(
            "network mode \"{}\" is not allowed on this server (allowed: {})",
            plan.network.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use isol8_api::ExecutionRequest;
    use isol8_docker::PlanDefaults;

    fn planned(options: &ExecutionOptions) -> RunPlan {
        let request = ExecutionRequest {
            code: Some("print(1)".into()),
            ..Default::default()
        };
        RunPlan::from_request(&request, options, &PlanDefaults::default(), "k").unwrap()
    }

    #[test]
    fn asking_for_more_than_the_maximum_names_the_limit_and_both_values() {
        let cases = [
            (
                ExecutionOptions {
                    memory_limit: Some("4g".into()),
                    ..Default::default()
                },
                "memoryLimit 4g exceeds this server's maximum of 512m",
            ),
            (
                ExecutionOptions {
                    timeout_ms: Some(60_000),
                    ..Default::default()
                },
                "timeoutMs 60000 exceeds this server's maximum of 30000",
            ),
        ];
        for (opts, message) in cases {
            let max = Limits::default();
            let err = check(&planned(&opts), &opts, &max, &[NetworkMode::None]).unwrap_err();
            assert_eq!((err.status.as_u16(), err.message.as_str()), (403, message));
        }
    }

    #[test]
    fn host_network_needs_the_policy() {
        let opts = ExecutionOptions {
            network: Some(NetworkMode::Host),
            ..Default::default()
        };
        let plan = planned(&opts);
        let max = Limits::default();
        let err = check(&plan, &opts, &max, &[NetworkMode::None]).unwrap_err();
        assert!(
            err.message.contains("\"host\" is not allowed"),
            "{}",
            err.message
        );
        assert!(check(&plan, &opts, &max, &[NetworkMode::None, NetworkMode::Host]).is_ok());
    }
}
