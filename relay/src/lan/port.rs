//! A transport's handle on its LAN: frames in through [`Port::ingress`], frames out through
//! its own bounded queue ([`PortReceiver`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use switch::translate::MacTranslation;
use switch::{Forward as SwitchDecision, MacAddr, PortId};
use tokio::sync::mpsc;

use super::{Lan, LanRegistry, LanState, PortCounters, PortOutput, lock};
use crate::shared::{DropReason, ETHERNET_HEADER_LEN, LanName, Transport};

/// The frames waiting to be sent to one port's client.
pub(crate) type PortReceiver = mpsc::Receiver<Bytes>;

/// A transport's handle on its LAN. Dropping it leaves the LAN.
#[derive(Debug)]
pub(crate) struct Port {
    id: PortId,
    lan: Arc<Lan>,
    registry: Arc<LanRegistry>,
    transport: Transport,
    counters: Arc<PortCounters>,
}

impl Port {
    pub(super) fn new(
        id: PortId,
        lan: Arc<Lan>,
        registry: Arc<LanRegistry>,
        transport: Transport,
        counters: Arc<PortCounters>,
    ) -> Self {
        Port {
            id,
            lan,
            registry,
            transport,
            counters,
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
        let frame = self.translate_from_client(&state, frame);
        self.lan.tap(self.id, self.transport, now, &frame);
        match state.switch.handle_frame(now, self.id, &frame) {
            SwitchDecision::Unicast(to) => {
                if let Some(output) = state.ports.get(&to) {
                    self.deliver(output, frame);
                }
            }
            SwitchDecision::Flood => {
                for (id, output) in &state.ports {
                    if *id != self.id {
                        self.deliver(output, frame.clone());
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

    fn deliver(&self, output: &PortOutput, frame: Bytes) {
        match output.queue.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                output.counters.queue_drops.fetch_add(1, Relaxed);
                self.count_drop(DropReason::QueueFull);
            }
            // The port is leaving; its frames no longer matter.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.registry.leave(self);
    }
}
