//! What other tasks ask of a LAN's gateway task ([`GatewayCommand`]), where they find it
//! ([`GatewayDirectory`]), and how a forward's target is resolved in the LAN.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::config::ForwardTarget;
use crate::shared::LanName;

/// What other tasks ask of a LAN's gateway task.
#[derive(Debug)]
pub(crate) enum GatewayCommand {
    /// A host connection for `target:port` in this LAN.
    InboundTcp {
        target: ForwardTarget,
        port: u16,
        stream: TcpStream,
    },
    /// A datagram from `client` to a UDP forward; answers go back through `socket`.
    InboundUdp {
        target: ForwardTarget,
        port: u16,
        client: SocketAddrV4,
        payload: Bytes,
        socket: Arc<UdpSocket>,
    },
    /// The LAN's leases and flows, for the admin API.
    Describe(oneshot::Sender<serde_json::Value>),
    /// New egress rules from a config reload.
    SetEgressPolicy(gateway::EgressPolicy),
    /// A teacher's switch: NAT on or off for this LAN; the answer is false when the LAN has
    /// no NAT.
    SetInternet(bool, oneshot::Sender<bool>),
    /// Ends the dynamic leases of a removed machine; the answer is the addresses freed.
    ReleaseMac(gateway::EthernetAddress, oneshot::Sender<Vec<Ipv4Addr>>),
    /// ARP requests for the addresses seen most recently (see `lan/returning.rs`).
    NeighborProbes(usize, oneshot::Sender<Vec<Bytes>>),
}

/// Each live gateway task's command channel, by LAN, and the LANs whose internet a
/// teacher switched off (remembered here so a LAN that goes and comes back keeps it off).
#[derive(Debug, Default)]
pub(crate) struct GatewayDirectory {
    gateways: Mutex<BTreeMap<LanName, mpsc::Sender<GatewayCommand>>>,
    internet_off: Mutex<BTreeSet<LanName>>,
    /// Network settings beyond the config: a teacher's, a first join's MTU.
    pub(crate) settings: super::settings::LanSettings,
}

/// Most LANs remembered with their internet off: the set grows only by authorised calls,
/// but a teacher token for `class-*` could name many.
const MAX_INTERNET_OFF: usize = 4096;

impl GatewayDirectory {
    pub(crate) fn register(&self, lan: &LanName, commands: mpsc::Sender<GatewayCommand>) {
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.insert(lan.clone(), commands);
        }
    }

    pub(crate) fn unregister(&self, lan: &LanName) {
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.remove(lan);
        }
        self.settings.stopped(lan);
    }

    /// Records a teacher's internet switch for `lan`; false when too many LANs are
    /// already switched off to remember another.
    pub(crate) fn set_internet(&self, lan: &LanName, enabled: bool) -> bool {
        let Ok(mut off) = self.internet_off.lock() else {
            return false;
        };
        if enabled {
            off.remove(lan);
        } else if off.len() < MAX_INTERNET_OFF {
            off.insert(lan.clone());
        } else {
            return off.contains(lan);
        }
        true
    }

    /// Whether `lan`'s internet is on (the default).
    pub(crate) fn internet(&self, lan: &LanName) -> bool {
        self.internet_off
            .lock()
            .map(|off| !off.contains(lan))
            .unwrap_or(true)
    }

    pub(crate) fn get(&self, lan: &LanName) -> Option<mpsc::Sender<GatewayCommand>> {
        self.gateways.lock().ok()?.get(lan).cloned()
    }

    /// Every live gateway task's channel.
    pub(crate) fn all(&self) -> Vec<mpsc::Sender<GatewayCommand>> {
        self.gateways
            .lock()
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Wisp streams at `/wisp/lan/NAME/` enter the LAN as a port forward's connections do.
impl crate::transport::wisp::LanDoor for GatewayDirectory {
    fn open(&self, lan: &LanName, target: ForwardTarget, port: u16, stream: TcpStream) -> bool {
        let Some(gateway) = self.get(lan) else {
            return false;
        };
        let _ = stream.set_nodelay(true);
        // A full command queue refuses the stream rather than stalling the Wisp session.
        let command = GatewayCommand::InboundTcp {
            target,
            port,
            stream,
        };
        gateway.try_send(command).is_ok()
    }
}

/// Resolves a forward's target in a LAN: an address as is, a host name or MAC through
/// the DHCP leases (and, for a MAC, the neighbour cache).
pub(crate) fn resolve_target(
    gateway: &gateway::Gateway,
    target: &ForwardTarget,
) -> Option<Ipv4Addr> {
    match target {
        ForwardTarget::Ip(ip) => Some(*ip),
        ForwardTarget::Host(host) => gateway
            .dhcp()
            .leases()
            .filter(|lease| {
                lease
                    .host_name
                    .as_deref()
                    .is_some_and(|name| name.eq_ignore_ascii_case(host))
            })
            // The newest lease wins when a renamed VM left an older one.
            .max_by_key(|lease| lease.expires)
            .map(|lease| lease.ip),
        ForwardTarget::Mac(mac) => gateway.dhcp().lease_by_mac(*mac).map(|lease| lease.ip),
    }
}

/// Flows listed one by one in the admin API; the counts cover all of them. A LAN with
/// tens of thousands of flows would otherwise hold its gateway task (and its packets)
/// while a megabyte of JSON is built.
const MAX_LISTED_FLOWS: usize = 1000;

/// Leases and flows of one LAN, as the admin API shows them.
pub(crate) fn describe(gateway: &gateway::Gateway, now: Instant) -> serde_json::Value {
    let leases: Vec<serde_json::Value> = gateway
        .dhcp()
        .leases()
        .map(|lease| {
            serde_json::json!({
                "ip": lease.ip.to_string(),
                "mac": lease.mac.to_string(),
                "host_name": lease.host_name,
                "static": lease.is_static,
                "expires_in_secs": lease.expires.saturating_duration_since(now).as_secs(),
            })
        })
        .collect();
    let flows: Vec<serde_json::Value> = gateway
        .nat()
        .map(|nat| {
            nat.flows()
                .take(MAX_LISTED_FLOWS)
                .map(|flow| {
                    serde_json::json!({
                        "id": flow.id.0,
                        "protocol": flow.protocol.as_str(),
                        "vm": flow.vm.to_string(),
                        "remote": flow.remote.map(|r| r.to_string()),
                        "idle_secs": flow.idle.as_secs(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let internet = gateway.nat().is_some_and(|nat| nat.internet());
    let (flow_counts, buffer_bytes) = match gateway.nat() {
        Some(nat) => {
            let stats = nat.stats();
            let counts: serde_json::Map<String, serde_json::Value> = gateway::NatProtocol::ALL
                .iter()
                .map(|p| (p.as_str().to_owned(), stats.flows_active[p.index()].into()))
                .collect();
            (counts, stats.buffer_bytes)
        }
        None => (serde_json::Map::new(), 0),
    };
    serde_json::json!({
        "leases": leases,
        "flows": flows,
        "flow_counts": flow_counts,
        "nat_buffer_bytes": buffer_bytes,
        "internet": internet,
    })
}
