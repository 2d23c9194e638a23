//! TTL cache of upstream answers, positive and negative, bounded in entries.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};

/// Cache and coalescing key: the question, with the name lowercased and made absolute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) name: Name,
    pub(crate) record_type: RecordType,
}

impl CacheKey {
    pub(crate) fn new(name: &Name, record_type: RecordType) -> Self {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self { name, record_type }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Cached {
    Records(Vec<Record>),
    /// NXDOMAIN, or NOERROR without records (NODATA).
    Negative(ResponseCode),
}

#[derive(Debug)]
struct Entry {
    value: Cached,
    stored: Instant,
    expires: Instant,
    seq: u64,
}

#[derive(Debug)]
pub(crate) struct Cache {
    map: HashMap<CacheKey, Entry>,
    /// Expiry order, for purging and for evicting the soonest-expiring entry; `seq` breaks
    /// ties oldest first.
    by_expiry: BTreeMap<(Instant, u64), CacheKey>,
    max_entries: usize,
    seq: u64,
}

impl Cache {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            map: HashMap::new(),
            by_expiry: BTreeMap::new(),
            max_entries,
            seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// A live entry, with record TTLs reduced by the time spent in the cache.
    pub(crate) fn get(&mut self, now: Instant, key: &CacheKey) -> Option<Cached> {
        let entry = self.map.get(key)?;
        if entry.expires <= now {
            self.remove(key);
            return None;
        }
        let elapsed = now.saturating_duration_since(entry.stored).as_secs();
        let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
        Some(match &entry.value {
            Cached::Records(records) => Cached::Records(
                records
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r.decrement_ttl(elapsed);
                        r
                    })
                    .collect(),
            ),
            negative => negative.clone(),
        })
    }

    pub(crate) fn insert(&mut self, now: Instant, key: CacheKey, value: Cached, ttl: u32) {
        if ttl == 0 || self.max_entries == 0 {
            return;
        }
        let Some(expires) = now.checked_add(Duration::from_secs(u64::from(ttl))) else {
            return;
        };
        self.remove(&key);
        self.purge(now);
        while self.map.len() >= self.max_entries {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.map.remove(&victim);
        }
        self.seq += 1;
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.map.insert(
            key,
            Entry {
                value,
                stored: now,
                expires,
                seq: self.seq,
            },
        );
    }

    /// Drops every expired entry.
    pub(crate) fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.map.remove(&key);
        }
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first_key_value().map(|((t, _), _)| *t)
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.map.remove(key) {
            self.by_expiry.remove(&(entry.expires, entry.seq));
        }
    }
}
