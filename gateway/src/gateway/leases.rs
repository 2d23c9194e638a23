//! DHCP lease events applied to DNS names and the neighbour cache.

use std::net::Ipv4Addr;

use dhcp::LeaseEvent;
use smoltcp::wire::EthernetAddress;

use super::{Gateway, MAX_PENDING_LEASE_EVENTS, is_host_mac};

impl Gateway {
    /// Applies pending DHCP lease events to DNS names and neighbours, then keeps them for
    /// [`Self::poll_lease_event`].
    pub(super) fn sync_leases(&mut self) {
        while let Some(event) = self.dhcp.poll_event() {
            self.apply_lease_event(&event);
            if self.lease_events.len() >= MAX_PENDING_LEASE_EVENTS {
                self.lease_events.pop_front();
                self.stats.lease_events_dropped += 1;
            }
            self.lease_events.push_back(event);
        }
        self.stats.neighbors = self.neighbors.len();
    }

    fn apply_lease_event(&mut self, event: &LeaseEvent) {
        match event {
            LeaseEvent::Bound { mac, ip, host_name } => {
                self.learn(*ip, *mac);
                match host_name {
                    Some(host) => self.publish(*ip, host),
                    None => self.unpublish(*ip, None),
                }
            }
            LeaseEvent::Released { ip, host_name, .. }
            | LeaseEvent::Expired { ip, host_name, .. } => {
                self.unpublish(*ip, host_name.as_deref());
            }
            LeaseEvent::Declined { ip, .. } => self.unpublish(*ip, None),
            LeaseEvent::PoolExhausted { .. } => {}
        }
    }

    /// Publishes every named lease the server holds (after a restore, or at start).
    pub(super) fn republish_leases(&mut self) {
        let named: Vec<(Ipv4Addr, EthernetAddress, String)> = self
            .dhcp
            .leases()
            .filter_map(|lease| Some((lease.ip, lease.mac, lease.host_name.clone()?)))
            .collect();
        for (ip, mac, host) in named {
            self.learn(ip, mac);
            self.publish(ip, &host);
        }
    }

    fn publish(&mut self, ip: Ipv4Addr, host: &str) {
        if let Some(old) = self.published.get(&ip)
            && !old.eq_ignore_ascii_case(host)
        {
            self.dns.remove_local_host(old, ip);
        }
        self.dns.set_local_host(host, ip);
        self.published.insert(ip, host.to_owned());
    }

    fn unpublish(&mut self, ip: Ipv4Addr, host: Option<&str>) {
        if let Some(old) = self.published.remove(&ip) {
            self.dns.remove_local_host(&old, ip);
        }
        if let Some(host) = host {
            self.dns.remove_local_host(host, ip);
        }
    }

    /// Neighbours are LAN hosts only: that keeps spoofed sources from filling the cache
    /// with addresses we could never answer anyway.
    pub(super) fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if self.config.is_host_address(ip) && !self.is_local(ip) && is_host_mac(mac) {
            self.neighbors.learn(ip, mac);
        }
    }
}
