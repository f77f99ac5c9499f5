//! Remote code (`codeUrl`): the server's policy and the fetch that follows it. Off by default.
//!
//! The policy is the server's alone (a request's `options.remoteCode` cannot loosen it). A fetch
//! goes only to an allowed scheme and host, only to public addresses (unless an allow rule names an
//! address exactly), checked on the addresses actually connected to, so a name that resolves
//! differently the second time (DNS rebinding) gains nothing; every redirect is checked the same
//! way; the body is size-capped, the whole fetch time-capped, and a given sha256 verified.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::ApiError;

/// `remoteCode` in the server config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RemoteCodePolicy {
    /// Requests may name `codeUrl` (403 otherwise).
    pub enabled: bool,
    /// URL schemes fetched: `https`, and `http` for requests that also set `allowInsecureCodeUrl`.
    pub allowed_schemes: Vec<String>,
    /// Hostname regexes (full match, any case) a URL's host must match; empty allows every
    /// public host. An address written out in a rule (`^10\.0\.0\.5$`) may be private.
    pub allowed_hosts: Vec<String>,
    /// Hostname regexes never fetched from, whatever `allowedHosts` says.
    pub blocked_hosts: Vec<String>,
    /// Largest code fetched, in bytes.
    pub max_code_size: u64,
    /// Time for the whole fetch, redirects included, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Refuse a `codeUrl` without `codeHash`.
    pub require_hash: bool,
    /// Redirects followed (each one checked like the first URL).
    pub max_redirects: u32,
}

impl Default for RemoteCodePolicy {
    fn default() -> Self {
        RemoteCodePolicy {
            enabled: false,
            allowed_schemes: vec!["https".into()],
            allowed_hosts: Vec::new(),
            blocked_hosts: vec![
                r"^localhost$".into(),
                r"^metadata\.google\.internal$".into(),
            ],
            max_code_size: 10 * 1024 * 1024,
            fetch_timeout_ms: 30_000,
            require_hash: false,
            max_redirects: 5,
        }
    }
}

impl RemoteCodePolicy {
    /// Checks the patterns once, at config load.
    pub fn validate(&self) -> Result<(), String> {
        for pattern in self.allowed_hosts.iter().chain(&self.blocked_hosts) {
            host_regex(pattern).map_err(|e| format!("remoteCode: {e}"))?;
        }
        if self.max_code_size == 0 || self.fetch_timeout_ms == 0 {
            return Err(
                "remoteCode: maxCodeSize and fetchTimeoutMs must be greater than zero".into(),
            );
        }
        Ok(())
    }
}

fn host_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("(?i)^(?:{pattern})$"))
        .map_err(|e| format!("\"{pattern}\" is not a valid regex: {e}"))
}

/// The address an allow rule names exactly (`10.0.0.5`, `^10\.0\.0\.5$`): only such a rule opens a
/// private address; `.*` does not.
fn named_address(pattern: &str) -> Option<IpAddr> {
    let literal = pattern
        .trim_start_matches('^')
        .trim_end_matches('$')
        .replace("\\.", ".");
    literal.parse().ok()
}

/// Addresses anyone on the internet could reach: not loopback, private, link-local (cloud
/// metadata), shared, documentation, multicast, reserved or unspecified.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && v4.octets()[2] == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// The policy compiled for fetching.
#[derive(Debug, Clone)]
pub struct RemoteCode {
    policy: RemoteCodePolicy,
    allowed: Arc<Vec<Regex>>,
    blocked: Arc<Vec<Regex>>,
    /// Private addresses an allow rule names exactly.
    named: Arc<Vec<IpAddr>>,
}

/// What a request asks to fetch.
#[derive(Debug)]
pub struct CodeRequest<'a> {
    pub url: &'a str,
    pub hash: Option<&'a str>,
    pub allow_insecure: bool,
}

impl RemoteCode {
    pub fn new(policy: RemoteCodePolicy) -> Result<RemoteCode, String> {
        policy.validate()?;
        let compile = |patterns: &[String]| -> Result<Vec<Regex>, String> {
            patterns.iter().map(|p| host_regex(p)).collect()
        };
        Ok(RemoteCode {
            allowed: Arc::new(compile(&policy.allowed_hosts)?),
            blocked: Arc::new(compile(&policy.blocked_hosts)?),
            named: Arc::new(
                policy
                    .allowed_hosts
                    .iter()
                    .filter_map(|p| named_address(p))
                    .collect(),
            ),
            policy,
        })
    }

    pub fn enabled(&self) -> bool {
        self.policy.enabled
    }

