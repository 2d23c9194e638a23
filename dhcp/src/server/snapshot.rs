//! Saving leases to a state file and loading them back.

use std::time::Instant;

use super::DhcpServer;
use super::pool::Availability;
use super::slot::Slot;
use crate::hostname;
use crate::lease::{
    ClientKey, LastAddressRecord, Lease, LeaseEvent, LeaseRecord, LeaseSnapshot, MAX_CLIENT_ID_LEN,
    RestoreReport,
};

impl DhcpServer {
    /// Leases and remembered addresses with absolute unix expiry times, for a state file.
    pub fn snapshot(&self, now: Instant, unix_now_secs: u64) -> LeaseSnapshot {
        let leases = self
            .leases()
            .map(|lease| LeaseRecord {
                ip: lease.ip,
                mac: lease.mac,
                chaddr: lease.chaddr,
                client_id: lease.client_id.clone(),
                host_name: lease.host_name.clone(),
                expires_unix_secs: unix_now_secs.saturating_add(whole_secs_rounded_up(
                    lease.expires.saturating_duration_since(now),
                )),
            })
            .collect();
        // Oldest first, so restoring replays the same forgetting order.
        let last_addresses = self
            .remembered_order
            .values()
            .filter_map(|key| {
                let &(ip, _) = self.remembered.get(key)?;
                Some(LastAddressRecord {
                    key: key.clone(),
                    ip,
                })
            })
            .collect();
        LeaseSnapshot {
            leases,
            last_addresses,
        }
    }

    /// Load a [`LeaseSnapshot`] taken by [`Self::snapshot`], usually right after `new`.
    ///
    /// Expired leases are skipped; leases that the current config would not hand out, or
    /// that clash with leases already held, are rejected. Each restored lease emits
    /// [`LeaseEvent::Bound`] so DNS names come back too.
    pub fn restore(
        &mut self,
        snapshot: &LeaseSnapshot,
        now: Instant,
        unix_now_secs: u64,
    ) -> RestoreReport {
        self.handle_timeout(now);
        let mut report = RestoreReport::default();
        for record in &snapshot.last_addresses {
            if self.config.in_pool(record.ip) && !self.config.is_reserved(record.ip) {
                self.remember(record.key.clone(), record.ip);
            }
        }
        for record in &snapshot.leases {
            let Some(remaining) = record.expires_unix_secs.checked_sub(unix_now_secs) else {
                report.expired += 1;
                continue;
            };
            if remaining == 0 {
                report.expired += 1;
                continue;
            }
            // A lease never has more left than one lease time (the config may have shrunk).
            let remaining = std::time::Duration::from_secs(remaining).min(self.config.lease_time);
            let client_id = record
                .client_id
                .clone()
                .filter(|id| !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN);
            let key = match &client_id {
                Some(id) => ClientKey::ClientId(id.clone()),
                None => ClientKey::Mac(record.chaddr),
            };
            let static_ip = self.statics_by_mac.get(&record.chaddr).map(|s| s.ip);
            let allowed = match static_ip {
                Some(ip) => ip == record.ip,
                None => self.availability(record.ip, &key, record.chaddr) == Availability::Free,
            };
            if !allowed
                || self.slots.contains_key(&record.ip)
                || self.by_key.contains_key(&key)
                || !record.mac.is_unicast()
            {
                report.rejected += 1;
                continue;
            }
            let host_name = self
                .static_host_name(record.chaddr)
                .or_else(|| record.host_name.as_deref().and_then(hostname::sanitize));
            let lease = Lease {
                ip: record.ip,
                mac: record.mac,
                client_id,
                host_name,
                expires: now + remaining,
                is_static: static_ip.is_some(),
                chaddr: record.chaddr,
            };
            self.push_event(LeaseEvent::Bound {
                mac: lease.mac,
                ip: lease.ip,
                host_name: lease.host_name.clone(),
            });
            self.insert_slot(record.ip, Slot::Bound(lease));
            self.remember(key, record.ip);
            report.restored += 1;
        }
        report
    }
}

/// Rounded up so a lease with 0.4 s left is not saved as already expired.
fn whole_secs_rounded_up(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
