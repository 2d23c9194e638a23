//! `[nat]`: internet access for the VMs, as the file spells it, and its conversion to the
//! sans-IO core's [`gateway::NatConfig`] (egress rules `CIDR[:PORT[-PORT]]`).

use std::str::FromStr;
use std::time::Duration;

use gateway::{BufferBudget, NatConfig, PolicyRule, TcpCongestion};

/// 512 MiB: a thousand busy flows at full size (256 KiB each way), or 65,536 idle ones.
const DEFAULT_BUFFER_BUDGET: usize = 512 << 20;
use serde::Deserialize;
use smoltcp::wire::Ipv4Cidr;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatSection {
    /// Route VM traffic to outside addresses through the relay's own sockets.
    pub enabled: bool,
    /// TCP/UDP to the gateway address reach the relay host's 127.0.0.1 (QEMU's 10.0.2.2).
    pub host_loopback: bool,
    /// Let VMs reach RFC 1918 and CGNAT addresses.
    pub allow_private: bool,
    /// `CIDR` or `CIDR:PORT` or `CIDR:LOW-HIGH`; checked after `deny`, before the defaults.
    pub allow: Vec<String>,
    /// Same syntax; checked first.
    pub deny: Vec<String>,
    pub denied_tcp_ports: Vec<u16>,
    /// Each way, per TCP flow.
    pub tcp_buffer_bytes: usize,
    /// NAT buffer memory of all LANs together (what flows' bytes can have touched); flows
    /// opened while it is near get smaller buffers (smaller windows), down to 4 KiB.
    pub buffer_budget_bytes: usize,
    pub max_tcp_flows_per_vm: usize,
    pub max_udp_flows_per_vm: usize,
    pub new_flows_per_sec: u32,
    pub connect_timeout_secs: u64,
    pub tcp_idle_timeout_secs: u64,
    /// A VM that stops answering loses its TCP connections after this long.
    pub vm_timeout_secs: u64,
    pub udp_idle_timeout_secs: u64,
    /// Inbound forwards, as `--forward` spells them.
    pub forwards: Vec<String>,
    /// TCP congestion control toward the VMs.
    pub tcp_congestion_control: CongestionControl,
}

/// `tcp_congestion_control` as the file spells it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    #[default]
    Reno,
    Cubic,
    None,
}

impl Default for NatSection {
    fn default() -> Self {
        let core = gateway::NatConfig::default();
        Self {
            enabled: true,
            host_loopback: false,
            allow_private: false,
            allow: Vec::new(),
            deny: Vec::new(),
            denied_tcp_ports: core.policy.denied_tcp_ports.clone(),
            tcp_buffer_bytes: core.tcp_rx_buffer,
            buffer_budget_bytes: DEFAULT_BUFFER_BUDGET,
            max_tcp_flows_per_vm: core.max_tcp_flows_per_vm,
            max_udp_flows_per_vm: core.max_udp_flows_per_vm,
            new_flows_per_sec: core.new_flows_per_sec,
            connect_timeout_secs: 10,
            tcp_idle_timeout_secs: core.tcp_idle_timeout.as_secs(),
            vm_timeout_secs: core.tcp_vm_timeout.as_secs(),
            udp_idle_timeout_secs: core.udp_idle_timeout.as_secs(),
            forwards: Vec::new(),
            tcp_congestion_control: CongestionControl::default(),
        }
    }
}

/// The `[nat]` section as the core's config. Errors name the key and the fix.
pub(crate) fn core_config(section: &NatSection) -> Result<NatConfig, String> {
    let rules = |key: &str, list: &[String]| -> Result<Vec<PolicyRule>, String> {
        list.iter()
            .map(|text| {
                parse_rule(text).map_err(|problem| {
                    format!("{key}: `{text}` {problem}; write CIDR, CIDR:PORT or CIDR:LOW-HIGH, e.g. 198.18.0.0/15:80")
                })
            })
            .collect()
    };
    if section.tcp_buffer_bytes < 4096 || section.tcp_buffer_bytes > 16 << 20 {
        return Err(format!(
            "tcp_buffer_bytes = {} is out of range; use 4096 to 16777216 (default 262144)",
            section.tcp_buffer_bytes
        ));
    }
    if section.buffer_budget_bytes < 2 * section.tcp_buffer_bytes {
        return Err(format!(
            "buffer_budget_bytes = {} is less than one flow's buffers (2 x tcp_buffer_bytes = {}); \
             raise it (default {DEFAULT_BUFFER_BUDGET}) or lower tcp_buffer_bytes",
            section.buffer_budget_bytes,
            2 * section.tcp_buffer_bytes
        ));
    }
    if section.connect_timeout_secs == 0 {
        return Err("connect_timeout_secs must be at least 1 (default 10)".to_owned());
    }
    let mut config = NatConfig {
        host_loopback: section.host_loopback,
        tcp_rx_buffer: section.tcp_buffer_bytes,
        tcp_tx_buffer: section.tcp_buffer_bytes,
        max_tcp_flows_per_vm: section.max_tcp_flows_per_vm,
        max_udp_flows_per_vm: section.max_udp_flows_per_vm,
        new_flows_per_sec: section.new_flows_per_sec,
        tcp_idle_timeout: Duration::from_secs(section.tcp_idle_timeout_secs.max(1)),
        tcp_vm_timeout: Duration::from_secs(section.vm_timeout_secs.max(1)),
        udp_idle_timeout: Duration::from_secs(section.udp_idle_timeout_secs.max(1)),
        buffer_budget: BufferBudget::new(section.buffer_budget_bytes),
        tcp_congestion: match section.tcp_congestion_control {
            CongestionControl::Reno => TcpCongestion::Reno,
            CongestionControl::Cubic => TcpCongestion::Cubic,
            CongestionControl::None => TcpCongestion::None,
        },
        ..NatConfig::default()
    };
    config.policy.allow_private = section.allow_private;
    config.policy.allow = rules("allow", &section.allow)?;
    config.policy.deny = rules("deny", &section.deny)?;
    config.policy.denied_tcp_ports = section.denied_tcp_ports.clone();
    Ok(config)
}

fn parse_rule(text: &str) -> Result<PolicyRule, &'static str> {
    let (net, ports) = match text.split_once(':') {
        Some((net, ports)) => (net, Some(ports)),
        None => (text, None),
    };
    let network = if net.contains('/') {
        Ipv4Cidr::from_str(net).map_err(|_| "is not an IPv4 CIDR")?
    } else {
        Ipv4Cidr::new(net.parse().map_err(|_| "is not an IPv4 address")?, 32)
    };
    let network = Ipv4Cidr::new(network.network().address(), network.prefix_len());
    let ports = match ports {
        None => None,
        Some(ports) => {
            let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
            let low: u16 = low.parse().map_err(|_| "has a bad port")?;
            let high: u16 = high.parse().map_err(|_| "has a bad port")?;
            if low > high {
                return Err("has a port range whose start is above its end");
            }
            Some((low, high))
        }
    };
    Ok(PolicyRule { network, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(
            parse_rule("198.18.0.0/15:80-90"),
            Ok(PolicyRule {
                network: "198.18.0.0/15".parse().unwrap(),
                ports: Some((80, 90))
            })
        );
        assert_eq!(
            parse_rule("127.0.0.1").unwrap().network,
            "127.0.0.1/32".parse().unwrap()
        );
        assert!(parse_rule("10.0.0.0/8:90-80").is_err());
        assert!(parse_rule("nope").is_err());
    }
}
