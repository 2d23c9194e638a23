//! Choosing addresses and binding them to clients.

use std::net::Ipv4Addr;
use std::time::Instant;

use smoltcp::wire::EthernetAddress;

use super::DhcpServer;
use super::message::Client;
use super::slot::Slot;
use crate::lease::{ClientKey, Lease, LeaseEvent};

/// Whether an address can go to a given client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Availability {
    /// Offered or leased to this client, or its static address.
    Mine,
    /// In the pool and unused.
    Free,
    /// Reserved, outside the pool, quarantined or someone else's.
    Unavailable,
}

impl DhcpServer {
    /// Static address, else the client's current offer or lease, else the address it asks
    /// for, else the one it had last, else a fresh one.
    pub(super) fn choose_offer(
        &self,
        client: &Client,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        if let Some(lease) = self.statics_by_mac.get(&client.chaddr) {
            return Some(lease.ip);
        }
        if let Some(&ip) = self.by_key.get(&client.key) {
            return Some(ip);
        }
        let is_free = |ip| self.availability(ip, &client.key, client.chaddr) == Availability::Free;
        if let Some(ip) = requested.filter(|&ip| is_free(ip)) {
            return Some(ip);
        }
        if let Some(&(ip, _)) = self.remembered.get(&client.key)
            && is_free(ip)
        {
            return Some(ip);
        }
        self.allocate()
    }

    /// Lowest free pool address that no other client remembers, else the lowest free one.
    fn allocate(&self) -> Option<Ipv4Addr> {
        let mut fallback = None;
        for raw in u32::from(self.config.pool_start)..=u32::from(self.config.pool_end) {
            let ip = Ipv4Addr::from(raw);
            if self.config.is_reserved(ip)
                || self.statics_by_ip.contains_key(&ip)
                || self.slots.contains_key(&ip)
            {
                continue;
            }
            if !self.remembered_by_ip.contains_key(&ip) {
                return Some(ip);
            }
            fallback.get_or_insert(ip);
        }
        fallback
    }

    /// Bind `ip` to the client (new lease or renewal); returns the lease's host name.
    pub(super) fn bind(&mut self, now: Instant, client: &Client, ip: Ipv4Addr) -> Option<String> {
        let previous = self
            .slots
            .get(&ip)
            .filter(|slot| slot.is_owned_by(&client.key))
            .and_then(Slot::lease);
        let host_name = self
            .static_host_name(client.chaddr)
            .or_else(|| client.host_name.clone())
            .or_else(|| previous.and_then(|l| l.host_name.clone()));
        let changed = previous.is_none_or(|p| p.mac != client.mac || p.host_name != host_name);
        let lease = Lease {
            ip,
            mac: client.mac,
            client_id: client.client_id.clone(),
            host_name: host_name.clone(),
            expires: now + self.config.lease_time,
            is_static: self.statics_by_ip.contains_key(&ip),
            chaddr: client.chaddr,
        };
        self.insert_slot(ip, Slot::Bound(lease));
        self.remember(client.key.clone(), ip);
        if changed {
            self.push_event(LeaseEvent::Bound {
                mac: client.mac,
                ip,
                host_name: host_name.clone(),
            });
        }
        host_name
    }

    pub(super) fn availability(
        &self,
        ip: Ipv4Addr,
        key: &ClientKey,
        chaddr: EthernetAddress,
    ) -> Availability {
        if self.config.is_reserved(ip) {
            return Availability::Unavailable;
        }
        if let Some(&owner) = self.statics_by_ip.get(&ip) {
            return if owner == chaddr {
                Availability::Mine
            } else {
                Availability::Unavailable
            };
        }
        match self.slots.get(&ip) {
            Some(slot) if slot.is_owned_by(key) => Availability::Mine,
            Some(_) => Availability::Unavailable,
            None if self.config.in_pool(ip) => Availability::Free,
            None => Availability::Unavailable,
        }
    }

    pub(super) fn static_host_name(&self, chaddr: EthernetAddress) -> Option<String> {
        self.statics_by_mac
            .get(&chaddr)
            .and_then(|lease| lease.host_name.clone())
    }
}
