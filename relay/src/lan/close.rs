//! Closing ports from outside their transport (the admin API's teacher controls): a
//! machine by its MAC, or a whole LAN. A closed port's queue is dropped, so its transport's
//! writer sees the end and closes the connection; its `closed` flag makes the switch ignore
//! whatever the client still sends until the transport drops the [`Port`](super::Port).

use std::sync::atomic::Ordering::Relaxed;

use switch::{MacAddr, PortId};

use super::{LanRegistry, LanState, lock};
use crate::shared::LanName;

impl LanRegistry {
    /// Closes every client port of LAN `name` that the machine `mac` sends from (its own
    /// port, and ports whose clients share that MAC under translation). `None` when the LAN
    /// does not exist.
    pub(crate) fn close_machine(&self, name: &LanName, mac: MacAddr) -> Option<Vec<PortId>> {
        let lan = lock(&self.lans).get(name).cloned()?;
        let mut state = lock(&lan.state);
        let learned = state.switch.lookup(&mac);
        let chosen: Vec<PortId> = state
            .ports
            .iter()
            .filter(|(id, output)| {
                let translated = output
                    .counters
                    .translation
                    .get()
                    .is_some_and(|t| t.original == mac);
                output.transport.is_client() && (learned == Some(**id) || translated)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &chosen {
            close_port(&mut state, *id);
        }
        Some(chosen)
    }

    /// Closes every client port of LAN `name` and removes the LAN: its services stop (the
    /// gateway keeps its leases as a snapshot, as for any LAN that goes). Returns how many
    /// ports were closed, or `None` when the LAN does not exist.
    pub(crate) fn close_lan(&self, name: &LanName) -> Option<usize> {
        let mut lans = lock(&self.lans);
        let lan = lans.remove(name)?;
        let mut state = lock(&lan.state);
        let clients: Vec<PortId> = state
            .ports
            .iter()
            .filter(|(_, output)| output.transport.is_client())
            .map(|(id, _)| *id)
            .collect();
        for id in &clients {
            close_port(&mut state, *id);
        }
        drop(state);
        drop(lans);
        lan.retire();
        Some(clients.len())
    }
}

/// Marks port `id` closed and drops its queue; its transport does the rest (and its
/// `Port`'s drop still leaves the LAN, counting the client out).
fn close_port(state: &mut LanState, id: PortId) {
    if let Some(output) = state.ports.remove(&id) {
        output.counters.closed.store(true, Relaxed);
    }
    state.switch.remove_port(id);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::config::Config;
    use crate::shared::Transport;

    fn frame(src: [u8; 6]) -> Bytes {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        Bytes::from(f)
    }

    #[test]
    fn a_closed_machine_gets_no_frames_and_sends_none() {
        let registry = LanRegistry::new(&Config::default());
        let lan = LanName::default_lan();
        let mac = [2, 0, 0, 0, 0, 0xa];
        let (a, mut rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (b, mut rx_b) = registry.join(&lan, Transport::WebSocket).unwrap();
        a.ingress(Instant::now(), frame(mac));
        rx_b.try_recv().unwrap();
        let closed = registry.close_machine(&lan, MacAddr(mac)).unwrap();
        assert_eq!(closed, vec![a.id()]);
        assert!(
            matches!(
                rx_a.try_recv(),
                Err(crate::lan::queue::TryRecvError::Disconnected)
            ),
            "the closed port's queue ends, so its transport closes"
        );
        a.ingress(Instant::now(), frame(mac));
        assert!(
            rx_b.try_recv().is_err(),
            "a closed port's frames are ignored"
        );
        b.ingress(Instant::now(), frame([2, 0, 0, 0, 0, 0xb]));
        drop(a);
        assert_eq!(
            registry.snapshot().ports,
            1,
            "leaving still counts the client out"
        );
        let missing = LanName::new("nobody").unwrap();
        assert!(registry.close_machine(&missing, MacAddr(mac)).is_none());
    }

    #[test]
    fn closing_a_lan_closes_every_port_and_removes_it() {
        let registry = LanRegistry::new(&Config::default());
        let lan = LanName::new("class").unwrap();
        let (a, mut rx_a) = registry.join(&lan, Transport::WebSocket).unwrap();
        let (_b, mut rx_b) = registry.join(&lan, Transport::WebSocket).unwrap();
        assert_eq!(registry.close_lan(&lan), Some(2));
        assert!(!registry.exists(&lan));
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        drop(a);
        drop(_b);
        assert_eq!(registry.snapshot().ports, 0);
        assert_eq!(registry.close_lan(&lan), None);
    }
}
