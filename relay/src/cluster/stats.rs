//! The cluster's counters (`/metrics`) and each LAN's role on this node (`/admin/cluster`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::shared::metrics::Family;

labels::label_enum! {
    /// Why a bus message or frame was dropped; a bounded metric label.
    pub(crate) enum BusDrop {
        /// Not a bus message this node can read (`bus::wire::decode` refused it).
        Malformed => "malformed",
        /// Egress from an owner older than the one this node knows.
        StaleEpoch => "stale_epoch",
        /// Egress for a port or LAN that is no longer on this node.
        UnknownPort => "unknown_port",
        /// Ingress for a LAN this node does not own (any more).
        NotOwner => "not_owner",
        /// NATS refused or could not take a publish.
        PublishFailed => "publish_failed",
        /// The owner has no room for another remote port on the LAN.
        LanFull => "lan_full",
        /// Ingress this node sent itself before it became the LAN's owner.
        OwnNode => "own_node",
    }
}

#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) drops: [AtomicU64; BusDrop::COUNT],
    pub(crate) claims_won: AtomicU64,
    pub(crate) claims_taken_over: AtomicU64,
    pub(crate) claims_lost: AtomicU64,
    pub(crate) claims_handed_over: AtomicU64,
    pub(crate) renew_failures: AtomicU64,
    pub(crate) lease_write_failures: AtomicU64,
    pub(crate) nat_flows_lost: AtomicU64,
    /// Ports this node serves for clients of other nodes (owner side).
    pub(crate) remote_ports_served: AtomicI64,
}

impl ClusterStats {
    pub(crate) fn count_drop(&self, why: BusDrop, n: u64) {
        self.drops[why.index()].fetch_add(n, Relaxed);
    }

    pub(crate) fn sent(&self, frames: usize, bytes: usize) {
        self.messages_out.fetch_add(1, Relaxed);
        self.frames_out.fetch_add(frames as u64, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn received(&self, frames: usize, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.frames_in.fetch_add(frames as u64, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    /// The families of `/metrics`; `remote_ports` are this node's clients on LANs other
    /// nodes own, `connected` whether NATS is up.
    pub(crate) fn families(
        &self,
        remote_ports: usize,
        owned: usize,
        connected: bool,
    ) -> Vec<Family> {
        let mut families = vec![
            Family::gauge(
                "cluster_nats_connected",
                "1 while this node's NATS connection is up",
                i64::from(connected),
            ),
            Family::gauge(
                "cluster_lans_owned",
                "LANs this node owns (runs the switch and gateway of)",
                owned as i64,
            ),
            Family::gauge(
                "cluster_remote_ports",
                "clients of this node on LANs another node owns",
                remote_ports as i64,
            ),
            Family::gauge(
                "cluster_remote_ports_served",
                "ports this node serves, as owner, for clients of other nodes",
                self.remote_ports_served.load(Relaxed),
            ),
        ];
        families.extend(self.bus_families());
        families.extend(self.claim_families());
        families
    }

    /// The bus's traffic: frames, bytes, messages and drops.
    fn bus_families(&self) -> [Family; 4] {
        let get = |a: &AtomicU64| a.load(Relaxed);
        [
            Family::counters_by(
                "cluster_bus_frames",
                "Ethernet frames over the cluster bus, by direction",
                "direction",
                [("in", get(&self.frames_in)), ("out", get(&self.frames_out))],
            ),
            Family::counters_by(
                "cluster_bus_bytes",
                "bytes of Ethernet frames over the cluster bus, by direction",
                "direction",
                [("in", get(&self.bytes_in)), ("out", get(&self.bytes_out))],
            ),
            Family::counters_by(
                "cluster_bus_messages",
                "NATS messages of the cluster bus (a message batches frames), by direction",
                "direction",
                [
                    ("in", get(&self.messages_in)),
                    ("out", get(&self.messages_out)),
                ],
            ),
            Family::counters_by(
                "cluster_bus_drops",
                "bus messages or frames dropped, by reason",
                "reason",
                BusDrop::ALL
                    .iter()
                    .map(|r| (r.as_str(), get(&self.drops[r.index()]))),
            ),
        ]
    }

    /// LAN claims and what they cost when they move.
    fn claim_families(&self) -> [Family; 4] {
        let get = |a: &AtomicU64| a.load(Relaxed);
        [
            Family::counters_by(
                "cluster_ownership_changes",
                "LAN claims this node won (new, or taken over from a silent owner) and gave up (lost, or handed over by a drain)",
                "change",
                [
                    ("won", get(&self.claims_won)),
                    ("taken_over", get(&self.claims_taken_over)),
                    ("lost", get(&self.claims_lost)),
                    ("handed_over", get(&self.claims_handed_over)),
                ],
            ),
            Family::counter(
                "cluster_lease_renew_failures",
                "renewals of a LAN claim that failed (the claim is lost when they fail for 2/3 of lease_ttl_secs)",
                get(&self.renew_failures),
            ),
            Family::counter(
                "cluster_lease_store_failures",
                "writes of a LAN's DHCP leases to the cluster that failed",
                get(&self.lease_write_failures),
            ),
            Family::counter(
                "cluster_nat_flows_lost",
                "NAT flows closed because this node stopped owning their LAN",
                get(&self.nat_flows_lost),
            ),
        ]
    }
}

/// A LAN's role on this node, as `/admin/cluster` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct LanRole {
    /// This node runs the LAN's switch and gateway.
    pub(crate) owned: bool,
    /// The owner as last seen in the cluster (this node when `owned`).
    pub(crate) owner: Option<String>,
    /// The owner's claim revision (fencing epoch).
    pub(crate) epoch: u64,
    /// As owner: ports served for clients of other nodes.
    pub(crate) remote_ports_served: usize,
}
