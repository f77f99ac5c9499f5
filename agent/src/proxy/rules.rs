//! The proxy's policy: its configuration (`ISOL8_PROXY_RULES`), the hostname syntax and allow/deny
//! check, and which resolved addresses may be connected to.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use serde::Deserialize;

/// `ISOL8_PROXY_RULES` as the engine writes it (docker/src/network.rs); every field may be absent.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    /// The Docker host's addresses on its bridges (the gateways).
    #[serde(default)]
    never: Vec<String>,
    /// Every address of the Docker host, on any interface.
    #[serde(default)]
    never_nets: Vec<String>,
    /// The run's own network: the proxy listens there alone.
    #[serde(default)]
    listen_subnet: Option<String>,
}

/// The compiled policy of one run's proxy.
#[derive(Debug)]
pub(crate) struct Rules {
    allow: Vec<Regex>,
    deny: Vec<Regex>,
    /// The addresses an allow pattern names exactly: only these open a non-public address.
    named: HashSet<Ipv4Addr>,
    never: Vec<IpAddr>,
    never_nets: Vec<IpNet>,
    pub(crate) listen_subnet: Option<Ipv4Net>,
}

/// Hostnames as DNS has them (ASCII labels; the length is checked apart, `regex` has no
/// look-ahead) or dotted-quad IPv4: anything else could be read one way by the rules and another
/// by the resolver (IDNA folding, numeric IPv4 forms). The same expressions as proxy.py's.
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
        .expect("a valid expression")
});
static DOTTED_QUAD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})(?:\.(?:25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})){3}$",
    )
    .expect("a valid expression")
});

impl Rules {
    /// Parses and compiles `ISOL8_PROXY_RULES` (`None`: the variable is unset, nothing passes).
    /// Anything it cannot read is an error, so the proxy does not start and the run is refused.
    pub(crate) fn from_json(text: Option<&str>) -> Result<Rules, String> {
        let raw: RawRules = match text {
            None => RawRules::default(),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| format!("ISOL8_PROXY_RULES is not valid rules JSON: {e}"))?,
        };
        let compile = |field: &str, patterns: &[String]| -> Result<Vec<Regex>, String> {
            patterns
                .iter()
                .map(|p| {
                    pattern_regex(p).map_err(|e| {
                        format!("ISOL8_PROXY_RULES.{field}: \"{p}\" is not a valid regex: {e}")
                    })
                })
                .collect()
        };
        let never = raw
            .never
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| format!("ISOL8_PROXY_RULES.never: \"{a}\" is not an IP address"))
            })
            .collect::<Result<_, _>>()?;
        let never_nets = raw
            .never_nets
            .iter()
            .map(|n| {
                parse_net(n).ok_or_else(|| {
                    format!(
                        "ISOL8_PROXY_RULES.neverNets: \"{n}\" is not an address or a CIDR network"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let listen_subnet = match raw.listen_subnet.as_deref() {
            None => None,
            Some(subnet) => match parse_net(subnet) {
                Some(IpNet::V4(net)) => Some(net),
                _ => {
                    return Err(format!(
                        "ISOL8_PROXY_RULES.listenSubnet: \"{subnet}\" is not an IPv4 CIDR network"
                    ))
                }
            },
        };
        Ok(Rules {
            allow: compile("allow", &raw.allow)?,
            deny: compile("deny", &raw.deny)?,
            named: raw.allow.iter().filter_map(|p| named_address(p)).collect(),
            never,
            never_nets,
            listen_subnet,
        })
    }

    /// Whether `host` (lower-cased, without a trailing dot) may be asked for at all: a plain
    /// hostname or dotted quad that no deny pattern matches and an allow pattern does.
    pub(crate) fn check_host(&self, host: &str) -> Result<(), &'static str> {
        if !is_plain_host(host) {
            return Err("not a plain hostname or IPv4 address");
        }
        if self.deny.iter().any(|p| p.is_match(host)) {
            return Err("denied by rule");
        }
        if !self.allow.iter().any(|p| p.is_match(host)) {
            return Err("not in the allow list");
        }
        Ok(())
    }

    /// Whether every address the host resolved to may be connected to: never the Docker host,
    /// loopback, link-local, multicast or unspecified; never an address a deny pattern matches;
    /// only public addresses, unless an allow pattern names the address exactly.
    pub(crate) fn check_addresses(&self, addresses: &[Ipv4Addr]) -> Result<(), String> {
        for &address in addresses {
            let ip = IpAddr::V4(address);
            if self.never.contains(&ip)
                || self.never_nets.iter().any(|net| net.contains(&ip))
                || address.is_loopback()
                || address.is_link_local()
                || address.is_multicast()
                || address.is_unspecified()
            {
                return Err(format!("{address} is never reachable from a sandbox"));
            }
            let text = address.to_string();
            if self.deny.iter().any(|p| p.is_match(&text)) {
                return Err(format!("{address} is denied by rule"));
            }
            if !is_global(address) && !self.named.contains(&address) {
                return Err(format!("{address} is not a public address"));
            }
        }
        Ok(())
    }
}

/// A rule as a regex that must match the whole host, in any case (Python's `re.fullmatch` with
/// `IGNORECASE`; the engine refuses patterns the two dialects read differently).
fn pattern_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?i)^(?:{pattern})$"))
}

