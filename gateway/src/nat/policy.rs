//! Where VMs may connect: a hosted relay must never become a way into its own network.

use std::net::Ipv4Addr;

use smoltcp::wire::Ipv4Cidr;

labels::label_enum! {
    /// Transport protocol of a NAT flow, as a metric label.
    pub enum NatProtocol {
        Tcp => "tcp",
        Udp => "udp",
        Icmp => "icmp",
    }
}

/// A CIDR with an optional inclusive port range (`None`: every port, and ICMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule {
    pub network: Ipv4Cidr,
    pub ports: Option<(u16, u16)>,
}

impl PolicyRule {
    fn matches(&self, ip: Ipv4Addr, port: Option<u16>) -> bool {
        if !self.network.contains_addr(&ip) {
            return false;
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((low, high)), Some(port)) => (low..=high).contains(&port),
            // A port rule says nothing about ping.
            (Some(_), None) => false,
        }
    }
}

labels::label_enum! {
    /// Why a connection was refused; a bounded metric label.
    pub enum DenyReason {
        Loopback => "loopback",
        Private => "private",
        Cgnat => "cgnat",
        LinkLocal => "link_local",
        Multicast => "multicast",
        /// 0.0.0.0/8, 240.0.0.0/4 and broadcast: nothing a VM can reach.
        Reserved => "reserved",
        /// One of the relay host's own addresses.
        HostAddress => "host_address",
        /// A TCP port on the denied list (25 by default).
        Port => "port",
        /// A `deny` rule of the config.
        DenyRule => "deny_rule",
        /// Over the VM's flow or connection-rate limit.
        Limit => "limit",
        /// The LAN's internet access is switched off (`Nat::set_internet`).
        InternetOff => "internet_off",
    }
}

/// Counts per [`DenyReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyCounts([u64; DenyReason::ALL.len()]);

impl DenyCounts {
    pub fn add(&mut self, reason: DenyReason) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: DenyReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn merge(&mut self, other: &DenyCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// The egress policy. Order: `deny` rules, then `allow` rules, then the built-in denials
/// (loopback, RFC 1918, CGNAT, link-local including 169.254.169.254, multicast, reserved,
/// the host's own addresses, denied TCP ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Lifts the RFC 1918 and CGNAT denials (not loopback, link-local or host addresses:
    /// those need an explicit `allow` rule).
    pub allow_private: bool,
    pub allow: Vec<PolicyRule>,
    pub deny: Vec<PolicyRule>,
    /// TCP destination ports denied everywhere unless an `allow` rule names them.
    pub denied_tcp_ports: Vec<u16>,
    /// The relay host's own addresses (the driver fills them in).
    pub host_addresses: Vec<Ipv4Addr>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            allow_private: false,
            allow: Vec::new(),
            deny: Vec::new(),
            denied_tcp_ports: vec![25],
            host_addresses: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// `port` is `None` for ping.
    pub fn check(
        &self,
        protocol: NatProtocol,
        ip: Ipv4Addr,
        port: Option<u16>,
    ) -> Result<(), DenyReason> {
        if self.deny.iter().any(|rule| rule.matches(ip, port)) {
            return Err(DenyReason::DenyRule);
        }
        if self.allow.iter().any(|rule| rule.matches(ip, port)) {
            return Ok(());
        }
        let octets = ip.octets();
        if ip.is_loopback() {
            Err(DenyReason::Loopback)
        } else if ip.is_multicast() {
            Err(DenyReason::Multicast)
        } else if ip.is_unspecified() || octets[0] == 0 || octets[0] >= 240 {
            Err(DenyReason::Reserved)
        } else if ip.is_link_local() {
            Err(DenyReason::LinkLocal)
        } else if ip.is_private() && !self.allow_private {
            Err(DenyReason::Private)
        } else if octets[0] == 100 && (64..128).contains(&octets[1]) && !self.allow_private {
            Err(DenyReason::Cgnat)
        } else if self.host_addresses.contains(&ip) {
            Err(DenyReason::HostAddress)
        } else if protocol == NatProtocol::Tcp
            && port.is_some_and(|port| self.denied_tcp_ports.contains(&port))
        {
            Err(DenyReason::Port)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_what_a_hosted_relay_must_not_reach() {
        let policy = EgressPolicy {
            host_addresses: vec![ip("203.0.113.7")],
            ..EgressPolicy::default()
        };
        let tcp = |addr: &str, port| policy.check(NatProtocol::Tcp, ip(addr), Some(port));
        assert_eq!(tcp("127.0.0.1", 80), Err(DenyReason::Loopback));
        assert_eq!(tcp("10.1.2.3", 80), Err(DenyReason::Private));
        assert_eq!(tcp("172.16.0.1", 80), Err(DenyReason::Private));
        assert_eq!(tcp("192.168.1.1", 80), Err(DenyReason::Private));
        assert_eq!(tcp("100.64.0.1", 80), Err(DenyReason::Cgnat));
        assert_eq!(tcp("169.254.169.254", 80), Err(DenyReason::LinkLocal));
        assert_eq!(tcp("224.0.0.1", 80), Err(DenyReason::Multicast));
        assert_eq!(tcp("0.1.2.3", 80), Err(DenyReason::Reserved));
        assert_eq!(tcp("255.255.255.255", 80), Err(DenyReason::Reserved));
        assert_eq!(tcp("203.0.113.7", 80), Err(DenyReason::HostAddress));
        assert_eq!(tcp("198.18.0.2", 25), Err(DenyReason::Port));
        assert_eq!(tcp("198.18.0.2", 80), Ok(()));
        assert_eq!(tcp("100.128.0.1", 80), Ok(()));
        assert_eq!(
            policy.check(NatProtocol::Udp, ip("198.18.0.2"), Some(25)),
            Ok(())
        );
        assert_eq!(
            policy.check(NatProtocol::Icmp, ip("198.18.0.2"), None),
            Ok(())
        );
    }

    #[test]
    fn rules_and_allow_private() {
        let rule = |net: &str, ports| PolicyRule {
            network: net.parse().unwrap(),
            ports,
        };
        let policy = EgressPolicy {
            allow_private: true,
            allow: vec![rule("127.0.0.1/32", Some((8000, 8099)))],
            deny: vec![rule("10.9.0.0/16", None), rule("0.0.0.0/0", Some((22, 22)))],
            ..EgressPolicy::default()
        };
        let tcp = |addr: &str, port| policy.check(NatProtocol::Tcp, ip(addr), Some(port));
        assert_eq!(tcp("10.1.2.3", 80), Ok(()));
        assert_eq!(tcp("100.64.0.1", 80), Ok(()));
        assert_eq!(tcp("10.9.1.1", 80), Err(DenyReason::DenyRule));
        assert_eq!(tcp("198.18.0.2", 22), Err(DenyReason::DenyRule));
        assert_eq!(tcp("127.0.0.1", 8080), Ok(()));
        assert_eq!(tcp("127.0.0.1", 9000), Err(DenyReason::Loopback));
        assert_eq!(
            policy.check(NatProtocol::Icmp, ip("127.0.0.1"), None),
            Err(DenyReason::Loopback)
        );
    }
}
