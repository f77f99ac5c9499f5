//! Resource limits of one sandbox and the size strings (`512m`, `1g`) that express them.

use std::time::Duration;

use isol8_api::{ExecutionOptions, ExecutionRequest};

use crate::error::{Error, Result};

const KIB: u64 = 1024;

/// Parses `512m`, `1g`, `64k`, `1.5g`, `1048576` (binary multiples, optional trailing `b`, any case).
pub fn parse_size(field: &str, raw: &str) -> Result<u64> {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (number, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], KIB),
        Some('m') => (&s[..s.len() - 1], KIB * KIB),
        Some('g') => (&s[..s.len() - 1], KIB * KIB * KIB),
        Some('t') => (&s[..s.len() - 1], KIB * KIB * KIB * KIB),
        _ => (s, 1),
    };
    let bad = || {
        Error::InvalidRequest(format!(
            "{field}: \"{raw}\" is not a size; use a number with an optional unit k, m, g or t (e.g. 512m, 1g)"
        ))
    };
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(Error::InvalidRequest(format!(
            "{field}: \"{raw}\" is too large"
        )));
    }
    if bytes < 1.0 {
        return Err(Error::InvalidRequest(format!(
            "{field}: \"{raw}\" must be greater than zero"
        )));
    }
    Ok(bytes as u64)
}

/// Formats bytes the way `parse_size` reads them (exact when possible).
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("g", KIB * KIB * KIB), ("m", KIB * KIB), ("k", KIB)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// Every limit a run is held to. The container-level ones (memory, CPU, pids, tmpfs sizes) decide
/// which pooled containers can serve the run; the others are enforced per run by the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
    pub max_output_bytes: u64,
    pub sandbox_bytes: u64,
    pub tmp_bytes: u64,
    /// Largest single file accepted in `files` or returned from `outputPaths`.
    pub max_file_bytes: u64,
    /// All files returned from `outputPaths` together (they come back in one answer).
    pub max_output_files_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(30_000),
            memory_bytes: 512 * KIB * KIB,
            cpus: 1.0,
            pids: 64,
            max_output_bytes: KIB * KIB,
            sandbox_bytes: 512 * KIB * KIB,
            tmp_bytes: 256 * KIB * KIB,
            max_file_bytes: 10 * KIB * KIB,
            max_output_files_bytes: 32 * KIB * KIB,
        }
    }
}

/// The limits as the API and the config file spell them (sizes as strings like `512m`); `None`
/// where the request is silent. Parsed in one place, [`Limits::overlay`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitFields<'a> {
    pub timeout_ms: Option<u64>,
    pub memory_limit: Option<&'a str>,
    pub cpu_limit: Option<f64>,
    pub pids_limit: Option<u64>,
    pub max_output_size: Option<u64>,
    pub sandbox_size: Option<&'a str>,
    pub tmp_size: Option<&'a str>,
}

impl<'a> LimitFields<'a> {
    /// What a request asks for. Its `timeoutMs` wins over its options' (the reference client
    /// sends the request's; older ones the options').
    pub fn of_request(request: &ExecutionRequest, options: &'a ExecutionOptions) -> Self {
        LimitFields {
            timeout_ms: request.timeout_ms.or(options.timeout_ms),
            memory_limit: options.memory_limit.as_deref(),
            cpu_limit: options.cpu_limit,
            pids_limit: options.pids_limit,
            max_output_size: options.max_output_size,
            sandbox_size: options.sandbox_size.as_deref(),
            tmp_size: options.tmp_size.as_deref(),
        }
    }
}

impl Limits {
    /// A server's maximums where its config names none.
    pub fn default_maximums() -> Limits {
        Limits {
            timeout: Duration::from_millis(300_000),
            memory_bytes: 2 * KIB * KIB * KIB,
            cpus: 2.0,
            pids: 256,
            max_output_bytes: 16 * KIB * KIB,
            sandbox_bytes: 2 * KIB * KIB * KIB,
            tmp_bytes: KIB * KIB * KIB,
            ..Limits::default()
        }
    }

    /// These limits with what `fields` sets instead, validated. Errors name the field, after
    /// `prefix` (`"defaults."` in a config file, empty in a request).
    pub fn overlay(&self, fields: &LimitFields<'_>, prefix: &str) -> Result<Limits> {
        let size = |name: &str, raw: Option<&str>, default: u64| match raw {
            Some(raw) => parse_size(&format!("{prefix}{name}"), raw),
            None => Ok(default),
        };
        let limits = Limits {
            timeout: fields
                .timeout_ms
                .map_or(self.timeout, Duration::from_millis),
            memory_bytes: size("memoryLimit", fields.memory_limit, self.memory_bytes)?,
            cpus: fields.cpu_limit.unwrap_or(self.cpus),
            pids: fields.pids_limit.unwrap_or(self.pids),
            max_output_bytes: fields.max_output_size.unwrap_or(self.max_output_bytes),
            sandbox_bytes: size("sandboxSize", fields.sandbox_size, self.sandbox_bytes)?,
            tmp_bytes: size("tmpSize", fields.tmp_size, self.tmp_bytes)?,
            ..self.clone()
        };
        limits.validate().map_err(|e| match e {
            Error::InvalidRequest(message) => Error::InvalidRequest(format!("{prefix}{message}")),
            other => other,
        })?;
        Ok(limits)
    }

