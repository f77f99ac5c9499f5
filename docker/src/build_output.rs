//! Build output a person can read: ANSI escapes stripped, Docker's own bookkeeping lines dropped,
//! the failing step named once, the last lines of its output, and a one-line hint where the cause
//! is known (TLS verification, no network, a full disk).

use std::sync::LazyLock;

use regex::Regex;

/// Lines of a failing step's output kept in the error: enough to see pip's or apt's last words.
pub(crate) const TAIL_LINES: usize = 20;

/// The longest step text shown (a custom image's RUN line is a long JSON array).
const STEP_CHARS: usize = 120;

/// CSI sequences (colours, cursor moves) and two-byte escapes, as Docker's builder and pip emit them.
static ANSI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]").expect("valid regex"));

/// `The command '…' returned a non-zero code: 1`: Docker repeating the step's whole command.
static NON_ZERO: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)returned a non-zero code: (\d+)\s*$").expect("valid regex"));

/// Where a failed request was going: pip's `host='…', port=…`, else the first URL on the line.
static HOST_FIELD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"host='([^']+)'(?:, port=(\d+))?").expect("valid regex"));
static URL_HOST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[a-z]+://([A-Za-z0-9.\-\[\]:]+)").expect("valid regex"));

/// Text with every ANSI escape removed and carriage-return progress redraws collapsed to their
/// last state.
pub(crate) fn strip_ansi(text: &str) -> String {
    let plain = ANSI.replace_all(text, "");
    plain
        .split('\n')
        .map(|line| line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The output lines a person needs from one line of Docker's build stream: Docker's bookkeeping
/// (` ---> 1a2b…`, `Removing intermediate container …`) and blank lines are dropped.
pub(crate) fn output_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|line| {
        let line = strip_ansi(line);
        let trimmed = line.trim_end();
        let bookkeeping = trimmed.starts_with(" ---> ")
            || trimmed.starts_with("Removing intermediate container ")
            || trimmed.starts_with("Successfully built ")
            || trimmed.starts_with("Successfully tagged ");
        (!bookkeeping && !trimmed.trim().is_empty()).then(|| trimmed.to_string())
    })
}

/// The last `n` lines of `text`, escapes stripped.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let clean = strip_ansi(text);
    let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `Step 3/4 : RUN apt-get …` → `3/4 RUN apt-get …`, shortened to a line.
pub(crate) fn step_label(step: &str) -> String {
    let step = strip_ansi(step);
    let step = step.trim();
    let short = match step.strip_prefix("Step ").and_then(|s| s.split_once(" : ")) {
        Some((number, instruction)) => format!("{number} {instruction}"),
        None => step.to_string(),
    };
    if short.chars().count() > STEP_CHARS {
        let cut: String = short.chars().take(STEP_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        short
    }
}

/// Docker's error for a failed step without the step's command repeated in it.
pub(crate) fn failure_message(message: &str) -> String {
    let message = strip_ansi(message);
    match NON_ZERO.captures(&message) {
        Some(code) => format!("the command exited with code {}", &code[1]),
        None => message.trim().to_string(),
    }
}

/// What a failed build's output says went wrong, when it is a known cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A server's TLS certificate was not trusted (a TLS-inspecting proxy, a private index).
    Tls,
    /// A name did not resolve or a host could not be reached.
    Network,
    /// The disk Docker builds on is full.
    DiskFull,
    /// pip (through truststore) cannot check a certificate for an index named by IP address.
    PipIpIndex,
}

const DISK_FULL: &[&str] = &["no space left on device", "enospc", "disk quota exceeded"];
const PIP_IP_INDEX: &[&str] = &["check_hostname requires server_hostname"];
const TLS: &[&str] = &[
    "depth_zero_self_signed_cert",
    "certificate_verify_failed",
    "certificate verify failed",
    "self_signed_cert_in_chain",
    "self-signed certificate",
    "self signed certificate",
    "unable_to_get_issuer_cert",
    "unable to get local issuer certificate",
    "unable to verify the first certificate",
    "certificate signed by unknown authority",
    "server certificate verification failed",
    "ssl certificate problem",
    "invalidcertificate",
];
const NETWORK: &[&str] = &[
    "temporary failure in name resolution",
    "temporary failure resolving",
    "name or service not known",
    "could not resolve host",
    "could not resolve",
    "getaddrinfo enotfound",
    "eai_again",
    "network is unreachable",
    "no route to host",
    "connection refused",
    "connection timed out",
    "failed to establish a new connection",
    "etimedout",
    "econnrefused",
];

