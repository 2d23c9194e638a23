//! Server configuration and its validation.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smoltcp::wire::EthernetAddress;

use crate::hostname;

/// Largest pool we accept. Allocation scans the pool, and every table is bounded by it, so
/// this caps both the CPU per DISCOVER and the memory of one LAN (a /16 still fits).
pub const MAX_POOL_SIZE: u32 = 65_536;

/// Upper bound for [`DhcpConfig::max_remembered_clients`].
pub const MAX_REMEMBERED_CLIENTS: usize = 1_000_000;

/// Configuration of one LAN's DHCP server.
///
/// Serializes with durations as whole seconds (`lease_time_secs`, ...) and MAC addresses as
/// `"52:54:00:12:34:56"`, so it reads naturally in TOML or JSON. Missing fields take the
/// [`Default`] (QEMU user-network convention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhcpConfig {
    /// Network address of the subnet, e.g. `10.0.2.0`.
    pub subnet: Ipv4Addr,
    /// Prefix length of the subnet, 8..=30.
    pub prefix_len: u8,
    /// Default gateway handed to clients (option 3).
    pub router: Ipv4Addr,
    /// DNS servers handed to clients (option 6); may lie outside the subnet; empty = none.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Server identifier (option 54) and source address of replies; `None` = `router`.
    pub server_id: Option<Ipv4Addr>,
    /// First address of the dynamic pool (inclusive).
    pub pool_start: Ipv4Addr,
    /// Last address of the dynamic pool (inclusive).
    pub pool_end: Ipv4Addr,
    /// Lease time (option 51); T1 is half of it, T2 seven eighths (RFC 2131 4.4.5).
    #[serde(rename = "lease_time_secs", with = "duration_secs")]
    pub lease_time: Duration,
    /// How long an OFFER reserves its address for the client.
    #[serde(rename = "offer_timeout_secs", with = "duration_secs")]
    pub offer_timeout: Duration,
    /// How long an address stays out of the pool after a DHCPDECLINE (someone else uses it).
    #[serde(rename = "decline_quarantine_secs", with = "duration_secs")]
    pub decline_quarantine: Duration,
    /// Interface MTU (option 26).
    pub mtu: u16,
    /// Domain name (option 15); empty = not sent.
    pub domain_name: String,
    /// Fixed MAC -> IP assignments; they may lie inside or outside the pool.
    pub static_leases: Vec<StaticLease>,
    /// How many clients' last addresses are remembered after their lease ended, so a client
    /// that comes back gets the same address. Oldest entries are forgotten first.
    pub max_remembered_clients: usize,
}

/// A fixed assignment from config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLease {
    #[serde(with = "mac_string")]
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
    /// DNS label for this client; overrides the host name the client sends.
    #[serde(default)]
    pub host_name: Option<String>,
}

impl Default for DhcpConfig {
    /// QEMU user-net: 10.0.2.0/24, router 10.0.2.2, DNS 10.0.2.3, pool .15-.254.
    fn default() -> Self {
        Self {
            subnet: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            router: Ipv4Addr::new(10, 0, 2, 2),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            server_id: None,
            pool_start: Ipv4Addr::new(10, 0, 2, 15),
            pool_end: Ipv4Addr::new(10, 0, 2, 254),
            // Browser tabs close without DHCPRELEASE, so the lease time is how long a dead
            // VM holds its address. One hour recycles a 240-address pool at ~4 new VMs per
            // minute, still covers reconnect gaps and relay restarts, and renewals every
            // 30 minutes cost nothing.
            lease_time: Duration::from_secs(3600),
            // udhcpc and dhclient send REQUEST within seconds of the OFFER.
            offer_timeout: Duration::from_secs(60),
            // dnsmasq's choice for declined addresses.
            decline_quarantine: Duration::from_secs(600),
            mtu: 1500,
            domain_name: "default.lan".to_owned(),
            static_leases: Vec::new(),
            max_remembered_clients: 4096,
        }
    }
}