    /// The first limit above `max`: its API name, its value and the maximum, as a request
    /// would write them.
    pub fn first_above(&self, max: &Limits) -> Option<(&'static str, String, String)> {
        let ms = |d: Duration| d.as_millis().to_string();
        [
            (
                "timeoutMs",
                self.timeout > max.timeout,
                ms(self.timeout),
                ms(max.timeout),
            ),
            (
                "memoryLimit",
                self.memory_bytes > max.memory_bytes,
                format_size(self.memory_bytes),
                format_size(max.memory_bytes),
            ),
            (
                "cpuLimit",
                self.cpus > max.cpus,
                self.cpus.to_string(),
                max.cpus.to_string(),
            ),
            (
                "pidsLimit",
                self.pids > max.pids,
                self.pids.to_string(),
                max.pids.to_string(),
            ),
            (
                "maxOutputSize",
                self.max_output_bytes > max.max_output_bytes,
                self.max_output_bytes.to_string(),
                max.max_output_bytes.to_string(),
            ),
            (
                "sandboxSize",
                self.sandbox_bytes > max.sandbox_bytes,
                format_size(self.sandbox_bytes),
                format_size(max.sandbox_bytes),
            ),
            (
                "tmpSize",
                self.tmp_bytes > max.tmp_bytes,
                format_size(self.tmp_bytes),
                format_size(max.tmp_bytes),
            ),
        ]
        .into_iter()
        .find(|(_, over, _, _)| *over)
        .map(|(name, _, asked, allowed)| (name, asked, allowed))
    }

    /// Rejects limits no sandbox could run with.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if self.timeout.is_zero() {
            return bad("timeoutMs must be greater than zero".into());
        }
        if self.memory_bytes < 16 * KIB * KIB {
            return bad(format!(
                "memoryLimit {} is too small; the minimum is 16m",
                format_size(self.memory_bytes)
            ));
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01) {
            return bad(format!(
                "cpuLimit {} must be at least 0.01 cores",
                self.cpus
            ));
        }
        if self.pids < 8 {
            return bad(format!(
                "pidsLimit {} is too small; the sandbox needs at least 8",
                self.pids
            ));
        }
        if self.max_output_bytes == 0 {
            return bad("maxOutputSize must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("m", "512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("m", "1G").unwrap(), 1024 * 1024 * 1024);
        assert_eq!(parse_size("m", "64kb").unwrap(), 64 * 1024);
        assert_eq!(parse_size("m", "1.5g").unwrap(), 1536 * 1024 * 1024);
        assert_eq!(parse_size("m", "4096").unwrap(), 4096);
    }

    #[test]
    fn bad_sizes_name_the_field() {
        for raw in ["12xb", "", "m", "-5m", "0", "1e9", "abc"] {
            let err = parse_size("memoryLimit", raw).unwrap_err().to_string();
            assert!(err.contains("memoryLimit"), "{raw}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for n in [512 * 1024 * 1024, 1024, 1000, 3 * 1024 * 1024 * 1024] {
            assert_eq!(parse_size("x", &format_size(n)).unwrap(), n);
        }
    }

    #[test]
    fn a_request_overlays_the_defaults_once_and_its_own_timeout_wins() {
        let request = ExecutionRequest {
            timeout_ms: Some(5000),
            ..Default::default()
        };
        let options = ExecutionOptions {
            timeout_ms: Some(9000),
            memory_limit: Some("1g".into()),
            ..Default::default()
        };
        let limits = Limits::default()
            .overlay(&LimitFields::of_request(&request, &options), "")
            .unwrap();
        assert_eq!(limits.timeout, Duration::from_millis(5000));
        assert_eq!(limits.memory_bytes, 1024 * 1024 * 1024);
        assert_eq!(limits.pids, Limits::default().pids);
        let bad = LimitFields {
            sandbox_size: Some("lots"),
            ..Default::default()
        };
        let err = Limits::default().overlay(&bad, "defaults.").unwrap_err();
        assert!(err.to_string().contains("defaults.sandboxSize"), "{err}");
        let tiny = LimitFields {
            pids_limit: Some(2),
            ..Default::default()
        };
        let err = Limits::default().overlay(&tiny, "maximums.").unwrap_err();
        assert!(err.to_string().contains("maximums.pidsLimit 2"), "{err}");
    }

    #[test]
    fn the_first_limit_above_the_maximum_is_named_with_both_values() {
        let max = Limits::default();
        assert_eq!(max.first_above(&max), None);
        let asked = Limits {
            memory_bytes: 4 * 1024 * 1024 * 1024,
            ..max.clone()
        };
        assert_eq!(
            asked.first_above(&max),
            Some(("memoryLimit", "4g".to_string(), "512m".to_string()))
        );
    }

    #[test]
    fn zero_and_tiny_limits_are_refused() {
        let mut l = Limits {
            pids: 0,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
        l.pids = 64;
        l.timeout = Duration::ZERO;
        assert!(l.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }
}
