//! Taps on a LAN's switch for packet captures (the admin API's
//! `GET /admin/lans/NAME/capture`). Every frame a port puts on the switch passes
//! [`Lan::tap`], which costs one atomic load while nobody captures. A capture gets a
//! [`CaptureTap`]: its own bounded queue of frames, filled with `try_send` so a slow reader
//! loses frames (counted per port in [`TapDrops`]) and never slows the LAN.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use switch::PortId;
use tokio::sync::mpsc;

use super::{Lan, LanRegistry, lock};
use crate::shared::{LanName, Transport};

/// One frame as the switch saw it, for a capture.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) port: PortId,
    pub(crate) transport: Transport,
    pub(crate) at: Instant,
    pub(crate) frame: Bytes,
}

/// Ports whose losses a capture counts without a lock; a LAN with more ports counts the
/// rest in a list under a lock.
const DROP_SLOTS: usize = 16;

/// Frames a capture lost because its queue was full, by the port that sent them. Counted
/// under the LAN's lock for every frame a stalled reader loses, so the common case is two
/// atomic operations: a slot per port (its id + 1, 0 while free) and its count.
#[derive(Debug, Default)]
pub(crate) struct TapDrops {
    /// All ports together: lets the reader skip the slots while nothing was lost.
    total: AtomicU64,
    slots: [(AtomicU64, AtomicU64); DROP_SLOTS],
    more: Mutex<Vec<(PortId, u64)>>,
}

impl TapDrops {
    fn count(&self, port: PortId) {
        self.total.fetch_add(1, Relaxed);
        let key = port.0 + 1;
        for (slot, lost) in &self.slots {
            let held = slot.load(Relaxed);
            let ours = held == key
                || (held == 0 && {
                    let claimed = slot.compare_exchange(0, key, Relaxed, Relaxed);
                    claimed.is_ok() || claimed == Err(key)
                });
            if ours {
                lost.fetch_add(1, Relaxed);
                return;
            }
        }
        let mut more = lock(&self.more);
        match more.iter_mut().find(|(p, _)| *p == port) {
            Some((_, lost)) => *lost += 1,
            None => more.push((port, 1)),
        }
    }

    /// Frames of `port` lost since the last call.
    pub(crate) fn take(&self, port: PortId) -> u64 {
        if self.total.load(Relaxed) == 0 {
            return 0;
        }
        let key = port.0 + 1;
        let mut lost = self
            .slots
            .iter()
            .find(|(slot, _)| slot.load(Relaxed) == key)
            .map_or(0, |(_, lost)| lost.swap(0, Relaxed));
        let mut more = lock(&self.more);
        if let Some(at) = more.iter().position(|(p, _)| *p == port) {
            lost += more.swap_remove(at).1;
        }
        self.total.fetch_sub(lost, Relaxed);
        lost
    }

    /// Every port's losses not yet taken.
    pub(crate) fn take_all(&self) -> Vec<(PortId, u64)> {
        let mut all = std::mem::take(&mut *lock(&self.more));
        for (slot, lost) in &self.slots {
            let key = slot.load(Relaxed);
            let lost = lost.swap(0, Relaxed);
            if key != 0 && lost > 0 {
                all.push((PortId(key - 1), lost));
            }
        }
        self.total.store(0, Relaxed);
        all
    }
}

/// One capture's place on a LAN.
#[derive(Debug)]
pub(super) struct Tap {
    id: u64,
    filter: capture::Filter,
    queue: mpsc::Sender<Captured>,
    drops: Arc<TapDrops>,
}

/// A running capture: its queue of frames; dropping it removes the tap.
#[derive(Debug)]
pub(crate) struct CaptureTap {
    lan: Arc<Lan>,
    registry: Arc<LanRegistry>,
    id: u64,
    pub(crate) frames: mpsc::Receiver<Captured>,
    pub(crate) drops: Arc<TapDrops>,
}

impl CaptureTap {
    pub(crate) fn lan(&self) -> &Arc<Lan> {
        &self.lan
    }
}

