//! Quiet TCP flows give their buffers' pages back.
//!
//! smoltcp can neither shrink a socket's buffers nor return them, and the pages bytes went
//! through stay resident after the bytes have left: an idle flow that once moved megabytes
//! keeps both buffers (512 KiB at the defaults), one that echoed a line keeps two pages.
//! When a flow has moved no bytes for [`QUIET_AFTER`] and holds none, no byte of either
//! buffer is read again before it is written, so the driver may release their pages
//! ([`super::budget::ReleasePages`]) and the flow's charge goes back to its floor.
//!
//! "Holds none" takes more than smoltcp's queues: a segment that arrived out of order
//! waits in the receive buffer past the queue, where `recv_queue` does not see it. So the
//! flow also needs smoltcp's latest acknowledgement to the VM to cover everything the VM
//! sent: then nothing waits out of order.

use std::time::Instant;

use smoltcp::socket::tcp;
use smoltcp::wire::{Ipv4Packet, TcpPacket, TcpSeqNumber};

use super::Nat;
use super::budget::{QUIET_AFTER, Storage, touched};
use super::flows::{Flow, FlowId, FlowKind};
use crate::emit::HEADROOM;

/// What a TCP flow needs to know whether its buffers hold anything.
#[derive(Debug)]
pub(super) struct Quiet {
    /// The receive and send buffers' bytes.
    storage: [Storage; 2],
    /// One past the last sequence number the VM sent.
    vm_end: Option<TcpSeqNumber>,
    /// The latest acknowledgement smoltcp sent the VM.
    acked: Option<TcpSeqNumber>,
    /// When a check last found bytes in the buffers: the next check waits as long again.
    busy_at: Option<Instant>,
}

impl Quiet {
    pub(super) fn new(storage: [Storage; 2]) -> Self {
        Self {
            storage,
            vm_end: None,
            acked: None,
            busy_at: None,
        }
    }

    /// A segment from the VM: `end` is one past its last sequence number.
    pub(super) fn saw_from_vm(&mut self, end: TcpSeqNumber) {
        if self.vm_end.is_none_or(|seen| end > seen) {
            self.vm_end = Some(end);
        }
    }

    /// An IP packet smoltcp sent the VM for this flow (with [`HEADROOM`] in front).
    pub(super) fn saw_to_vm(&mut self, buffer: &[u8]) {
        let Some(ack) = ack_number(buffer.get(HEADROOM..).unwrap_or_default()) else {
            return;
        };
        if self.acked.is_none_or(|seen| ack > seen) {
            self.acked = Some(ack);
        }
    }

    fn acked_all(&self) -> bool {
        match (self.vm_end, self.acked) {
            (None, _) => true,
            (Some(end), Some(ack)) => ack >= end,
            (Some(_), None) => false,
        }
    }

    /// When the flow is next checked, given its last traffic.
    pub(super) fn due(&self, last_active: Instant) -> Instant {
        self.busy_at.map_or(last_active, |at| at.max(last_active)) + QUIET_AFTER
    }
}

/// The acknowledgement number of an IPv4 packet carrying a TCP segment with ACK set.
fn ack_number(packet: &[u8]) -> Option<TcpSeqNumber> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let segment = TcpPacket::new_checked(ip.payload()).ok()?;
    segment.ack().then(|| segment.ack_number())
}

impl Nat {
    /// When `entry`'s pages are worth a check: bytes went through them since the last
    /// release, and the driver can release pages.
    pub(super) fn quiet_due(&self, entry: &Flow) -> Option<Instant> {
        if !self.config.buffer_budget.releases_pages() {
            return None;
        }
        match &entry.kind {
            FlowKind::Tcp { through, quiet, .. } if *through != [0, 0] => {
                Some(quiet.due(entry.last_active))
            }
            _ => None,
        }
    }

    /// Releases `flow`'s buffer pages if it has been quiet long enough and holds no bytes.
    pub(super) fn release_if_quiet(&mut self, now: Instant, flow: FlowId) {
        let due = self
            .flows
            .get(&flow)
            .and_then(|entry| self.quiet_due(entry));
        if due.is_none_or(|due| now < due) {
            return;
        }
        let Some(FlowKind::Tcp {
            sockets,
            handle,
            through,
            charged,
            quiet,
            ..
        }) = self.flows.get_mut(&flow).map(|f| &mut f.kind)
        else {
            return;
        };
        let socket = sockets.get::<tcp::Socket>(*handle);
        if socket.recv_queue() > 0 || socket.send_queue() > 0 || !quiet.acked_all() {
            quiet.busy_at = Some(now);
            return;
        }
        for storage in quiet.storage {
            self.config.buffer_budget.release(storage);
        }
        quiet.busy_at = None;
        *through = [0, 0];
        let floor = touched(socket.recv_capacity(), 0) + touched(socket.send_capacity(), 0);
        let freed = charged.saturating_sub(floor);
        *charged -= freed;
        self.config.buffer_budget.give(freed);
        self.stats.buffer_bytes = self.stats.buffer_bytes.saturating_sub(freed);
        self.stats.buffer_releases += 1;
    }
}
