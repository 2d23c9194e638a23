//! The timing of LAN ownership claims, kept apart from NATS so it can be tested on a
//! virtual clock.
//!
//! An owner writes its claim (a key per LAN in a JetStream KV bucket) and renews it by
//! revision every `ttl / 3`. It serves the LAN only while its last successful renewal was
//! *sent* less than `2 * ttl / 3` ago: a renewal stuck in a cut-off connection cannot keep
//! a gateway alive. Another node takes a claim over only after it has seen the same
//! revision for a whole `ttl` of its own clock, so it always starts counting after the
//! owner started its shorter count, whatever the clocks of the two machines say. Between
//! the owner's fence and a takeover lies at least `ttl / 3`: two DHCP servers never answer
//! one LAN. The revision a claim was won with is the owner's epoch.

use std::time::{Duration, Instant};

/// The periods derived from one TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTiming {
    pub ttl: Duration,
}

impl ClaimTiming {
    pub fn new(ttl: Duration) -> Self {
        ClaimTiming { ttl }
    }

    /// How often an owner renews.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after a successful renewal was sent the owner may still serve.
    pub fn serve_for(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// How often a non-owner looks at the claim of a LAN it has ports on.
    pub fn check_every(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }
}

/// The owner's own claim.
#[derive(Clone, Debug)]
pub struct OwnedClaim {
    timing: ClaimTiming,
    /// The revision the claim was won with.
    pub epoch: u64,
    /// The claim's revision now (the next renewal must name it).
    pub revision: u64,
    serve_until: Instant,
    next_renew: Instant,
}

impl OwnedClaim {
    /// A claim won by a write sent at `sent_at`.
    pub fn won(timing: ClaimTiming, revision: u64, sent_at: Instant) -> Self {
        OwnedClaim {
            timing,
            epoch: revision,
            revision,
            serve_until: sent_at + timing.serve_for(),
            next_renew: sent_at + timing.renew_every(),
        }
    }

    /// Whether a renewal is due at `now`.
    pub fn renew_due(&self, now: Instant) -> bool {
        now >= self.next_renew
    }

    /// A renewal is on its way (sent at `now`); the next one is due a period later.
    pub fn renewal_sent(&mut self, now: Instant) {
        self.next_renew = now + self.timing.renew_every();
    }

    /// The renewal sent at `sent_at` was accepted with `revision`.
    pub fn handle_renewed(&mut self, revision: u64, sent_at: Instant) {
        self.revision = revision;
        self.serve_until = self.serve_until.max(sent_at + self.timing.serve_for());
    }

    /// Whether this node may still serve the LAN (run its gateway) at `now`.
    pub fn may_serve(&self, now: Instant) -> bool {
        now < self.serve_until
    }

    /// The next moment something is due: a renewal or the end of serving.
    pub fn poll_timeout(&self) -> Instant {
        self.next_renew.min(self.serve_until)
    }
}

/// Another node's claim as a non-owner sees it.
#[derive(Clone, Debug, Default)]
pub struct ObservedClaim {
    seen: Option<(u64, Instant)>,
}

impl ObservedClaim {
    /// The claim has `revision` at `now`.
    pub fn handle_seen(&mut self, revision: u64, now: Instant) {
        match self.seen {
            Some((r, _)) if r == revision => {}
            _ => self.seen = Some((revision, now)),
        }
    }

    /// The key is gone (deleted or expired): nothing to wait for.
    pub fn handle_absent(&mut self) {
        self.seen = None;
    }

    /// Whether the claim has not moved for a whole TTL: its owner stopped renewing, and
    /// it has stopped serving for at least `ttl / 3`.
    pub fn is_stale(&self, timing: ClaimTiming, now: Instant) -> bool {
        self.seen
            .is_some_and(|(_, since)| now.duration_since(since) >= timing.ttl)
    }

    pub fn revision(&self) -> Option<u64> {
        self.seen.map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(9);

    #[test]
    fn an_owner_that_cannot_renew_stops_before_anyone_takes_over() {
        let t = ClaimTiming::new(TTL);
        let t0 = Instant::now();
        let mut owner = OwnedClaim::won(t, 10, t0);
        assert_eq!(owner.poll_timeout(), t0 + Duration::from_secs(3));
        assert!(owner.renew_due(t0 + Duration::from_secs(3)));
        owner.renewal_sent(t0 + Duration::from_secs(3));
        owner.handle_renewed(11, t0 + Duration::from_secs(3));
        assert_eq!(owner.revision, 11);
        assert_eq!(owner.epoch, 10);
        // Renewals from now on hang (the connection is cut).
        owner.renewal_sent(t0 + Duration::from_secs(6));
        assert!(owner.may_serve(t0 + Duration::from_millis(8_999)));
        assert!(!owner.may_serve(t0 + Duration::from_secs(9)));
        // A watcher that saw revision 11 at once (the earliest it could) waits a whole TTL.
        let mut watcher = ObservedClaim::default();
        watcher.handle_seen(11, t0 + Duration::from_secs(3));
        assert!(!watcher.is_stale(t, t0 + Duration::from_millis(11_999)));
        assert!(watcher.is_stale(t, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn a_moving_revision_is_never_stale() {
        let t = ClaimTiming::new(TTL);
        let t0 = Instant::now();
        let mut w = ObservedClaim::default();
        for i in 0..10u64 {
            w.handle_seen(i, t0 + Duration::from_secs(3 * i));
            assert!(!w.is_stale(t, t0 + Duration::from_secs(3 * i + 8)));
        }
        w.handle_absent();
        assert!(!w.is_stale(t, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn a_late_answer_does_not_shorten_serving() {
        let t = ClaimTiming::new(TTL);
        let t0 = Instant::now();
        let mut owner = OwnedClaim::won(t, 1, t0 + Duration::from_secs(3));
        owner.handle_renewed(2, t0);
        assert!(owner.may_serve(t0 + Duration::from_secs(8)));
    }
}