impl Cause {
    /// The first known cause in `text` (a full disk wins, then TLS, then the network) and the line
    /// that showed it.
    pub(crate) fn find(text: &str) -> Option<(Cause, &str)> {
        let lines: Vec<&str> = text.lines().collect();
        for (cause, needles) in [
            (Cause::DiskFull, DISK_FULL),
            (Cause::PipIpIndex, PIP_IP_INDEX),
            (Cause::Tls, TLS),
            (Cause::Network, NETWORK),
        ] {
            let hit = lines.iter().find(|line| {
                let lower = line.to_ascii_lowercase();
                needles.iter().any(|n| lower.contains(n))
            });
            if let Some(line) = hit {
                return Some((cause, line));
            }
        }
        None
    }
}

/// The host a failing line was talking to, when it says.
fn host_in(text: &str) -> Option<String> {
    if let Some(c) = HOST_FIELD.captures(text) {
        return Some(match c.get(2) {
            Some(port) => format!("{}:{}", &c[1], port.as_str()),
            None => c[1].to_string(),
        });
    }
    URL_HOST
        .captures(text)
        .map(|c| c[1].trim_end_matches(':').to_string())
}

/// One line saying what failed and what fixes it, for a build whose `message` and `output` show a
/// known cause. `trusted` lists the CA files the images trust now.
pub(crate) fn hint(message: &str, output: &str, trusted: &[String]) -> Option<String> {
    let text = format!("{}\n{}", strip_ansi(output), strip_ansi(message));
    let (cause, line) = Cause::find(&text)?;
    // The host is named on the failing line, or on another line of the output (pip names it in
    // its final "Could not fetch URL" line, not in the retry warnings).
    let host = host_in(line).or_else(|| text.lines().find_map(host_in));
    let at = host
        .map(|h| format!(" connecting to {h}"))
        .unwrap_or_default();
    Some(match cause {
        Cause::Tls => {
            let now = match trusted {
                [] => "no CA file besides the image's own is trusted now".to_string(),
                files => format!("trusted now: {}", files.join(", ")),
            };
            format!(
                "TLS certificate verification failed{at}: set ISOL8_EXTRA_CA_CERTS=/path/to/ca.pem to the CA that signs it (a TLS-inspecting or corporate proxy's, a private index's); {now}"
            )
        }
        Cause::Network => format!(
            "the build could not reach the network{at}: Docker's build containers need DNS and outbound access, or set PIP_INDEX_URL / npm_config_registry to a mirror they can reach"
        ),
        Cause::PipIpIndex => format!(
            "pip cannot check the TLS certificate of a package index named by IP address{at}: name it by hostname in PIP_INDEX_URL"
        ),
        Cause::DiskFull => "the disk Docker builds on is full: free space there (`docker system df` shows what uses it) and rerun".to_string(),
    })
}

