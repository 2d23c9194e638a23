//! `[dns] upstream` as hickory's resolver configuration: each server over UDP, and TCP for
//! truncated answers. The gateway's DNS proxy and the Wisp server both resolve with it.

use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};

pub(crate) fn resolver_config(servers: &[SocketAddr]) -> ResolverConfig {
    let name_servers = servers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(name_servers)
}
