//! Bounded IP -> MAC cache, learned from what VMs send, so answers that come later
//! (upstream DNS) can be addressed without ARPing.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use smoltcp::wire::EthernetAddress;

/// Least recently seen entries are evicted first. No time-based aging: a VM keeps its
/// address across reconnects, and every frame it sends refreshes the entry.
#[derive(Debug)]
pub(crate) struct NeighborCache {
    entries: HashMap<Ipv4Addr, (EthernetAddress, u64)>,
    /// Use stamp -> address, oldest first.
    order: BTreeMap<u64, Ipv4Addr>,
    clock: u64,
    max: usize,
}

impl NeighborCache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            max,
        }
    }

    pub(crate) fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if self.max == 0 {
            return;
        }
        self.clock += 1;
        if let Some((_, old_stamp)) = self.entries.insert(ip, (mac, self.clock)) {
            self.order.remove(&old_stamp);
        }
        self.order.insert(self.clock, ip);
        while self.entries.len() > self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    pub(crate) fn lookup(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.entries.get(&ip).map(|&(mac, _)| mac)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Addresses seen most recently first.
    pub(crate) fn recent(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.order.values().rev().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([0x52, 0x54, 0, 0, 0, last])
    }

    #[test]
    fn evicts_least_recently_seen() {
        let mut cache = NeighborCache::new(2);
        let ip = |last| Ipv4Addr::new(10, 0, 2, last);
        cache.learn(ip(15), mac(1));
        cache.learn(ip(16), mac(2));
        cache.learn(ip(15), mac(3)); // refresh: 16 is now the oldest
        cache.learn(ip(17), mac(4));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(ip(15)), Some(mac(3)));
        assert_eq!(cache.lookup(ip(16)), None);
        assert_eq!(cache.lookup(ip(17)), Some(mac(4)));
        assert_eq!(cache.recent().collect::<Vec<_>>(), [ip(17), ip(15)]);
    }
}
