//! The slot, deadline and remembered-address tables, kept consistent with each other.

use std::net::Ipv4Addr;

use super::slot::Slot;
use super::{DhcpServer, MAX_PENDING_EVENTS};
use crate::lease::{ClientKey, Lease, LeaseEvent};

impl DhcpServer {
    /// Put `slot` at `ip`, keeping `by_key`, `deadlines` and the gauge in step. A client
    /// holds one slot: its other one goes, and a lease displaced by this one is released.
    pub(super) fn insert_slot(&mut self, ip: Ipv4Addr, slot: Slot) {
        let key = slot.key();
        if let Some(Slot::Bound(old)) = self.remove_slot(ip)
            && Some(old.key()) != key
        {
            self.push_released(old);
        }
        if let Some(key) = key {
            if let Some(&old_ip) = self.by_key.get(&key)
                && let Some(Slot::Bound(old)) = self.remove_slot(old_ip)
            {
                self.push_released(old);
            }
            self.by_key.insert(key, ip);
        }
        if matches!(slot, Slot::Bound(_)) {
            self.stats.active_leases += 1;
        }
        self.deadlines.insert((slot.deadline(), ip));
        self.slots.insert(ip, slot);
    }

    pub(super) fn remove_slot(&mut self, ip: Ipv4Addr) -> Option<Slot> {
        let slot = self.slots.remove(&ip)?;
        self.deadlines.remove(&(slot.deadline(), ip));
        if let Some(key) = slot.key()
            && self.by_key.get(&key) == Some(&ip)
        {
            self.by_key.remove(&key);
        }
        if matches!(slot, Slot::Bound(_)) {
            self.stats.active_leases = self.stats.active_leases.saturating_sub(1);
        }
        Some(slot)
    }

    fn push_released(&mut self, lease: Lease) {
        self.push_event(LeaseEvent::Released {
            mac: lease.mac,
            ip: lease.ip,
            host_name: lease.host_name,
        });
    }

    pub(super) fn push_event(&mut self, event: LeaseEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Record `ip` as the client's last address; an address is remembered for one client.
    pub(super) fn remember(&mut self, key: ClientKey, ip: Ipv4Addr) {
        if self.config.max_remembered_clients == 0 {
            return;
        }
        if let Some(previous_owner) = self.remembered_by_ip.get(&ip).cloned()
            && previous_owner != key
        {
            self.forget(&previous_owner);
        }
        self.forget(&key);
        self.remember_clock += 1;
        let stamp = self.remember_clock;
        self.remembered.insert(key.clone(), (ip, stamp));
        self.remembered_by_ip.insert(ip, key.clone());
        self.remembered_order.insert(stamp, key);
        while self.remembered.len() > self.config.max_remembered_clients {
            let Some((_, oldest)) = self.remembered_order.pop_first() else {
                break;
            };
            self.forget(&oldest);
        }
    }

    pub(super) fn forget(&mut self, key: &ClientKey) {
        if let Some((ip, stamp)) = self.remembered.remove(key) {
            self.remembered_order.remove(&stamp);
            if self.remembered_by_ip.get(&ip) == Some(key) {
                self.remembered_by_ip.remove(&ip);
            }
        }
    }
}
