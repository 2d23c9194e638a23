//! Per-client-IP admission: concurrent connections, new connections per second, LANs created.
//!
//! One [`IpLimiter`] per relay. The driver calls [`IpLimiter::try_admit`] on every new
//! connection (any transport), keeps the [`Permit`] with the connection, and hands it back to
//! [`IpLimiter::release`] when the connection closes. LAN creation is counted the same way
//! with [`IpLimiter::try_create_lan`] and [`IpLimiter::release_lan`].
//!
//! Addresses are grouped as a host holds them: an IPv4 address alone, an IPv6 address by its
//! /64 (one host gets a whole /64 and can pick any address in it), and an IPv4-mapped IPv6
//! address as its IPv4 address.
//!
//! Memory is bounded: an entry is forgotten as soon as it holds no connection, no LAN and a
//! full rate bucket (a fresh entry would be identical), and at most `max_tracked_ips` entries
//! exist. When the table is full, idle entries are swept (at most once per
//! [`SWEEP_INTERVAL`], so a flood of new addresses cannot make every admission scan the
//! table), and a new address that still finds no room is refused with
//! [`Refusal::TooManyIps`]: failing closed keeps the per-IP limits meaningful under a flood
//! of addresses, and the relay's global limits decide what happens to everyone else.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// Shortest time between two sweeps forced by a full table.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The unit limits are counted per: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    /// The key `ip` is counted under.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }

    /// The address (IPv4) or the /64's first address (IPv6).
    pub fn addr(self) -> IpAddr {
        self.0
    }
}

/// Why a client was refused. Display is one line for an HTTP 429 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(
        "too many connections from your address (at most {limit}): close other tabs or VMs, then retry"
    )]
    IpConnections { limit: u32 },
    #[error("too many new connections from your address: retry in {} s", retry_secs(*.retry_after))]
    IpRate { retry_after: Duration },
    #[error(
        "your address already has {limit} LANs, the most allowed: join one of them, or wait until one is empty"
    )]
    IpLans { limit: u32 },
    #[error("the relay is tracking too many client addresses right now: retry in a minute")]
    TooManyIps,
}

fn retry_secs(wait: Duration) -> u64 {
    // Rounded up, so that a client retrying exactly then is admitted.
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl Refusal {
    /// Every label [`reason`](Self::reason) returns, for registering metrics up front.
    pub const REASONS: [&'static str; 4] =
        ["ip_connections", "ip_rate", "ip_lans", "ip_table_full"];

    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::IpConnections { .. } => "ip_connections",
            Refusal::IpRate { .. } => "ip_rate",
            Refusal::IpLans { .. } => "ip_lans",
            Refusal::TooManyIps => "ip_table_full",
        }
    }
}

/// One admitted connection. Not `Clone`: each is released exactly once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "hand the permit back to IpLimiter::release when the connection closes"]
pub struct Permit {
    key: IpKey,
}

impl Permit {
    /// The key the connection is counted under.
    pub fn key(&self) -> IpKey {
        self.key
    }
}

/// One LAN counted against its creator's address.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "hand the permit back to IpLimiter::release_lan when the LAN is removed"]
pub struct LanPermit {
    key: IpKey,
}

impl LanPermit {
    /// The key the LAN is counted under.
    pub fn key(&self) -> IpKey {
        self.key
    }
}

#[derive(Debug)]
struct Entry {
    connections: u32,
    lans: u32,
    new_connections: TokenBucket,
}

/// The per-IP admission table.
#[derive(Debug)]
pub struct IpLimiter {
    max_connections_per_ip: u32,
    max_lans_per_ip: u32,
    new_per_sec: u32,
    burst: u32,
    max_tracked_ips: usize,
    entries: HashMap<IpKey, Entry>,
    /// No forced sweep before this (see [`SWEEP_INTERVAL`]).
    next_sweep: Option<Instant>,
}

impl IpLimiter {
    /// At most `max_connections_per_ip` concurrent connections per address, new ones at
    /// `new_per_sec` with bursts of `burst`, and at most `max_tracked_ips` addresses in the
    /// table. LANs per address are unlimited until [`with_max_lans_per_ip`](Self::with_max_lans_per_ip).
    pub fn new(
        max_connections_per_ip: u32,
        new_per_sec: u32,
        burst: u32,
        max_tracked_ips: usize,
    ) -> Self {
        Self {
            max_connections_per_ip,
            max_lans_per_ip: u32::MAX,
            new_per_sec,
            burst,
            max_tracked_ips,
            entries: HashMap::new(),
            next_sweep: None,
        }
    }

    /// Caps the LANs one address may have created and not yet removed.
    pub fn with_max_lans_per_ip(mut self, max_lans_per_ip: u32) -> Self {
        self.max_lans_per_ip = max_lans_per_ip;
        self
    }

