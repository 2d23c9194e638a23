//! Gives the pages of quiet NAT flows' buffers back to the system (`gateway::ReleasePages`).

use std::sync::OnceLock;

/// Releases the whole pages inside `[addr, addr + len)`, a buffer of a quiet NAT flow.
pub(crate) fn release(addr: usize, len: usize) {
    let page = page_size();
    let start = addr.next_multiple_of(page);
    let end = addr.saturating_add(len) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: the gateway calls this from inside a NAT method, for a live heap allocation
    // the NAT owns and does not borrow meanwhile, whose bytes it writes before it reads them
    // again (`gateway::ReleasePages`). [start, end) is whole pages inside that allocation.
    // MADV_DONTNEED on private anonymous memory only makes those pages read as zeros
    // (and stop costing memory until written): it moves and unmaps nothing.
    #[allow(unsafe_code)]
    let result =
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if result != 0 {
        tracing::debug!(
            "madvise(MADV_DONTNEED) of a quiet flow's buffer failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system; it takes no pointers.
        #[allow(unsafe_code)]
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|size| size.is_power_of_two())
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_as_zeros_and_the_rest_is_kept() {
        let page = page_size();
        let mut buffer = vec![7u8; 5 * page];
        let addr = buffer.as_ptr() as usize;
        // An unaligned start: the partial page before the first whole one is kept.
        release(addr + 10, 4 * page);
        let first_whole = (addr + 10).next_multiple_of(page) - addr;
        let end = (addr + 10 + 4 * page) / page * page - addr;
        assert!(buffer[..first_whole].iter().all(|&b| b == 7));
        assert!(buffer[first_whole..end].iter().all(|&b| b == 0));
        assert!(buffer[end..].iter().all(|&b| b == 7));
        // Released pages work as memory again.
        buffer[first_whole] = 1;
        assert_eq!(buffer[first_whole], 1);
    }
}