    /// Fetches the code `request` names, under the policy. Every refusal is a 403 naming the rule;
    /// a fetch that fails is a 400 (the URL is the client's), a hash mismatch too.
    pub async fn fetch(&self, request: &CodeRequest<'_>) -> Result<String, ApiError> {
        if !self.policy.enabled {
            return Err(ApiError::policy(
                "codeUrl: remote code is disabled on this server (set remoteCode.enabled in its config)",
            ));
        }
        let hash = match request.hash.map(str::trim) {
            Some(hash) if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(ApiError::bad_request(
                    "codeHash must be a sha256 digest: 64 hexadecimal characters",
                ))
            }
            Some(hash) => Some(hash.to_ascii_lowercase()),
            None if self.policy.require_hash => {
                return Err(ApiError::policy(
                    "codeHash is required for codeUrl on this server (remoteCode.requireHash)",
                ))
            }
            None => None,
        };
        let timeout = Duration::from_millis(self.policy.fetch_timeout_ms);
        let code = tokio::time::timeout(timeout, self.fetch_following(request))
            .await
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "codeUrl: the fetch did not finish within {} ms",
                    timeout.as_millis()
                ))
            })??;
        if let Some(expected) = hash {
            let actual = hex::encode(Sha256::digest(code.as_bytes()));
            if actual != expected {
                return Err(ApiError::bad_request(format!(
                    "codeHash mismatch: the code at codeUrl has sha256 {actual}"
                )));
            }
        }
        Ok(code)
    }

    async fn fetch_following(&self, request: &CodeRequest<'_>) -> Result<String, ApiError> {
        let mut url = reqwest::Url::parse(request.url.trim())
            .map_err(|e| ApiError::bad_request(format!("codeUrl is not a URL: {e}")))?;
        for _ in 0..=self.policy.max_redirects {
            let client = self.client_for(&url, request.allow_insecure)?;
            let response = client.get(url.clone()).send().await.map_err(|e| {
                // The resolver's refusal travels inside reqwest's error: say it plainly.
                let refused = std::error::Error::source(&e)
                    .and_then(find_refusal)
                    .map(|why| ApiError::policy(format!("codeUrl: {why}")));
                refused.unwrap_or_else(|| {
                    ApiError::bad_request(format!("codeUrl: could not fetch {url}: {e}"))
                })
            })?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "codeUrl: {url} redirected without a Location"
                        ))
                    })?;
                url = url.join(location).map_err(|e| {
                    ApiError::bad_request(format!("codeUrl: bad redirect from {url}: {e}"))
                })?;
                continue;
            }
            if !response.status().is_success() {
                return Err(ApiError::bad_request(format!(
                    "codeUrl: {url} answered HTTP {}",
                    response.status().as_u16()
                )));
            }
            return self.read_body(response).await;
        }
        Err(ApiError::bad_request(format!(
            "codeUrl: more than {} redirects",
            self.policy.max_redirects
        )))
    }

    /// A client for one hop: the URL's scheme and host checked, its addresses checked by the
    /// resolver the connection uses (or here, for an address literal).
    fn client_for(
        &self,
        url: &reqwest::Url,
        allow_insecure: bool,
    ) -> Result<reqwest::Client, ApiError> {
        let scheme = url.scheme().to_ascii_lowercase();
        if scheme == "http" && !allow_insecure {
            return Err(ApiError::policy(
                "codeUrl: http is refused; use https, or set allowInsecureCodeUrl where the server allows http",
            ));
        }
        if !self
            .policy
            .allowed_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&scheme))
        {
            return Err(ApiError::policy(format!(
                "codeUrl: the scheme \"{scheme}\" is not allowed on this server (remoteCode.allowedSchemes)"
            )));
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            _ => return Err(ApiError::bad_request("codeUrl has no host")),
        };
        if self.blocked.iter().any(|r| r.is_match(&host)) {
            return Err(ApiError::policy(format!(
                "codeUrl: the host {host} is blocked on this server (remoteCode.blockedHosts)"
            )));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|r| r.is_match(&host)) {
            return Err(ApiError::policy(format!(
                "codeUrl: the host {host} is not allowed on this server (remoteCode.allowedHosts)"
            )));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            check_address(ip, &self.named)
                .map_err(|why| ApiError::policy(format!("codeUrl: {why}")))?;
        }
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                named: Arc::clone(&self.named),
            }))
            .build()
            .map_err(|e| ApiError::internal(format!("cannot build the code fetcher: {e}")))
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<String, ApiError> {
        let max = self.policy.max_code_size;
        let too_big = || {
            ApiError::bad_request(format!(
                "codeUrl: the code is larger than this server's maximum of {max} bytes (remoteCode.maxCodeSize)"
            ))
        };
        if response.content_length().is_some_and(|len| len > max) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request(format!("codeUrl: reading the body failed: {e}")))?
        {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        if body.contains(&0) {
            return Err(ApiError::bad_request(
                "codeUrl: the fetched file is binary, not source code",
            ));
        }
        String::from_utf8(body)
            .map_err(|_| ApiError::bad_request("codeUrl: the fetched file is not UTF-8 text"))
    }
}

/// Refuses an address that is not public, unless an allow rule names it exactly.
fn check_address(ip: IpAddr, named: &[IpAddr]) -> Result<(), String> {
    if is_public(ip) || named.contains(&ip) {
        Ok(())
    } else {
        Err(format!("{ip} is not a public address"))
    }
}

/// The refusal message `CheckedResolver` put into an error chain, if any.
fn find_refusal(mut error: &(dyn std::error::Error + 'static)) -> Option<String> {
    loop {
        if let Some(refusal) = error.downcast_ref::<Refused>() {
            return Some(refusal.0.clone());
        }
        error = error.source()?;
    }
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves a name and hands the connection only addresses that pass the policy: the check is on
/// what is connected to, not on an earlier lookup.
struct CheckedResolver {
    named: Arc<Vec<IpAddr>>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let named = Arc::clone(&self.named);
        let host = name.as_str().to_string();
        Box::pin(async move {
            type BoxError = Box<dyn std::error::Error + Send + Sync>;
            let refuse = |why: String| -> BoxError { Box::new(Refused(why)) };
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| refuse(format!("cannot resolve {host}: {e}")))?
                .collect();
            if found.is_empty() {
                return Err(refuse(format!("{host} has no address")));
            }
            for addr in &found {
                if let Err(why) = check_address(addr.ip(), &named) {
                    return Err(refuse(format!("{host} resolves to {why}")));
                }
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.51.100.7",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "151.101.0.223", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn only_a_rule_naming_an_address_opens_it() {
        assert_eq!(
            named_address(r"^127\.0\.0\.1$"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(named_address(".*"), None);
        assert_eq!(named_address(r"^10\..*$"), None);
    }
}
