//! Bandwidth shaping of switched frames: a token bucket per port and direction and one per
//! LAN. A frame between two VMs over its budget is dropped and counted (`shaped`), so one VM
//! flooding its LAN never takes its neighbours' share. Frames to and from the gateway port
//! are not shaped here: NAT traffic is paced by the NAT's own flow control instead (host
//! reads wait for the budget, the window offered to the VM follows), so a shaped download
//! slows down smoothly without loss.

use std::sync::Mutex;
use std::time::Instant;

use admission::TokenBucket;

/// Burst of a frame bucket: 50 ms at the rate, and at least a few full jumbo frames.
fn burst(rate: u64) -> u64 {
    (rate / 20).max(256 * 1024)
}

/// One token bucket; `None` rate means no limit.
#[derive(Debug)]
pub(crate) struct Shaper(Option<Mutex<TokenBucket>>);

impl Shaper {
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Self {
        Shaper(rate.map(|rate| Mutex::new(TokenBucket::new(rate, burst(rate), now))))
    }

    /// Takes `bytes` from the budget; false (nothing taken) when over it.
    pub(crate) fn allow(&self, now: Instant, bytes: usize) -> bool {
        match &self.0 {
            None => true,
            Some(bucket) => bucket
                .lock()
                .map(|mut b| b.try_take(now, bytes as u64))
                .unwrap_or(true),
        }
    }
}
