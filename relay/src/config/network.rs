//! Per-LAN network settings: `[network]` sets every LAN's defaults, `[lans.NAME]` overrides
//! any of its keys for one LAN. Turned into the gateway, DHCP and DNS cores' configs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

/// One LAN's addresses and services. The defaults are QEMU's user network.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NetworkConfig {
    /// Run the gateway (ARP, ping, DHCP, DNS) on this LAN. Off: a bare switch.
    pub(crate) gateway_enabled: bool,
    pub(crate) subnet: String,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) gateway_mac: String,
    pub(crate) dns: Ipv4Addr,
    pub(crate) pool_start: Ipv4Addr,
    pub(crate) pool_end: Ipv4Addr,
    pub(crate) mtu: u16,
    pub(crate) lease_time_secs: u64,
    /// LAN NAME gets the DNS domain `NAME.<domain_suffix>`.
    pub(crate) domain_suffix: String,
    pub(crate) static_leases: Vec<dhcp::StaticLease>,
    /// Overrides `limits.port_rate` on this LAN (`"10Mbit"`, `"2MB"` per second, `"off"`).
    pub(crate) port_rate: Option<String>,
    /// Overrides `limits.lan_rate` on this LAN.
    pub(crate) lan_rate: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            gateway_enabled: true,
            subnet: "10.0.2.0/24".to_owned(),
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            gateway_mac: "52:54:00:12:34:56".to_owned(),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            pool_start: Ipv4Addr::new(10, 0, 2, 15),
            pool_end: Ipv4Addr::new(10, 0, 2, 254),
            mtu: 1500,
            lease_time_secs: 3600,
            domain_suffix: "lan".to_owned(),
            static_leases: Vec::new(),
            port_rate: None,
            lan_rate: None,
        }
    }
}

/// The cores' configs for one LAN, checked.
#[derive(Clone, Debug)]
pub(crate) struct LanServices {
    pub(crate) gateway: gateway::GatewayConfig,
    pub(crate) dhcp: dhcp::DhcpConfig,
    pub(crate) dns: dns::DnsConfig,
}

/// The `[network]` and `[lans.*]` tables as written, merged and checked per LAN on demand.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NetworkTables {
    pub(crate) defaults: toml::Table,
    pub(crate) lans: BTreeMap<String, toml::Table>,
}

impl NetworkTables {
    /// The settings of LAN `lan`: its `[lans.NAME]` keys over `[network]` over built-ins.
    pub(crate) fn for_lan(&self, lan: &str) -> Result<NetworkConfig, String> {
        let mut merged = self.defaults.clone();
        let section = match self.lans.get(lan) {
            Some(overrides) => {
                for (k, v) in overrides {
                    merged.insert(k.clone(), v.clone());
                }
                format!("[lans.{lan}]")
            }
            None => "[network]".to_owned(),
        };
        NetworkConfig::deserialize(toml::Value::Table(merged))
            .map_err(|e| format!("{section}: {}", e.message()))
    }
}

impl NetworkConfig {
    pub(crate) fn services(&self, lan: &str) -> Result<LanServices, String> {
        let network: Ipv4Cidr = parse_cidr(&self.subnet).ok_or_else(|| {
            format!(
                "subnet = {:?} is not an IPv4 CIDR; write it as 10.0.2.0/24",
                self.subnet
            )
        })?;
        let gateway_mac = parse_mac(&self.gateway_mac).ok_or_else(|| {
            format!(
                "gateway_mac = {:?} is not a MAC address; write it as 52:54:00:12:34:56",
                self.gateway_mac
            )
        })?;
        let gateway = gateway::GatewayConfig {
            network,
            gateway_ip: self.gateway,
            gateway_mac,
            dns_ip: self.dns,
            mtu: self.mtu,
            ..gateway::GatewayConfig::default()
        };
        gateway.validate().map_err(|e| e.to_string())?;
        let domain = format!("{}.{}", lan.to_ascii_lowercase(), self.domain_suffix);
        let dhcp = dhcp::DhcpConfig {
            subnet: network.network().address(),
            prefix_len: network.prefix_len(),
            router: self.gateway,
            dns_servers: vec![self.dns],
            server_id: None,
            pool_start: self.pool_start,
            pool_end: self.pool_end,
            lease_time: Duration::from_secs(self.lease_time_secs),
            mtu: self.mtu,
            domain_name: domain.clone(),
            static_leases: self.static_leases.clone(),
            ..dhcp::DhcpConfig::default()
        };
        dhcp.validate().map_err(|e| e.to_string())?;
        let dns = dns::DnsConfig::new(&domain).map_err(|e| {
            format!("domain_suffix = {:?} gives the invalid domain {domain:?} ({e}); use letters, digits and '-'", self.domain_suffix)
        })?;
        Ok(LanServices { gateway, dhcp, dns })
    }
}

fn parse_cidr(text: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then(|| Ipv4Cidr::new(addr, prefix))
}

fn parse_mac(text: &str) -> Option<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut bytes {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(EthernetAddress(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_qemu_user_net() {
        let services = NetworkConfig::default().services("class-1").unwrap();
        assert_eq!(services.gateway.gateway_ip, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(services.dhcp.domain_name, "class-1.lan");
        assert_eq!(services.dns.domain, "class-1.lan");
    }

    #[test]
    fn per_lan_overrides_merge_over_defaults() {
        let tables = NetworkTables {
            defaults: toml::toml! { mtu = 1400 },
            lans: [(
                "env86".to_owned(),
                toml::toml! {
                    subnet = "192.168.127.0/24"
                    gateway = "192.168.127.1"
                    dns = "192.168.127.1"
                    pool_start = "192.168.127.100"
                    pool_end = "192.168.127.200"
                },
            )]
            .into(),
        };
        let env86 = tables.for_lan("env86").unwrap();
        assert_eq!(env86.mtu, 1400);
        assert_eq!(env86.gateway, Ipv4Addr::new(192, 168, 127, 1));
        env86.services("env86").unwrap();
        assert_eq!(tables.for_lan("other").unwrap().subnet, "10.0.2.0/24");
    }

    #[test]
    fn mistakes_name_the_section_and_key() {
        let tables = NetworkTables {
            defaults: toml::Table::new(),
            lans: [("x".to_owned(), toml::toml! { gatway = "10.0.2.2" })].into(),
        };
        let err = tables.for_lan("x").unwrap_err();
        assert!(err.contains("[lans.x]") && err.contains("gatway"), "{err}");
        let bad = NetworkConfig {
            subnet: "10.0.2.0".to_owned(),
            ..NetworkConfig::default()
        };
        assert!(bad.services("x").unwrap_err().contains("subnet"));
    }
}