/// The part of a build error after its first line: the output's last lines, indented, then the hint.
pub(crate) fn render(output: &str, hint: Option<&str>) -> String {
    let mut text = String::new();
    for line in output.lines() {
        text.push_str("\n  | ");
        text.push_str(line);
    }
    if let Some(hint) = hint {
        text.push_str("\nhint: ");
        text.push_str(hint);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Docker's classic builder streams for a custom image whose pip index is behind a TLS
    /// certificate nothing trusts, colours and all.
    const PIP_TLS_FAILURE: &str = "Step 4/5 : RUN [\"python3\",\"/opt/isol8/pip/pip\",\"install\",\"--no-cache-dir\",\"--disable-pip-version-check\",\"--no-input\",\"--target\",\"/opt/isol8/python\",\"six\"]\n \
 ---> Running in 5e0c1f2a3b4c\n\
\u{1b}[91mWARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:992)'))': /simple/six/\n\
\u{1b}[0m\u{1b}[91mERROR: Could not find a version that satisfies the requirement six (from versions: none)\n\
\u{1b}[0m\u{1b}[91mCould not fetch URL https://172.17.0.9:8443/simple/six/: There was a problem confirming the ssl certificate: HTTPSConnectionPool(host='172.17.0.9', port=8443): Max retries exceeded\n\
\u{1b}[0m\u{1b}[91mERROR: No matching distribution found for six\n\u{1b}[0m";

    #[test]
    fn escapes_bookkeeping_and_carriage_returns_are_gone() {
        let lines: Vec<String> = output_lines(PIP_TLS_FAILURE).collect();
        assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains("[0m")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("Running in")), "{lines:?}");
        assert_eq!(
            lines.last().unwrap(),
            "ERROR: No matching distribution found for six"
        );
        assert_eq!(strip_ansi("10%\r50%\r100%\nnext"), "100%\nnext");
    }

    #[test]
    fn the_step_is_named_once_and_short() {
        let step = step_label(PIP_TLS_FAILURE.lines().next().unwrap());
        assert!(step.starts_with("4/5 RUN [\"python3\""), "{step}");
        assert!(step.chars().count() <= STEP_CHARS, "{step}");
        assert!(step.ends_with('…'), "{step}");
        assert_eq!(step_label("Step 1/2 : FROM x"), "1/2 FROM x");
        let message = failure_message(
            "The command '[\"python3\" \"/opt/isol8/pip/pip\" \"install\" \"six\"]' returned a non-zero code: 1",
        );
        assert_eq!(message, "the command exited with code 1");
        assert_eq!(failure_message("\u{1b}[31mboom\u{1b}[0m "), "boom");
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let kept = tail(&text, TAIL_LINES);
        assert_eq!(kept.lines().count(), TAIL_LINES);
        assert!(
            kept.starts_with("line 31\n") && kept.ends_with("line 50"),
            "{kept}"
        );
    }

    #[test]
    fn a_tls_failure_hint_names_the_host_and_the_setting() {
        let output: String = output_lines(PIP_TLS_FAILURE).map(|l| l + "\n").collect();
        let trusted = vec!["/etc/ssl/certs/ca-certificates.crt".to_string()];
        let tls = hint("the command exited with code 1", &output, &trusted).unwrap();
        assert!(!tls.contains('\n'), "{tls}");
        assert!(tls.starts_with("TLS certificate verification failed connecting to 172.17.0.9:8443: set ISOL8_EXTRA_CA_CERTS="), "{tls}");
        assert!(
            tls.ends_with("trusted now: /etc/ssl/certs/ca-certificates.crt"),
            "{tls}"
        );
        let none = hint("x", "npm ERR! code SELF_SIGNED_CERT_IN_CHAIN", &[]).unwrap();
        assert!(none.contains("no CA file besides"), "{none}");
    }

    #[test]
    fn network_and_disk_hints_and_none_for_unknown_causes() {
        let dns = hint(
            "x",
            "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'",
            &[],
        )
        .unwrap();
        assert!(
            dns.starts_with("the build could not reach the network connecting to deb.debian.org:"),
            "{dns}"
        );
        let disk = hint(
            "write /var/lib/docker/tmp/x: no space left on device",
            "Collecting six",
            &[],
        )
        .unwrap();
        assert!(
            disk.starts_with("the disk Docker builds on is full"),
            "{disk}"
        );
        let ip = hint(
            "x",
            "Looking in indexes: https://172.17.0.2:8443/simple\nValueError: check_hostname requires server_hostname",
            &[],
        )
        .unwrap();
        assert!(ip.starts_with("pip cannot check the TLS certificate of a package index named by IP address connecting to 172.17.0.2:8443"), "{ip}");
        assert_eq!(
            hint(
                "the command exited with code 1",
                "ERROR: No matching distribution found for probe-c",
                &[]
            ),
            None
        );
    }
}
