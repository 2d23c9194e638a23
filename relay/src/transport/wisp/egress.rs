//! Where a Wisp stream may go: its host name resolved (the `[dns]` upstream servers when
//! configured, else the system resolver), then `[nat]`'s egress policy applied to every
//! address the name gave. Only addresses the policy allows are ever connected to, so a name
//! that also resolves to 127.0.0.1 or 10.x (DNS rebinding) cannot reach them; a stream whose
//! addresses are all denied closes with 0x48.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use gateway::{DenyReason, EgressPolicy, NatProtocol};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use wisp::{CloseReason, StreamType};

/// The resolver streams use.
#[derive(Clone)]
pub(crate) enum Resolver {
    /// `[dns] upstream`: the same servers the VMs' DNS proxy asks.
    Upstream(Arc<TokioResolver>),
    /// No upstream configured: the host's own resolver (getaddrinfo).
    System,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resolver::Upstream(_) => "Resolver::Upstream",
            Resolver::System => "Resolver::System",
        })
    }
}

impl Resolver {
    pub(crate) fn new(servers: &[SocketAddr]) -> Result<Resolver, String> {
        if servers.is_empty() {
            return Ok(Resolver::System);
        }

        let mut builder = TokioResolver::builder_with_config(
            crate::shared::dns_servers::resolver_config(servers),
            TokioRuntimeProvider::default(),
        );
        // A client names hosts as typed into a browser: absolute, no search list.
        builder.options_mut().ndots = 0;
        builder.options_mut().use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        builder
            .build()
            .map(|resolver| Resolver::Upstream(Arc::new(resolver)))
            .map_err(|e| format!("DNS resolver for [wisp]: {e}"))
    }

    /// The addresses of `host` (an IP literal is its own answer). A name that does not
    /// resolve is unreachable (0x42).
    pub(crate) async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, CloseReason> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let addrs: Vec<IpAddr> = match self {
            Resolver::Upstream(resolver) => match resolver.lookup_ip(host).await {
                Ok(lookup) => lookup.iter().collect(),
                Err(error) => {
                    tracing::debug!("wisp: resolving {host} failed: {error}");
                    Vec::new()
                }
            },
            Resolver::System => match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(error) => {
                    tracing::debug!("wisp: resolving {host} failed: {error}");
                    Vec::new()
                }
            },
        };
        if addrs.is_empty() {
            Err(CloseReason::Unreachable)
        } else {
            Ok(addrs)
        }
    }
}

/// The IPv4 address the policy judges, for an IPv4 address or an IPv4-mapped IPv6 one.
fn as_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// The addresses of `addrs` that `policy` allows for `stream_type` to `port`, in order, or
/// why none is: the first address's denial. IPv6 is refused (the policy knows only IPv4, and
/// the relay's NAT is IPv4-only too), counted as `reserved`.
pub(crate) fn allowed(
    policy: &EgressPolicy,
    stream_type: StreamType,
    addrs: &[IpAddr],
    port: u16,
) -> Result<Vec<SocketAddr>, DenyReason> {
    let protocol = match stream_type {
        StreamType::Udp => NatProtocol::Udp,
        _ => NatProtocol::Tcp,
    };
    let mut first_denial = None;
    let mut allowed = Vec::new();
    for &ip in addrs {
        let verdict = match as_v4(ip) {
            Some(v4) => policy.check(protocol, v4, Some(port)).map(|()| v4),
            None => Err(DenyReason::Reserved),
        };
        match verdict {
            Ok(v4) => allowed.push(SocketAddr::from((v4, port))),
            Err(reason) => {
                first_denial.get_or_insert(reason);
            }
        }
    }
    match (allowed.is_empty(), first_denial) {
        (true, Some(reason)) => Err(reason),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn policy() -> EgressPolicy {
        EgressPolicy {
            host_addresses: vec!["198.18.7.1".parse().unwrap()],
            ..EgressPolicy::default()
        }
    }

    #[test]
    fn every_resolved_address_is_checked() {
        let p = policy();
        let tcp = StreamType::Tcp;
        for (addr, reason) in [
            ("127.0.0.1", DenyReason::Loopback),
            ("10.1.2.3", DenyReason::Private),
            ("198.18.7.1", DenyReason::HostAddress),
            ("169.254.169.254", DenyReason::LinkLocal),
            ("::ffff:127.0.0.1", DenyReason::Loopback),
            ("::1", DenyReason::Reserved),
        ] {
            assert_eq!(allowed(&p, tcp, &ips(&[addr]), 80), Err(reason), "{addr}");
        }
        // A name that resolves to a public and a private address reaches only the public one.
        let mixed = ips(&["10.0.0.5", "198.18.7.2", "127.0.0.1"]);
        assert_eq!(
            allowed(&p, tcp, &mixed, 80),
            Ok(vec!["198.18.7.2:80".parse().unwrap()])
        );
        // Port 25 is denied for TCP only.
        let public = ips(&["198.18.7.2"]);
        assert_eq!(allowed(&p, tcp, &public, 25), Err(DenyReason::Port));
        assert!(allowed(&p, StreamType::Udp, &public, 25).is_ok());
    }

    #[test]
    fn allow_private_and_rules_are_honoured() {
        let mut p = policy();
        p.allow_private = true;
        let private = ips(&["10.1.2.3"]);
        assert!(allowed(&p, StreamType::Tcp, &private, 80).is_ok());
        // Loopback stays denied with allow_private, until a rule names it.
        let lo = ips(&["127.0.0.1"]);
        assert_eq!(
            allowed(&p, StreamType::Tcp, &lo, 80),
            Err(DenyReason::Loopback)
        );
        p.allow.push(gateway::PolicyRule {
            network: "127.0.0.1/32".parse().unwrap(),
            ports: Some((80, 80)),
        });
        assert!(allowed(&p, StreamType::Tcp, &lo, 80).is_ok());
        assert!(allowed(&p, StreamType::Tcp, &lo, 81).is_err());
    }

    #[tokio::test]
    async fn literals_need_no_resolver() {
        let r = Resolver::System;
        assert_eq!(r.resolve("10.1.2.3", 80).await, Ok(ips(&["10.1.2.3"])));
        assert_eq!(r.resolve("[::1]", 80).await, Ok(ips(&["::1"])));
    }
}
