//! Resource limits of one sandbox and the size strings (`512m`, `1g`) that express them.

use std::time::Duration;

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

impl Limits {
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