/// `10.0.0.5/8` (host bits ignored), or a bare address as a one-address network.
fn parse_net(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// The IPv4 address an allow pattern names exactly (`10.0.0.5`, `^10\.0\.0\.5$`), else `None`:
/// only such a rule opens a private, loopback or link-local address; `.*` does not.
fn named_address(pattern: &str) -> Option<Ipv4Addr> {
    let literal = pattern.strip_prefix('^').unwrap_or(pattern);
    let literal = literal.strip_suffix('$').unwrap_or(literal);
    literal.replace("\\.", ".").parse().ok()
}

/// A hostname DNS could hold (or a dotted quad), and not a numeric IPv4 form such as
/// `2130706433`, `127.1` or `0x7f.0.0.1`: glibc reads those as addresses and DNS as names, so a
/// rule would be matched against one thing and another reached. A name whose last label is a
/// number (or `0x...`) is such a form, whatever resolves it.
pub(crate) fn is_plain_host(host: &str) -> bool {
    if DOTTED_QUAD.is_match(host) {
        return true;
    }
    if host.is_empty() || host.len() > 253 || !HOSTNAME.is_match(host) {
        return false;
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    !numeric
}

/// The address a dotted-quad host names, read as glibc's `inet_aton` reads one that matched
/// `DOTTED_QUAD`: a two-digit octet with a leading zero is octal (`07` is 7), so `08` and `09`
/// name nothing. `None` when `host` is not a dotted quad.
pub(crate) fn dotted_quad(host: &str) -> Option<Result<Ipv4Addr, String>> {
    if !DOTTED_QUAD.is_match(host) {
        return None;
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(host.split('.')) {
        *octet = match part.as_bytes() {
            [b'0', d @ b'0'..=b'7'] => d - b'0',
            [b'0', _] => {
                return Some(Err(format!(
                    "cannot resolve: {host} is not an IPv4 address ({part} is not octal)"
                )))
            }
            _ => part.parse().expect("DOTTED_QUAD admits only octets"),
        };
    }
    Some(Ok(Ipv4Addr::from(octets)))
}

/// Python's `ipaddress.IPv4Address.is_global` as fixed for CVE-2024-4032 (3.12.4, 3.11.10 and
/// later; before, only 192.0.0.0/29 of 192.0.0.0/24 was excluded): false for the IANA
/// special-purpose registry's blocks that are not globally reachable.
pub(crate) fn is_global(address: Ipv4Addr) -> bool {
    const NOT_GLOBAL: [(Ipv4Addr, u8); 15] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(192, 0, 0, 170), 31),
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(198, 51, 100, 0), 24),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
        (Ipv4Addr::new(255, 255, 255, 255), 32),
    ];
    // Globally reachable although inside 192.0.0.0/24: the PCP and TURN anycast addresses.
    const GLOBAL_EXCEPTIONS: [Ipv4Addr; 2] =
        [Ipv4Addr::new(192, 0, 0, 9), Ipv4Addr::new(192, 0, 0, 10)];
    if GLOBAL_EXCEPTIONS.contains(&address) {
        return true;
    }
    !NOT_GLOBAL.iter().any(|&(network, prefix)| {
        Ipv4Net::new(network, prefix)
            .expect("a valid prefix")
            .contains(&address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Rules {
        Rules::from_json(Some(json)).unwrap()
    }

    #[test]
    fn is_global_follows_pythons_table() {
        // (address, ipaddress.ip_address(a).is_global on Python 3.12.4+)
        let table = [
            ("0.0.0.0", false),
            ("0.255.255.255", false),
            ("1.1.1.1", true),
            ("8.8.8.8", true),
            ("9.255.255.255", true),
            ("10.0.0.1", false),
            ("11.0.0.1", true),
            ("100.63.255.255", true),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.0", true),
            ("127.0.0.1", false),
            ("169.254.169.254", false),
            ("172.15.255.255", true),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.0", true),
            ("192.0.0.1", false),
            ("192.0.0.8", false),
            ("192.0.0.9", true),
            ("192.0.0.10", true),
            ("192.0.0.11", false),
            ("192.0.0.170", false),
            ("192.0.0.171", false),
            ("192.0.0.255", false),
            ("192.0.1.0", true),
            ("192.0.2.1", false),
            ("192.0.3.0", true),
            ("192.88.99.1", true),
            ("192.167.255.255", true),
            ("192.168.1.1", false),
            ("192.169.0.0", true),
            ("198.17.255.255", true),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.20.0.0", true),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("203.0.114.0", true),
            ("224.0.0.1", true),
            ("239.255.255.255", true),
            ("240.0.0.1", false),
            ("255.255.255.254", false),
            ("255.255.255.255", false),
        ];
        for (address, global) in table {
            assert_eq!(is_global(address.parse().unwrap()), global, "{address}");
        }
    }

    #[test]
    fn plain_hosts_are_dns_names_or_dotted_quads() {
        for host in [
            "example.com",
            "a",
            "pypi.org",
            "x-y.z0",
            "1e100.net",
            "10.0.0.1",
            "255.255.255.255",
            "01.2.3.4",
            "0.0.0.0",
        ] {
            assert!(is_plain_host(host), "{host}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = ["a".repeat(63).as_str(); 4].join(".") + ".com";
        for host in [
            "",
            "evil.com@x",
            "Example.com",
            "exämple.com",
            "a..b",
            ".a",
            "a.",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a.com:80",
            "[::1]",
            "2130706433",
            "127.1",
            "0x7f.0.0.1",
            "1.2.3.0x4",
            "0x7f000001",
            "1.2.3.4.5",
            "256.1.1.1",
            "010.0.0.1",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_plain_host(host), "{host:?}");
        }
    }

    #[test]
    fn dotted_quads_read_as_inet_aton_does() {
        assert_eq!(
            dotted_quad("10.1.2.3"),
            Some(Ok(Ipv4Addr::new(10, 1, 2, 3)))
        );
        assert_eq!(
            dotted_quad("01.02.07.00"),
            Some(Ok(Ipv4Addr::new(1, 2, 7, 0)))
        );
        assert!(matches!(dotted_quad("1.2.3.09"), Some(Err(_))));
        assert_eq!(dotted_quad("example.com"), None);
    }

    #[test]
    fn patterns_match_the_whole_host_in_any_case_and_deny_wins() {
        let r = rules(
            r#"{"allow":["example\\.com","(.*\\.)?PyPI\\.org","a|b"],"deny":["bad\\.pypi\\.org"]}"#,
        );
        assert_eq!(r.check_host("example.com"), Ok(()));
        assert_eq!(r.check_host("files.pypi.org"), Ok(()));
        assert_eq!(r.check_host("pypi.org"), Ok(()));
        assert_eq!(r.check_host("b"), Ok(()));
        assert_eq!(r.check_host("ab"), Err("not in the allow list"));
        assert_eq!(
            r.check_host("example.com.evil"),
            Err("not in the allow list")
        );
        assert_eq!(r.check_host("xexample.com"), Err("not in the allow list"));
        assert_eq!(r.check_host("bad.pypi.org"), Err("denied by rule"));
        assert_eq!(
            r.check_host("evil.com@example.com"),
            Err("not a plain hostname or IPv4 address")
        );
    }

    #[test]
    fn no_allow_pattern_allows_nothing() {
        let r = Rules::from_json(None).unwrap();
        assert_eq!(r.check_host("example.com"), Err("not in the allow list"));
        let r = rules("{}");
        assert_eq!(r.check_host("example.com"), Err("not in the allow list"));
    }

    #[test]
    fn only_an_exactly_named_address_opens_a_private_one() {
        let r = rules(r#"{"allow":[".*","^10\\.0\\.0\\.5$","192.168.1.2","10.0.0.7|x"]}"#);
        let check = |a: &str| r.check_addresses(&[a.parse().unwrap()]);
        assert_eq!(check("10.0.0.5"), Ok(()));
        assert_eq!(check("192.168.1.2"), Ok(()));
        assert_eq!(check("8.8.8.8"), Ok(()));
        assert_eq!(
            check("10.0.0.7"),
            Err("10.0.0.7 is not a public address".into())
        );
        assert_eq!(
            check("10.0.0.6"),
            Err("10.0.0.6 is not a public address".into())
        );
        // One address that fails refuses the name, whatever its others.
        assert_eq!(
            r.check_addresses(&["8.8.8.8".parse().unwrap(), "10.0.0.6".parse().unwrap()]),
            Err("10.0.0.6 is not a public address".into())
        );
    }

    #[test]
    fn some_addresses_are_never_reachable_whatever_the_rules() {
        let r = rules(
            r#"{"allow":[".*","127\\.0\\.0\\.1","169\\.254\\.169\\.254","172\\.17\\.0\\.1","10\\.9\\.0\\.3"],
               "never":["172.17.0.1","fd00::1"],"neverNets":["10.9.0.0/16","192.0.2.5","2001:db8::/32"]}"#,
        );
        for address in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "224.0.0.251",
            "239.1.2.3",
            "0.0.0.0",
            "172.17.0.1",
            "10.9.0.3",
            "192.0.2.5",
        ] {
            assert_eq!(
                r.check_addresses(&[address.parse().unwrap()]),
                Err(format!("{address} is never reachable from a sandbox")),
                "{address}"
            );
        }
    }

    #[test]
    fn a_resolved_address_a_deny_pattern_matches_is_refused() {
        let r = rules(r#"{"allow":[".*"],"deny":["8\\.8\\..*"]}"#);
        assert_eq!(
            r.check_addresses(&["8.8.4.4".parse().unwrap()]),
            Err("8.8.4.4 is denied by rule".into())
        );
        assert_eq!(r.check_addresses(&["1.1.1.1".parse().unwrap()]), Ok(()));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let err = |json: &str| Rules::from_json(Some(json)).unwrap_err();
        assert!(err("[").contains("ISOL8_PROXY_RULES"));
        assert!(err(r#"{"allow":["("]}"#).contains("ISOL8_PROXY_RULES.allow: \"(\""));
        assert!(err(r#"{"deny":["a{2,1}"]}"#).contains("ISOL8_PROXY_RULES.deny"));
        assert!(err(r#"{"never":["x"]}"#).contains("ISOL8_PROXY_RULES.never"));
        assert!(err(r#"{"neverNets":["10.0.0.0/40"]}"#).contains("neverNets"));
        assert!(err(r#"{"listenSubnet":"fd00::/64"}"#).contains("listenSubnet"));
        let r = rules(r#"{"listenSubnet":"172.20.5.6/16"}"#);
        assert_eq!(r.listen_subnet, Some("172.20.0.0/16".parse().unwrap()));
    }

    #[test]
    fn named_addresses_are_literal_addresses_only() {
        assert_eq!(named_address("10.0.0.5"), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(
            named_address("^10\\.0\\.0\\.5$"),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(named_address("10\\.0\\.0\\..*"), None);
        assert_eq!(named_address("010.0.0.5"), None);
        assert_eq!(named_address(".*"), None);
        assert_eq!(named_address("^^10.0.0.5"), None);
    }
}
