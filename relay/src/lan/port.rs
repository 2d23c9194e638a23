//! A transport's handle on its LAN: frames in through [`Port::ingress`], frames out through
//! its own bounded queue ([`PortReceiver`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use switch::translate::MacTranslation;
use switch::{Forward as SwitchDecision, MacAddr, PortId};

use super::shaping::Shaper;
use super::{Lan, LanRegistry, LanState, PortCounters, PortOutput, lock};
use crate::shared::{DropReason, ETHERNET_HEADER_LEN, LanName, Transport};

/// A transport's handle on its LAN. Dropping it leaves the LAN.
#[derive(Debug)]
pub(crate) struct Port {
    id: PortId,
    lan: Arc<Lan>,
    registry: Arc<LanRegistry>,
    transport: Transport,
    counters: Arc<PortCounters>,
    /// This port's frames to other VMs (`port_rate`).
    shaper: Shaper,
}

impl Port {
    pub(super) fn new(
        id: PortId,
        lan: Arc<Lan>,
        registry: Arc<LanRegistry>,
        transport: Transport,
        counters: Arc<PortCounters>,
        shaper: Shaper,
    ) -> Self {
        Port {
            id,
            lan,
            registry,
            transport,
            counters,
            shaper,
        }
    }

    pub(crate) fn id(&self) -> PortId {
        self.id
    }

    pub(crate) fn lan_name(&self) -> &LanName {
        &self.lan.name
    }

    pub(crate) fn lan(&self) -> &Arc<Lan> {
        &self.lan
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn counters(&self) -> &PortCounters {
        &self.counters
    }

    /// The counters, for the task that drains this port's queue.
    pub(crate) fn counters_handle(&self) -> Arc<PortCounters> {
        self.counters.clone()
    }

    pub(crate) fn count_drop(&self, reason: DropReason) {
        self.registry.totals.count_drop(reason);
    }

    /// A frame for this port's client that its transport could not deliver.
    pub(crate) fn count_loss(&self, reason: DropReason) {
        self.registry.totals.count_loss(self.transport, reason);
    }

    /// One frame from this port's client: switch it to the other ports' queues.
    pub(crate) fn ingress(&self, now: Instant, frame: Bytes) {
        self.counters.traffic.count_in(frame.len());
        if frame.len() < ETHERNET_HEADER_LEN {
            return self.count_drop(DropReason::TooShort);
        }
        if frame.len() > self.registry.limits.max_frame_size {
            return self.count_drop(DropReason::TooLarge);
        }
        if self.counters.closed.load(Relaxed) {
            // An administrator closed this port; its transport is on its way out.
            return;
        }
        let mut state = lock(&self.lan.state);
        if let Some(uplink) = state.uplink.clone() {
            // Another node owns the LAN and switches for it (docs/cluster.md).
            drop(state);
            if !uplink.send(self.id, frame) {
                self.count_drop(DropReason::BusFull);
            }
            return;
        }
        let frame = self.translate_from_client(&state, frame);
        self.lan.tap(self.id, self.transport, now, &frame);
        match state.switch.handle_frame(now, self.id, &frame) {
            SwitchDecision::Unicast(to) => {
                if let Some(output) = state.ports.get(&to)
                    && self.within_budget(&state, output, now, frame.len())
                {
                    let _ = self.deliver(output, frame);
                }
            }
            SwitchDecision::Flood => {
                // A broadcast is charged to the sender (and the LAN) once, not to each VM
                // it reaches: a flood must not eat its neighbours' budgets.
                let to_vms = state
                    .ports
                    .iter()
                    .any(|(id, o)| *id != self.id && o.transport.is_client());
                if to_vms
                    && self.transport.is_client()
                    && !self.sender_budget(&state, now, frame.len())
                {
                    return;
                }
                for (id, output) in &state.ports {
                    if *id != self.id {
                        self.deliver_flood(output, frame.clone());
                    }
                }
            }
            SwitchDecision::Drop(reason) => self.count_drop(reason.into()),
        }
    }

    /// Tabs restored from one saved v86 state share a MAC. A second live port sending from a
    /// MAC that another live port owns must not steal its traffic: it gets a local MAC,
    /// translated both ways (see [`switch::translate`]).
    fn translate_from_client(&self, state: &LanState, frame: Bytes) -> Bytes {
        let src = MacAddr::from_bytes(&frame[6..12]);
        let translation = match self.counters.translation.get() {
            Some(t) if t.original == src => *t,
            Some(_) => return frame,
            None => {
                // The switch forgets a port's MACs when it leaves, so any owner is live.
                let taken = state
                    .switch
                    .lookup(&src)
                    .is_some_and(|owner| owner != self.id);
                if !taken || !src.is_unicast() || !self.transport.is_client() {
                    return frame;
                }
                let t = MacTranslation::for_port(src, self.id.0);
                let _ = self.counters.translation.set(t);
                self.registry.totals.mac_translations.fetch_add(1, Relaxed);
                tracing::info!(
                    lan = %self.lan.name,
                    "{} is in use on another port: {} uses {} on this LAN",
                    src,
                    self.id,
                    t.local
                );
                t
            }
        };
        let mut frame = bytes::BytesMut::from(&frame[..]);
        translation.outbound(&mut frame);
        frame.freeze()
    }

    /// Shaping of a frame between two VMs: the sender's and the LAN's budget, then the
    /// receiver's. Frames to or from the gateway are paced by the NAT instead.
    fn within_budget(&self, state: &LanState, to: &PortOutput, now: Instant, len: usize) -> bool {
        if !self.transport.is_client() || !to.transport.is_client() {
            return true;
        }
        self.sender_budget(state, now, len) && self.receiver_budget(to, now, len)
    }

    fn sender_budget(&self, state: &LanState, now: Instant, len: usize) -> bool {
        let allowed = self.shaper.allow(now, len) && state.shaper.allow(now, len);
        if !allowed {
            self.count_drop(DropReason::Shaped);
        }
        allowed
    }

    fn receiver_budget(&self, to: &PortOutput, now: Instant, len: usize) -> bool {
        if !self.transport.is_client() || !to.transport.is_client() || to.shaper.allow(now, len) {
            return true;
        }
        self.count_drop(DropReason::Shaped);
        false
    }

    /// A broadcast or multicast copy for one port: a VM's queue holds at most
    /// `flood_queue_frames` of them (the gateway's, which must see every DHCP broadcast, is
    /// not limited); beyond, the copy is dropped and counted (`flood_full`).
    fn deliver_flood(&self, output: &PortOutput, frame: Bytes) {
        if !output.transport.is_client() {
            self.deliver(output, frame);
            return;
        }
        let cap = self.registry.limits.flood_queue_frames;
        if cap >= self.registry.limits.queue_frames {
            // A small queue: its own bound is the only one (drops count as queue_full).
            self.deliver(output, frame);
            return;
        }
        let floods = &output.counters.queued_floods;
        if floods
            .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            .is_err()
        {
            return self
                .registry
                .totals
                .count_loss(output.transport, DropReason::FloodFull);
        }
        if !self.deliver(output, frame) {
            floods.fetch_sub(1, Relaxed);
        }
    }

    /// Puts a frame on a port's queue; false when it was dropped.
    fn deliver(&self, output: &PortOutput, frame: Bytes) -> bool {
        output.offer(frame, &self.registry.totals)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.registry.leave(self);
    }
}