/// Why a [`DhcpConfig`] was rejected; each message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("prefix_len {0} is unsupported: use 8..=30")]
    PrefixLen(u8),
    #[error("subnet {subnet} has host bits set for /{prefix_len}: use {network}")]
    SubnetHostBits {
        subnet: Ipv4Addr,
        prefix_len: u8,
        network: Ipv4Addr,
    },
    #[error(
        "{field} {ip} is outside subnet {subnet}/{prefix_len} or is its network/broadcast address: pick a host address inside the subnet"
    )]
    OutsideSubnet {
        field: &'static str,
        ip: Ipv4Addr,
        subnet: Ipv4Addr,
        prefix_len: u8,
    },
    #[error("pool_start {start} is after pool_end {end}: swap them")]
    PoolReversed { start: Ipv4Addr, end: Ipv4Addr },
    #[error("pool has {size} addresses, more than {max}: shrink pool_start..=pool_end")]
    PoolTooLarge { size: u32, max: u32 },
    #[error(
        "pool {start}..={end} has no usable address once router, DNS and server id are skipped: widen it"
    )]
    PoolEmpty { start: Ipv4Addr, end: Ipv4Addr },
    #[error("{field} {ip} is not a usable unicast address: use a real server address")]
    BadAddress { field: &'static str, ip: Ipv4Addr },
    #[error("lease_time_secs {0} is out of range: use 60..=2592000 (30 days)")]
    LeaseTime(u64),
    #[error("offer_timeout_secs {0} is out of range: use 1..=lease_time_secs")]
    OfferTimeout(u64),
    #[error("decline_quarantine_secs {0} is out of range: use 0..=86400")]
    DeclineQuarantine(u64),
    #[error("mtu {0} is out of range: use 576..=65535")]
    Mtu(u16),
    #[error("domain_name {0:?} is not a DNS name: use labels of [a-z0-9-], at most 253 bytes")]
    DomainName(String),
    #[error("max_remembered_clients {0} is too large: use at most {MAX_REMEMBERED_CLIENTS}")]
    MaxRemembered(usize),
    #[error("static_leases: mac {0} appears twice: keep one entry per MAC")]
    DuplicateStaticMac(EthernetAddress),
    #[error("static_leases: ip {0} appears twice: give each MAC its own address")]
    DuplicateStaticIp(Ipv4Addr),
    #[error("static_leases: mac {0} is not a unicast address: use the VM's NIC address")]
    StaticMac(EthernetAddress),
    #[error("static_leases: ip {0} is the router, DNS server or server id: pick another address")]
    StaticIpReserved(Ipv4Addr),
    #[error("static_leases: host_name {0:?} is not a DNS label: use 1-63 characters of [a-z0-9-]")]
    StaticHostName(String),
}

impl DhcpConfig {
    /// The server identifier actually used: `server_id` or else the router.
    pub fn effective_server_id(&self) -> Ipv4Addr {
        self.server_id.unwrap_or(self.router)
    }