    /// New limits (a config reload). Open connections stay counted; every address's
    /// new-connection bucket restarts full at the new rate, so a reload never refuses
    /// anyone who was under the old limits.
    pub fn set_limits(
        &mut self,
        max_connections_per_ip: u32,
        new_per_sec: u32,
        burst: u32,
        max_lans_per_ip: u32,
        now: Instant,
    ) {
        self.max_connections_per_ip = max_connections_per_ip;
        self.new_per_sec = new_per_sec;
        self.burst = burst;
        self.max_lans_per_ip = max_lans_per_ip;
        for entry in self.entries.values_mut() {
            entry.new_connections = TokenBucket::new(u64::from(new_per_sec), u64::from(burst), now);
        }
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn try_admit(&mut self, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let key = IpKey::of(ip);
        let limit = self.max_connections_per_ip;
        let entry = self.entry(key, now)?;
        let result = if entry.connections >= limit {
            // Checked before the rate so that a refused client does not also spend a token.
            Err(Refusal::IpConnections { limit })
        } else if !entry.new_connections.try_take(now, 1) {
            let retry_after = entry.new_connections.time_until(now, 1);
            Err(Refusal::IpRate { retry_after })
        } else {
            entry.connections += 1;
            Ok(Permit { key })
        };
        self.forget_if_idle(key, now);
        result
    }

    /// Ends the connection `permit` was given for.
    pub fn release(&mut self, permit: Permit, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&permit.key) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        self.forget_if_idle(permit.key, now);
    }

    /// Counts a new LAN created by `ip`, or refuses with [`Refusal::IpLans`].
    pub fn try_create_lan(&mut self, ip: IpAddr, now: Instant) -> Result<LanPermit, Refusal> {
        let key = IpKey::of(ip);
        let limit = self.max_lans_per_ip;
        let entry = self.entry(key, now)?;
        let result = if entry.lans >= limit {
            Err(Refusal::IpLans { limit })
        } else {
            entry.lans += 1;
            Ok(LanPermit { key })
        };
        self.forget_if_idle(key, now);
        result
    }

    /// Uncounts the LAN `permit` was given for (it was removed).
    pub fn release_lan(&mut self, permit: LanPermit, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&permit.key) {
            entry.lans = entry.lans.saturating_sub(1);
        }
        self.forget_if_idle(permit.key, now);
    }

    /// Forgets every idle entry; returns how many. The driver may call this on a timer to
    /// return memory early; the limiter also calls it when the table is full.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| !entry.is_idle(now));
        before - self.entries.len()
    }

    /// Addresses currently tracked.
    pub fn tracked_ips(&self) -> usize {
        self.entries.len()
    }

    /// Open connections counted for `ip` (under its [`IpKey`]).
    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.entries
            .get(&IpKey::of(ip))
            .map_or(0, |entry| entry.connections)
    }

    /// Live LANs counted for `ip` (under its [`IpKey`]).
    pub fn lans(&self, ip: IpAddr) -> u32 {
        self.entries
            .get(&IpKey::of(ip))
            .map_or(0, |entry| entry.lans)
    }

    /// The entry of `key`, created if there is room.
    fn entry(&mut self, key: IpKey, now: Instant) -> Result<&mut Entry, Refusal> {
        if !self.entries.contains_key(&key) {
            self.make_room(now)?;
        }
        let (rate, burst) = (u64::from(self.new_per_sec), u64::from(self.burst));
        Ok(self.entries.entry(key).or_insert_with(|| Entry {
            connections: 0,
            lans: 0,
            new_connections: TokenBucket::new(rate, burst, now),
        }))
    }

    fn make_room(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.entries.len() < self.max_tracked_ips {
            return Ok(());
        }
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.sweep(now);
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        if self.entries.len() < self.max_tracked_ips {
            Ok(())
        } else {
            Err(Refusal::TooManyIps)
        }
    }

    fn forget_if_idle(&mut self, key: IpKey, now: Instant) {
        if self
            .entries
            .get(&key)
            .is_some_and(|entry| entry.is_idle(now))
        {
            self.entries.remove(&key);
        }
    }
}

