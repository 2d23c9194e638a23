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
//!
//! Pages touched stay resident after the bytes left: smoltcp can neither shrink nor hand
//! back a socket's buffers. A driver that can return pages to the system (`madvise`) gives
//! the budget a [`ReleasePages`]; a TCP flow quiet for [`QUIET_AFTER`] with nothing in its
//! buffers then has them released and its charge goes back to two pages (`nat/quiet.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The smallest TCP buffer a flow gets, each way (a few segments: the flow still moves).
pub const MIN_TCP_BUFFER: usize = 4096;

/// Charges grow in pages, as memory does.
pub(super) const PAGE: usize = 4096;

/// How long a TCP flow moves no bytes before its buffers' pages are released.
pub const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Gives pages back to the system: called with the address and length of a flow's buffer
/// (a live allocation the NAT owns) whose bytes will all be written before they are read
/// again. The driver releases the whole pages inside it (`madvise(MADV_DONTNEED)`: they
/// read as zeros and cost memory again only when written). It must not keep the address.
pub type ReleasePages = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// A shared byte budget. Clones share it.
#[derive(Clone)]
pub struct BufferBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
    release: Option<ReleasePages>,
}

impl std::fmt::Debug for BufferBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferBudget")
            .field("used", &self.used())
            .field("limit", &self.limit)
            .field("releases_pages", &self.release.is_some())
            .finish()
    }
}

impl PartialEq for BufferBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.used, &other.used)
            && self.limit == other.limit
            && self.release.is_some() == other.release.is_some()
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
            release: None,
        }
    }

    /// The same budget, with quiet flows' pages given back through `release`.
    pub fn with_release(mut self, release: ReleasePages) -> Self {
        self.release = Some(release);
        self
    }

    /// Whether quiet flows' pages can be given back.
    pub(super) fn releases_pages(&self) -> bool {
        self.release.is_some()
    }

    /// Hands `storage`'s pages to the driver (see [`ReleasePages`]).
    pub(super) fn release(&self, storage: Storage) {
        if let Some(release) = &self.release
            && storage.len > 0
        {
            release(storage.addr, storage.len);
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

/// Where a socket buffer's bytes are: taken from its `Vec` before smoltcp owns it (the
/// heap allocation does not move with the `Vec`, and smoltcp never reallocates it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Storage {
    addr: usize,
    len: usize,
}

impl Storage {
    pub(super) fn of(buffer: &[u8]) -> Self {
        Self {
            addr: buffer.as_ptr() as usize,
            len: buffer.len(),
        }
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
