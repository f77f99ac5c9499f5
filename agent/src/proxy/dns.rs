//! Where a host leads: a dotted quad is its own address; a name is resolved in-process by
//! hickory (A records only, from /etc/hosts and the servers in /etc/resolv.conf), never by glibc,
//! whose NSS modules a static binary would have to load from whatever image it runs in.

use std::net::{IpAddr, Ipv4Addr};

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::TokioResolver;

use super::rules;

#[derive(Debug)]
pub(crate) struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system's resolver configuration; call inside the runtime.
    pub(crate) fn from_system() -> Result<Dns, String> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the DNS configuration (/etc/resolv.conf): {e}"))?;
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4Only;
        options.use_hosts_file = ResolveHosts::Always;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// The host's IPv4 addresses, each once, in proxy.py's order (sorted as text), or why none.
    pub(crate) async fn addresses(&self, host: &str) -> Result<Vec<Ipv4Addr>, String> {
        if let Some(address) = rules::dotted_quad(host) {
            return address.map(|a| vec![a]);
        }
        let found = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("cannot resolve: {}", lookup_error(&e)))?;
        let mut addresses: Vec<Ipv4Addr> = found
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        addresses.sort_by_key(|a| a.to_string());
        addresses.dedup();
        if addresses.is_empty() {
            return Err("cannot resolve: no IPv4 address".into());
        }
        Ok(addresses)
    }
}

/// A failed lookup in a few words, as glibc's messages read (hickory's name the whole query).
fn lookup_error(error: &hickory_resolver::net::NetError) -> String {
    use hickory_resolver::net::NetError;
    if error.is_nx_domain() {
        "no such name".into()
    } else if error.is_no_records_found() {
        "no IPv4 address".into()
    } else if matches!(error, NetError::Timeout) {
        "the DNS server did not answer in time".into()
    } else {
        error.to_string()
    }
}