impl Drop for CaptureTap {
    fn drop(&mut self) {
        let mut taps = lock(&self.lan.taps);
        taps.retain(|tap| tap.id != self.id);
        self.lan.capturing.store(taps.len(), Relaxed);
        drop(taps);
        self.registry.captures.fetch_sub(1, Relaxed);
    }
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CaptureError {
    #[error("no LAN {0} now; GET /admin/lans lists them")]
    NoLan(LanName),
    #[error("{0} captures are running, the most `[capture] max_captures` allows; stop one")]
    TooMany(usize),
}

impl LanRegistry {
    /// Taps LAN `name` for frames that pass `filter`, queueing at most `queue_frames`;
    /// refused when `max_captures` captures already run.
    pub(crate) fn start_capture(
        self: &Arc<Self>,
        name: &LanName,
        filter: capture::Filter,
        queue_frames: usize,
        max_captures: usize,
    ) -> Result<CaptureTap, CaptureError> {
        let lan = lock(&self.lans)
            .get(name)
            .cloned()
            .ok_or_else(|| CaptureError::NoLan(name.clone()))?;
        let taken = self
            .captures
            .fetch_update(Relaxed, Relaxed, |n| (n < max_captures).then_some(n + 1));
        if taken.is_err() {
            return Err(CaptureError::TooMany(max_captures));
        }
        let (queue, frames) = mpsc::channel(queue_frames.max(1));
        let drops = Arc::new(TapDrops::default());
        let id = self.next_port.fetch_add(1, Relaxed);
        let mut taps = lock(&lan.taps);
        taps.push(Tap {
            id,
            filter,
            queue,
            drops: drops.clone(),
        });
        lan.capturing.store(taps.len(), Relaxed);
        drop(taps);
        Ok(CaptureTap {
            lan,
            registry: self.clone(),
            id,
            frames,
            drops,
        })
    }
}

impl Lan {
    /// Offers one frame from `port` to the LAN's captures. The hot path: nothing but an
    /// atomic load while nobody captures.
    pub(super) fn tap(&self, port: PortId, transport: Transport, at: Instant, frame: &Bytes) {
        if self.capturing.load(Relaxed) == 0 {
            return;
        }
        for tap in lock(&self.taps).iter() {
            if !tap.filter.matches(frame) {
                continue;
            }
            // A stalled reader's tap is full: count the loss without building a frame for
            // it (this runs under the LAN's lock, for every frame).
            if tap.queue.capacity() == 0 {
                tap.drops.count(port);
                continue;
            }
            let captured = Captured {
                port,
                transport,
                at,
                frame: frame.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tap.queue.try_send(captured) {
                tap.drops.count(port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn arp(src: u8) -> Bytes {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, src, 0x08, 0x06]);
        f.resize(60, 0);
        Bytes::from(f)
    }

    #[test]
    fn a_full_capture_queue_counts_drops_and_never_blocks_the_lan() {
        let registry = LanRegistry::new(&Config::default());
        let lan = LanName::default_lan();
        let (a, _rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (_b, mut rx_b) = registry.join(&lan, Transport::WebSocket).unwrap();
        let mut tap = registry
            .start_capture(&lan, capture::Filter::all(), 2, 1)
            .unwrap();
        assert_eq!(
            registry
                .start_capture(&lan, capture::Filter::all(), 2, 1)
                .unwrap_err(),
            CaptureError::TooMany(1)
        );
        for _ in 0..5 {
            a.ingress(Instant::now(), arp(1));
            assert!(rx_b.try_recv().is_ok(), "the LAN carries every frame");
        }
        assert_eq!(tap.frames.try_recv().unwrap().port, a.id());
        assert_eq!(tap.drops.take(a.id()), 3);
        assert_eq!(tap.drops.take(a.id()), 0);
        drop(tap);
        assert!(
            registry
                .start_capture(&lan, capture::Filter::all(), 2, 1)
                .is_ok()
        );
    }

    #[test]
    fn drops_are_counted_per_port_beyond_the_slots_too() {
        let drops = TapDrops::default();
        for port in 0..(DROP_SLOTS as u64 + 4) {
            for _ in 0..=port {
                drops.count(PortId(port));
            }
        }
        assert_eq!(drops.take(PortId(3)), 4);
        assert_eq!(drops.take(PortId(3)), 0);
        assert_eq!(
            drops.take(PortId(DROP_SLOTS as u64 + 2)),
            DROP_SLOTS as u64 + 3
        );
        let rest: u64 = drops.take_all().iter().map(|(_, n)| n).sum();
        let all: u64 = (1..=DROP_SLOTS as u64 + 4).sum();
        assert_eq!(rest, all - 4 - (DROP_SLOTS as u64 + 3));
        assert_eq!(drops.take(PortId(0)), 0);
    }

    #[test]
    fn filters_choose_what_a_capture_sees() {
        let registry = LanRegistry::new(&Config::default());
        let lan = LanName::default_lan();
        let (a, _rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let only_ip = capture::Filter::parse("ip").unwrap();
        let mut tap = registry.start_capture(&lan, only_ip, 8, 4).unwrap();
        a.ingress(Instant::now(), arp(1));
        assert!(tap.frames.try_recv().is_err());
        let missing = LanName::new("nobody").unwrap();
        assert!(matches!(
            registry.start_capture(&missing, capture::Filter::all(), 8, 4),
            Err(CaptureError::NoLan(_))
        ));
    }
}
