//! Bandwidth of a VM's NAT traffic (`port_rate`): its host readers and writers wait for a
//! per-VM budget, each direction. Waiting leaves data in the kernel's socket buffers and in
//! smoltcp's windows, so a shaped download or upload slows down without losing a packet
//! (switched frames between VMs are shaped in `lan/shaping.rs` instead, by dropping).

use std::time::Instant;

use admission::TokenBucket;
use tokio::sync::Mutex;

/// Burst of a NAT budget: enough for a few reads, small enough that the rate is even.
const BURST: u64 = 32 * 1024;
/// Largest read of a paced flow: smaller reads keep the pace smooth.
pub(super) const PACED_CHUNK: usize = 16 * 1024;

/// One VM's budgets: host to VM (`down`) and VM to host (`up`).
#[derive(Debug)]
pub(super) struct Pacer {
    down: Mutex<TokenBucket>,
    up: Mutex<TokenBucket>,
}

impl Pacer {
    pub(super) fn new(rate: u64) -> Self {
        let now = Instant::now();
        Pacer {
            down: Mutex::new(TokenBucket::new(rate, BURST, now)),
            up: Mutex::new(TokenBucket::new(rate, BURST, now)),
        }
    }

    /// Waits until `bytes` from the host may go on to the VM.
    pub(super) async fn down(&self, bytes: usize) {
        take(&self.down, bytes).await
    }

    /// Waits until `bytes` from the VM may go on to the host.
    pub(super) async fn up(&self, bytes: usize) {
        take(&self.up, bytes).await
    }
}

async fn take(bucket: &Mutex<TokenBucket>, bytes: usize) {
    loop {
        let wait = {
            let mut bucket = bucket.lock().await;
            let now = Instant::now();
            if bucket.try_take(now, bytes as u64) {
                return;
            }
            bucket.time_until(now, bytes as u64)
        };
        tokio::time::sleep(wait).await;
    }
}