impl Entry {
    /// Holds nothing a fresh entry would not: safe to forget.
    fn is_idle(&self, now: Instant) -> bool {
        self.connections == 0 && self.lans == 0 && self.new_connections.is_full(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn concurrent_connections_are_capped_per_ip() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(2, 100, 100, 16);
        let a = limiter.try_admit(ip("192.0.2.1"), t0).unwrap();
        let b = limiter.try_admit(ip("192.0.2.1"), t0).unwrap();
        let refused = limiter.try_admit(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(refused, Refusal::IpConnections { limit: 2 });
        assert_eq!(refused.reason(), "ip_connections");
        // Another address is not affected.
        let c = limiter.try_admit(ip("192.0.2.2"), t0).unwrap();
        limiter.release(a, t0);
        let d = limiter.try_admit(ip("192.0.2.1"), t0).unwrap();
        assert_eq!(limiter.connections(ip("192.0.2.1")), 2);
        for permit in [b, c, d] {
            limiter.release(permit, t0);
        }
        assert_eq!(limiter.connections(ip("192.0.2.1")), 0);
    }

    #[test]
    fn new_connections_are_rate_limited_with_a_retry_hint() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(100, 2, 3, 16);
        let permits: Vec<_> = (0..3)
            .map(|_| limiter.try_admit(ip("192.0.2.1"), t0).unwrap())
            .collect();
        let refused = limiter.try_admit(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(
            refused,
            Refusal::IpRate {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(refused.reason(), "ip_rate");
        assert_eq!(
            refused.to_string(),
            "too many new connections from your address: retry in 1 s"
        );
        let later = t0 + Duration::from_millis(500);
        let permit = limiter.try_admit(ip("192.0.2.1"), later).unwrap();
        for permit in permits.into_iter().chain([permit]) {
            limiter.release(permit, later);
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(1, 100, 100, 16);
        let _a = limiter.try_admit(ip("2001:db8:1:2::1"), t0).unwrap();
        let other_host_same_64 = limiter.try_admit(ip("2001:db8:1:2:ffff::9"), t0);
        assert_eq!(other_host_same_64, Err(Refusal::IpConnections { limit: 1 }));
        assert!(limiter.try_admit(ip("2001:db8:1:3::1"), t0).is_ok());
        let _v4 = limiter.try_admit(ip("198.51.100.7"), t0).unwrap();
        let mapped = limiter.try_admit(ip("::ffff:198.51.100.7"), t0);
        assert_eq!(mapped, Err(Refusal::IpConnections { limit: 1 }));
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2:3:4:5:6")).addr(),
            ip("2001:db8:1:2::")
        );
    }

    #[test]
    fn idle_entries_are_forgotten_once_their_bucket_refills() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(4, 10, 10, 16);
        let permit = limiter.try_admit(ip("192.0.2.1"), t0).unwrap();
        limiter.release(permit, t0);
        assert_eq!(
            limiter.tracked_ips(),
            1,
            "bucket not yet full: the rate is remembered"
        );
        assert_eq!(limiter.sweep(t0 + Duration::from_millis(50)), 0);
        assert_eq!(limiter.sweep(t0 + Duration::from_millis(100)), 1);
        assert_eq!(limiter.tracked_ips(), 0);
        // Released after the refill: forgotten at once.
        let t1 = t0 + Duration::from_secs(10);
        let permit = limiter.try_admit(ip("192.0.2.1"), t1).unwrap();
        limiter.release(permit, t1 + Duration::from_secs(1));
        assert_eq!(limiter.tracked_ips(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_sweeps_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(4, 1, 1, 3);
        let mut permits = Vec::new();
        for i in 1..=3 {
            permits.push(limiter.try_admit(ip(&format!("192.0.2.{i}")), t0).unwrap());
        }
        let refused = limiter.try_admit(ip("192.0.2.4"), t0).unwrap_err();
        assert_eq!(refused, Refusal::TooManyIps);
        assert_eq!(refused.reason(), "ip_table_full");
        // Known addresses still get their own answers.
        assert_eq!(
            limiter.try_admit(ip("192.0.2.1"), t0),
            Err(Refusal::IpRate {
                retry_after: Duration::from_secs(1)
            })
        );
        // One connection closes; its bucket refills after 1 s; the table sweeps it then.
        limiter.release(permits.remove(0), t0);
        let t_half = t0 + Duration::from_millis(500);
        assert_eq!(
            limiter.try_admit(ip("192.0.2.4"), t_half),
            Err(Refusal::TooManyIps)
        );
        let t1 = t0 + Duration::from_secs(1);
        let admitted = limiter.try_admit(ip("192.0.2.4"), t1).unwrap();
        assert_eq!(limiter.tracked_ips(), 3);
        permits.push(admitted);
        for permit in permits {
            limiter.release(permit, t1 + Duration::from_secs(5));
        }
        assert_eq!(limiter.tracked_ips(), 0);
    }

    #[test]
    fn lans_per_ip_are_capped_and_released() {
        let t0 = Instant::now();
        let mut limiter = IpLimiter::new(4, 10, 10, 16).with_max_lans_per_ip(2);
        let a = limiter.try_create_lan(ip("192.0.2.1"), t0).unwrap();
        let b = limiter.try_create_lan(ip("192.0.2.1"), t0).unwrap();
        let refused = limiter.try_create_lan(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(refused, Refusal::IpLans { limit: 2 });
        assert_eq!(refused.reason(), "ip_lans");
        assert_eq!(limiter.lans(ip("192.0.2.1")), 2);
        limiter.release_lan(a, t0);
        let c = limiter.try_create_lan(ip("192.0.2.1"), t0).unwrap();
        limiter.release_lan(b, t0);
        limiter.release_lan(c, t0);
        assert_eq!(
            limiter.tracked_ips(),
            0,
            "creating LANs spends no connection token"
        );
    }

    #[test]
    fn every_refusal_has_a_listed_reason() {
        let all = [
            Refusal::IpConnections { limit: 1 },
            Refusal::IpRate {
                retry_after: Duration::from_millis(1),
            },
            Refusal::IpLans { limit: 1 },
            Refusal::TooManyIps,
        ];
        for refusal in all {
            assert!(Refusal::REASONS.contains(&refusal.reason()));
            assert!(!refusal.to_string().contains('\n'));
        }
    }
}
