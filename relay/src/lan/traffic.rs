//! The one traffic-counter type: frames and bytes each way, as atomics on the hot path
//! ([`Traffic`]) and as plain numbers once read ([`TrafficSnapshot`]). Ports, relay-wide
//! totals of ports that left, the admin API and the LAN panel all use it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use switch::translate::MacTranslation;

use crate::shared::{DropReason, Transport};

/// Frames and bytes in (from the client) and out (to it). Each side is written by one task
/// only, so the atomics are uncontended; readers sum them when asked.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// [`Traffic`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrafficSnapshot {
    pub(crate) frames_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) frames_out: u64,
    pub(crate) bytes_out: u64,
}

impl Traffic {
    pub(crate) fn count_in(&self, bytes: usize) {
        self.frames_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn count_out(&self, bytes: usize) {
        self.frames_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }

    /// Adds a finished port's traffic, so relay-wide counters never go backwards.
    fn absorb(&self, other: TrafficSnapshot) {
        self.frames_in.fetch_add(other.frames_in, Relaxed);
        self.bytes_in.fetch_add(other.bytes_in, Relaxed);
        self.frames_out.fetch_add(other.frames_out, Relaxed);
        self.bytes_out.fetch_add(other.bytes_out, Relaxed);
    }
}

impl std::ops::AddAssign for TrafficSnapshot {
    fn add_assign(&mut self, other: Self) {
        self.frames_in += other.frames_in;
        self.bytes_in += other.bytes_in;
        self.frames_out += other.frames_out;
        self.bytes_out += other.bytes_out;
    }
}

/// One port's counters, shared by the port and the task that drains its queue.
#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    pub(crate) traffic: Traffic,
    /// Frames for this port dropped because its queue was full.
    pub(crate) queue_drops: AtomicU64,
    /// Broadcast and multicast frames in this port's queue: bounded well below the queue,
    /// so a boot storm's broadcasts cannot fill every VM's queue (and memory) at once.
    pub(crate) queued_floods: std::sync::atomic::AtomicUsize,
    /// Set when this port's machine shares its MAC with another live port.
    pub(crate) translation: std::sync::OnceLock<MacTranslation>,
    /// Set when an administrator closed the port: its frames are ignored from then on.
    pub(crate) closed: std::sync::atomic::AtomicBool,
}

impl PortCounters {
    /// A frame taken off this port's queue for its client: frees its broadcast slot and
    /// undoes this port's MAC translation.
    pub(crate) fn to_client(&self, frame: Bytes) -> Bytes {
        if frame.first().is_some_and(|b| b & 1 == 1) {
            let _ = self
                .queued_floods
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
        match self.translation.get() {
            Some(translation) => {
                let mut frame = bytes::BytesMut::from(&frame[..]);
                translation.inbound(&mut frame);
                frame.freeze()
            }
            None => frame,
        }
    }

    /// A frame leaving the port's queue for its client: counted, then translated. The one
    /// piece of outgoing-frame bookkeeping every transport shares.
    pub(crate) fn outgoing(&self, frame: Bytes) -> Bytes {
        self.traffic.count_out(frame.len());
        self.to_client(frame)
    }
}

/// Relay-wide totals: drops by reason, connections opened, and the traffic of ports that
/// have left.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    drops: [AtomicU64; DropReason::COUNT],
    /// Frames for a client lost on the way to it, by its transport and reason (also in
    /// `drops`).
    losses: [[AtomicU64; DropReason::COUNT]; Transport::COUNT],
    /// Ports given a local MAC because their machine's MAC was live on another port.
    pub(crate) mac_translations: AtomicU64,
    pub(super) connections_opened: [AtomicU64; Transport::COUNT],
    pub(super) retired: [Traffic; Transport::COUNT],
}

impl Totals {
    pub(crate) fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Relaxed)
    }

    /// A frame for a client of `transport` lost on its way there: counted as a drop and
    /// as that transport's loss.
    pub(crate) fn count_loss(&self, transport: Transport, reason: DropReason) {
        self.count_drop(reason);
        self.losses[transport.index()][reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn losses(&self, transport: Transport, reason: DropReason) -> u64 {
        self.losses[transport.index()][reason.index()].load(Relaxed)
    }

    pub(super) fn retire(&self, transport: Transport, c: &PortCounters) {
        self.retired[transport.index()].absorb(c.traffic.snapshot());
    }
}
