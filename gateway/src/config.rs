//! Addresses and limits of one LAN's gateway port, and their validation.

use std::net::Ipv4Addr;

use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

/// Smallest MTU we accept: every IPv4 host must take 576-byte datagrams (RFC 791), and
/// DHCP replies are sized for it.
pub const MIN_MTU: u16 = 576;

/// Settings of one LAN's gateway. [`Default`] is the QEMU user-network convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The LAN's subnet, host bits zero (e.g. `10.0.2.0/24`).
    pub network: Ipv4Cidr,
    /// The router address: answers ARP and ping, serves DHCP.
    pub gateway_ip: Ipv4Addr,
    /// Source MAC of every frame the gateway emits; also answers ARP for `dns_ip`.
    pub gateway_mac: EthernetAddress,
    /// The DNS address: answers ARP and ping, serves DNS on UDP port 53.
    pub dns_ip: Ipv4Addr,
    /// Largest IPv4 packet emitted (header included); larger ones are dropped and counted.
    pub mtu: u16,
    /// Entries of the IP -> MAC cache (least recently seen evicted first).
    pub max_neighbors: usize,
    /// Frames waiting for [`crate::Gateway::poll_frame`]; more are dropped and counted.
    pub max_queued_frames: usize,
}

impl Default for GatewayConfig {
    /// 10.0.2.0/24, gateway 10.0.2.2 (52:54:00:12:34:56), DNS 10.0.2.3, MTU 1500.
    fn default() -> Self {
        Self {
            network: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 0), 24),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            gateway_mac: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            dns_ip: Ipv4Addr::new(10, 0, 2, 3),
            mtu: 1500,
            max_neighbors: 1024,
            max_queued_frames: 1024,
        }
    }
}

/// Why a [`GatewayConfig`] was rejected; each message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "network: prefix /{0} leaves no room for gateway, DNS and a client; use /30 or shorter"
    )]
    PrefixTooLong(u8),
    #[error("network: {given} has host bits set; use {network}")]
    HostBitsSet { given: Ipv4Cidr, network: Ipv4Cidr },
    #[error(
        "{field}: {ip} is not a host address of {network}; pick one inside it (not the network or broadcast address)"
    )]
    OutsideNetwork {
        field: &'static str,
        ip: Ipv4Addr,
        network: Ipv4Cidr,
    },
    #[error(
        "gateway_mac: {0} is not a unicast address; use a locally administered one such as 52:54:00:12:34:56"
    )]
    GatewayMac(EthernetAddress),
    #[error("mtu: {0} is below {MIN_MTU}, the IPv4 minimum; use 1500")]
    MtuTooSmall(u16),
    #[error("{0}: must be at least 1")]
    Zero(&'static str),
}

impl GatewayConfig {
    /// Checks addresses and limits; [`crate::Gateway::new`] does not, so call this first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let prefix = self.network.prefix_len();
        if prefix > 30 {
            return Err(ConfigError::PrefixTooLong(prefix));
        }
        let network = self.network.network();
        if network != self.network {
            return Err(ConfigError::HostBitsSet {
                given: self.network,
                network,
            });
        }
        for (field, ip) in [("gateway_ip", self.gateway_ip), ("dns_ip", self.dns_ip)] {
            if !self.is_host_address(ip) {
                return Err(ConfigError::OutsideNetwork {
                    field,
                    ip,
                    network: self.network,
                });
            }
        }
        // dns_ip may equal gateway_ip: env86 and many home routers serve DNS on the router.
        if !self.gateway_mac.is_unicast() || self.gateway_mac == EthernetAddress([0; 6]) {
            return Err(ConfigError::GatewayMac(self.gateway_mac));
        }
        if self.mtu < MIN_MTU {
            return Err(ConfigError::MtuTooSmall(self.mtu));
        }
        if self.max_neighbors == 0 {
            return Err(ConfigError::Zero("max_neighbors"));
        }
        if self.max_queued_frames == 0 {
            return Err(ConfigError::Zero("max_queued_frames"));
        }
        Ok(())
    }

    /// The subnet's broadcast address (`None` for /31 and /32).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        self.network.broadcast()
    }

    /// Inside the subnet and neither its network nor its broadcast address.
    pub fn is_host_address(&self, ip: Ipv4Addr) -> bool {
        self.network.contains_addr(&ip)
            && ip != self.network.network().address()
            && Some(ip) != self.broadcast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn env86_style_is_valid() {
        let config = GatewayConfig {
            network: Ipv4Cidr::new(Ipv4Addr::new(192, 168, 127, 0), 24),
            gateway_ip: Ipv4Addr::new(192, 168, 127, 1),
            dns_ip: Ipv4Addr::new(192, 168, 127, 2),
            ..GatewayConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn rejections_name_the_field() {
        let base = GatewayConfig::default();
        let cases = [
            (
                GatewayConfig {
                    network: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 7), 24),
                    ..base.clone()
                },
                "network: 10.0.2.7/24 has host bits set; use 10.0.2.0/24",
            ),
            (
                GatewayConfig {
                    network: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 0), 31),
                    ..base.clone()
                },
                "network:",
            ),
            (
                GatewayConfig {
                    gateway_ip: Ipv4Addr::new(10, 0, 3, 2),
                    ..base.clone()
                },
                "gateway_ip: 10.0.3.2",
            ),
            (
                GatewayConfig {
                    dns_ip: Ipv4Addr::new(10, 0, 2, 255),
                    ..base.clone()
                },
                "dns_ip: 10.0.2.255",
            ),
            (
                GatewayConfig {
                    gateway_mac: EthernetAddress::BROADCAST,
                    ..base.clone()
                },
                "gateway_mac:",
            ),
            (
                GatewayConfig {
                    mtu: 500,
                    ..base.clone()
                },
                "mtu: 500",
            ),
            (
                GatewayConfig {
                    max_neighbors: 0,
                    ..base.clone()
                },
                "max_neighbors:",
            ),
            (
                GatewayConfig {
                    max_queued_frames: 0,
                    ..base.clone()
                },
                "max_queued_frames:",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message:?} !~ {expected:?}");
        }
    }
}
