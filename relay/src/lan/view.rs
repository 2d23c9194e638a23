//! Read-only views of the LANs for `/metrics`, the admin API and the demo's LAN panel.

use std::sync::atomic::Ordering::Relaxed;

use switch::{MacAddr, PortId};

use super::{Lan, LanRegistry, TrafficSnapshot, lock};
use crate::shared::{LanName, Transport};

/// One client transport's connections and traffic, for the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TransportSnapshot {
    pub(crate) connections: u64,
    pub(crate) connections_opened: u64,
    pub(crate) traffic: TrafficSnapshot,
}

/// A snapshot of the whole relay, for the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub(crate) struct RelaySnapshot {
    pub(crate) lans: usize,
    pub(crate) ports: usize,
    pub(crate) mac_entries: usize,
    pub(crate) by_transport: Vec<(Transport, TransportSnapshot)>,
}

/// One LAN as the demo's LAN panel shows it (see [`LanRegistry::lan_view`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct LanView {
    pub(crate) ports: Vec<PortView>,
    /// For each MAC asked about, the port the switch last saw it on.
    pub(crate) mac_ports: Vec<Option<u64>>,
}

#[derive(Clone, Debug)]
pub(crate) struct PortView {
    pub(crate) id: u64,
    pub(crate) transport: Transport,
    pub(crate) traffic: TrafficSnapshot,
}

impl LanRegistry {
    pub(crate) fn snapshot(&self) -> RelaySnapshot {
        let lans = self.lan_list();
        let mut snapshot = RelaySnapshot {
            lans: lans.len(),
            ..RelaySnapshot::default()
        };
        let mut by_transport = [TransportSnapshot::default(); Transport::COUNT];
        for (i, t) in by_transport.iter_mut().enumerate() {
            t.traffic = self.totals.retired[i].snapshot();
            t.connections_opened = self.totals.connections_opened[i].load(Relaxed);
        }
        for lan in lans {
            let state = lock(&lan.state);
            snapshot.ports += state.clients;
            snapshot.mac_entries += state.switch.mac_entries();
            for output in state.ports.values() {
                let t = &mut by_transport[output.transport.index()];
                t.connections += 1;
                t.traffic += output.counters.traffic.snapshot();
            }
        }
        snapshot.by_transport = Transport::CLIENTS
            .into_iter()
            .map(|t| (t, by_transport[t.index()]))
            .collect();
        snapshot
    }

    /// The ports of LAN `name` with their traffic, and where each of `macs` lives; None
    /// when the LAN does not exist.
    pub(crate) fn lan_view(&self, name: &LanName, macs: &[MacAddr]) -> Option<LanView> {
        let lan = lock(&self.lans).get(name).cloned()?;
        let ports = lan
            .port_list()
            .into_iter()
            .map(|(id, transport, traffic)| PortView {
                id: id.0,
                transport,
                traffic,
            })
            .collect();
        let state = lock(&lan.state);
        let mac_ports = macs
            .iter()
            .map(|mac| state.switch.lookup(mac).map(|p| p.0))
            .collect();
        Some(LanView { ports, mac_ports })
    }
}

impl Lan {
    /// Each port's transport and traffic, sorted by port id, for the admin API.
    pub(crate) fn port_list(&self) -> Vec<(PortId, Transport, TrafficSnapshot)> {
        let state = lock(&self.state);
        let mut ports: Vec<_> = state
            .ports
            .iter()
            .map(|(&id, output)| (id, output.transport, output.counters.traffic.snapshot()))
            .collect();
        ports.sort_by_key(|(id, _, _)| id.0);
        ports
    }
}
