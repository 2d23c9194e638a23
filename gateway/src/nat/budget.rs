//! The relay-wide budget for NAT socket buffers, shared by every LAN's NAT.
//!
//! smoltcp 0.14 cannot resize a socket's buffers once it exists, so a TCP flow's buffer
//! size (its window) is chosen when it opens. The buffers are zeroed allocations: their
//! pages cost memory only once bytes pass through them, so a flow is charged for the
//! bytes its buffers can have touched (each way: what passed through, rounded up to pages,
//! at most the buffer's size), not for their size. An idle flow that exchanged a few
//! bytes is charged two pages; a flow that moved megabytes, its full buffers.
//!
//! A flow opened while the charges are near `limit` gets smaller buffers, down to
//! [`MIN_TCP_BUFFER`] each way: a smaller window, so its bytes wait at the ends (in the
//! VM, or in the host kernel's socket) instead of the relay growing. The charges of flows
//! already open can still grow to their buffers' size (bounded by their count).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The smallest TCP buffer a flow gets, each way (a few segments: the flow still moves).
pub const MIN_TCP_BUFFER: usize = 4096;

/// Charges grow in pages, as memory does.
pub(super) const PAGE: usize = 4096;

/// A shared byte budget. Clones share it.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl PartialEq for BufferBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.used, &other.used) && self.limit == other.limit
    }
}

impl Eq for BufferBudget {}

impl Default for BufferBudget {
    /// No limit (tests and embedders that do not care).
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl BufferBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now, all LANs together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The buffer size, each way, for a new flow that wants `want`: `want` if two of them
    /// could fill up within the limit, else the largest power of two under it that could,
    /// else [`MIN_TCP_BUFFER`]. Charges nothing: see [`Self::charge`].
    pub fn size_for(&self, want: usize) -> usize {
        let free = self.limit.saturating_sub(self.used());
        let mut size = want.max(MIN_TCP_BUFFER);
        while size > MIN_TCP_BUFFER && size.saturating_mul(2) > free {
            size = (size.next_power_of_two() / 2).max(MIN_TCP_BUFFER);
        }
        size
    }

    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn give(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// What a buffer of `capacity` bytes can have touched after `through` bytes passed.
pub(super) fn touched(capacity: usize, through: u64) -> usize {
    let through = usize::try_from(through).unwrap_or(usize::MAX);
    through
        .max(1)
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_shrink_as_charges_near_the_limit() {
        let budget = BufferBudget::new(1 << 20);
        assert_eq!(budget.size_for(256 << 10), 256 << 10);
        budget.charge(512 << 10);
        assert_eq!(budget.size_for(256 << 10), 256 << 10);
        budget.charge(1);
        assert_eq!(budget.size_for(256 << 10), 128 << 10);
        budget.charge(512 << 10);
        assert_eq!(budget.size_for(256 << 10), MIN_TCP_BUFFER);
        budget.give(usize::MAX);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.size_for(300_000), 300_000);
    }

    #[test]
    fn touched_is_pages_up_to_the_capacity() {
        assert_eq!(touched(256 << 10, 0), PAGE);
        assert_eq!(touched(256 << 10, 4097), 2 * PAGE);
        assert_eq!(touched(256 << 10, 10 << 20), 256 << 10);
        assert_eq!(touched(MIN_TCP_BUFFER, 10 << 20), MIN_TCP_BUFFER);
    }
}