    /// Subnet mask derived from `prefix_len` (clamped, so it never panics).
    pub fn subnet_mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// Directed broadcast address of the subnet (option 28).
    pub fn broadcast_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) | !prefix_mask(self.prefix_len))
    }

    /// Whether `ip` is inside the subnet (including network and broadcast addresses).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        u32::from(ip) & mask == u32::from(self.subnet) & mask
    }

    /// A host address of the subnet: inside it, and neither network nor broadcast.
    pub fn is_host_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.subnet && ip != self.broadcast_address()
    }

    /// Addresses never handed out: the router, the server id and DNS servers in the subnet.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        !self.is_host_address(ip)
            || ip == self.router
            || ip == self.effective_server_id()
            || self.dns_servers.contains(&ip)
    }

    /// Whether `ip` lies in `pool_start..=pool_end` (reserved addresses included).
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.pool_start..=self.pool_end).contains(&ip)
    }

    /// Check every field; the error names the first bad one and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_subnet()?;
        self.validate_server_addresses()?;
        self.validate_pool()?;
        self.validate_timers()?;
        self.validate_options()?;
        self.validate_static_leases()
    }

    fn outside_subnet(&self, field: &'static str, ip: Ipv4Addr) -> ConfigError {
        ConfigError::OutsideSubnet {
            field,
            ip,
            subnet: self.subnet,
            prefix_len: self.prefix_len,
        }
    }

    fn validate_subnet(&self) -> Result<(), ConfigError> {
        if !(8..=30).contains(&self.prefix_len) {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        let network = Ipv4Addr::from(u32::from(self.subnet) & prefix_mask(self.prefix_len));
        if network != self.subnet {
            return Err(ConfigError::SubnetHostBits {
                subnet: self.subnet,
                prefix_len: self.prefix_len,
                network,
            });
        }
        Ok(())
    }

    /// Router, server id and DNS servers.
    fn validate_server_addresses(&self) -> Result<(), ConfigError> {
        if !self.is_host_address(self.router) {
            return Err(self.outside_subnet("router", self.router));
        }
        if !self.is_host_address(self.effective_server_id()) {
            return Err(self.outside_subnet("server_id", self.effective_server_id()));
        }
        for &dns in &self.dns_servers {
            if dns.is_unspecified() || dns.is_broadcast() || dns.is_multicast() {
                return Err(ConfigError::BadAddress {
                    field: "dns_servers",
                    ip: dns,
                });
            }
        }
        Ok(())
    }

    fn validate_pool(&self) -> Result<(), ConfigError> {
        if !self.is_host_address(self.pool_start) {
            return Err(self.outside_subnet("pool_start", self.pool_start));
        }
        if !self.is_host_address(self.pool_end) {
            return Err(self.outside_subnet("pool_end", self.pool_end));
        }
        if self.pool_start > self.pool_end {
            return Err(ConfigError::PoolReversed {
                start: self.pool_start,
                end: self.pool_end,
            });
        }
        let size = u32::from(self.pool_end) - u32::from(self.pool_start) + 1;
        if size > MAX_POOL_SIZE {
            return Err(ConfigError::PoolTooLarge {
                size,
                max: MAX_POOL_SIZE,
            });
        }
        let usable = (u32::from(self.pool_start)..=u32::from(self.pool_end))
            .any(|ip| !self.is_reserved(Ipv4Addr::from(ip)));
        if !usable {
            return Err(ConfigError::PoolEmpty {
                start: self.pool_start,
                end: self.pool_end,
            });
        }
        Ok(())
    }

    /// Lease time, offer timeout and decline quarantine.
    fn validate_timers(&self) -> Result<(), ConfigError> {
        let lease_secs = self.lease_time.as_secs();
        if !(60..=30 * 86_400).contains(&lease_secs) {
            return Err(ConfigError::LeaseTime(lease_secs));
        }
        if self.offer_timeout.is_zero() || self.offer_timeout > self.lease_time {
            return Err(ConfigError::OfferTimeout(self.offer_timeout.as_secs()));
        }
        if self.decline_quarantine > Duration::from_secs(86_400) {
            return Err(ConfigError::DeclineQuarantine(
                self.decline_quarantine.as_secs(),
            ));
        }
        Ok(())
    }

    /// MTU, domain name and the remembered-clients bound.
    fn validate_options(&self) -> Result<(), ConfigError> {
        if self.mtu < 576 {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if !self.domain_name.is_empty() && !hostname::is_valid_domain(&self.domain_name) {
            return Err(ConfigError::DomainName(self.domain_name.clone()));
        }
        if self.max_remembered_clients > MAX_REMEMBERED_CLIENTS {
            return Err(ConfigError::MaxRemembered(self.max_remembered_clients));
        }
        Ok(())
    }

    fn validate_static_leases(&self) -> Result<(), ConfigError> {
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for lease in &self.static_leases {
            if !lease.mac.is_unicast() || lease.mac == EthernetAddress([0; 6]) {
                return Err(ConfigError::StaticMac(lease.mac));
            }
            if !macs.insert(lease.mac) {
                return Err(ConfigError::DuplicateStaticMac(lease.mac));
            }
            if !self.is_host_address(lease.ip) {
                return Err(self.outside_subnet("static_leases.ip", lease.ip));
            }
            if self.is_reserved(lease.ip) {
                return Err(ConfigError::StaticIpReserved(lease.ip));
            }
            if !ips.insert(lease.ip) {
                return Err(ConfigError::DuplicateStaticIp(lease.ip));
            }
            if let Some(name) = &lease.host_name
                && !hostname::is_valid_label(name)
            {
                return Err(ConfigError::StaticHostName(name.clone()));
            }
        }
        Ok(())
    }
}

fn prefix_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

/// `Duration` as whole seconds, the unit people write in config files.
pub(crate) mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// `EthernetAddress` as `"52:54:00:12:34:56"` (`-` separators are accepted too).
pub(crate) mod mac_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use smoltcp::wire::EthernetAddress;

    pub fn format(mac: &EthernetAddress) -> String {
        let b = mac.0;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }

    pub fn parse(text: &str) -> Option<EthernetAddress> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(EthernetAddress(bytes))
    }

    pub fn serialize<S: Serializer>(mac: &EthernetAddress, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(mac))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EthernetAddress, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| D::Error::custom(format!("bad MAC address {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_qemu_like() {
        let config = DhcpConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.subnet_mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(config.broadcast_address(), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(config.effective_server_id(), Ipv4Addr::new(10, 0, 2, 2));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let bad = DhcpConfig {
            pool_end: Ipv4Addr::new(10, 0, 3, 10),
            ..DhcpConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::OutsideSubnet {
                field: "pool_end",
                ..
            }
        ));
        assert!(err.to_string().contains("pool_end 10.0.3.10"));

        let bad = DhcpConfig {
            router: Ipv4Addr::new(192, 168, 1, 1),
            ..DhcpConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("router")
        );

        let bad = DhcpConfig {
            subnet: Ipv4Addr::new(10, 0, 2, 1),
            ..DhcpConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("use 10.0.2.0")
        );

        let bad = DhcpConfig {
            pool_start: Ipv4Addr::new(10, 0, 2, 200),
            pool_end: Ipv4Addr::new(10, 0, 2, 100),
            ..DhcpConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::PoolReversed { .. })
        ));

        let bad = DhcpConfig {
            pool_start: Ipv4Addr::new(10, 0, 2, 2),
            pool_end: Ipv4Addr::new(10, 0, 2, 3),
            ..DhcpConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::PoolEmpty { .. })));

        let bad = DhcpConfig {
            domain_name: "bad domain".into(),
            ..DhcpConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::DomainName(_))));

        let bad = DhcpConfig {
            static_leases: vec![StaticLease {
                mac: EthernetAddress([0x52, 0x54, 0, 0, 0, 1]),
                ip: Ipv4Addr::new(10, 0, 2, 2),
                host_name: None,
            }],
            ..DhcpConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::StaticIpReserved(_))
        ));

        let big = DhcpConfig {
            subnet: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 8,
            router: Ipv4Addr::new(10, 0, 0, 1),
            dns_servers: vec![],
            pool_start: Ipv4Addr::new(10, 0, 0, 2),
            pool_end: Ipv4Addr::new(10, 255, 255, 254),
            ..DhcpConfig::default()
        };
        assert!(matches!(
            big.validate(),
            Err(ConfigError::PoolTooLarge { .. })
        ));
    }

    #[test]
    fn config_serde_uses_seconds_and_mac_strings() {
        let json = r#"{
            "subnet": "192.168.127.0", "router": "192.168.127.1",
            "dns_servers": ["192.168.127.1"],
            "pool_start": "192.168.127.100", "pool_end": "192.168.127.200",
            "lease_time_secs": 600,
            "static_leases": [{"mac": "52:54:00:aa:bb:cc", "ip": "192.168.127.10", "host_name": "db"}]
        }"#;
        let config: DhcpConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.lease_time, Duration::from_secs(600));
        assert_eq!(config.prefix_len, 24);
        assert_eq!(
            config.static_leases[0].mac,
            EthernetAddress([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
        );
        assert_eq!(config.validate(), Ok(()));
        let back: DhcpConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert!(serde_json::from_str::<DhcpConfig>(r#"{"lease_time": 5}"#).is_err());
    }

    #[test]
    fn mac_parse_rejects_garbage() {
        assert_eq!(
            mac_string::parse("52-54-00-12-34-56"),
            Some(EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:566",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(mac_string::parse(bad), None, "{bad}");
        }
    }
}
