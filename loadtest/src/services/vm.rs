//! One synthetic VM's connection: frames to its MAC are queued, the rest are drained.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Args, Errors, Ws, client_mac, connect, lan_url, secs};

/// Frames addressed to one VM that wait for it; more are dropped (the VM is too slow).
const VM_QUEUE: usize = 1024;

/// One synthetic VM: its socket's sending half and the frames addressed to its MAC.
pub(super) struct Vm {
    pub(super) index: u32,
    pub(super) mac: [u8; 6],
    pub(super) sink: SplitSink<Ws, Message>,
    pub(super) frames: mpsc::Receiver<Bytes>,
    reader: JoinHandle<()>,
}

impl Vm {
    async fn connect(args: &Args, index: u32, errors: Arc<Errors>) -> anyhow::Result<Vm> {
        let url = lan_url(args, index % args.lans);
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let ws = connect(&url, cfg, secs(args.connect_timeout)).await?;
        let (sink, mut stream) = ws.split();
        let mac = client_mac(index);
        let (tx, frames) = mpsc::channel(VM_QUEUE);
        // Keeps reading whatever the VM is doing, so other VMs' broadcasts (DHCP floods the
        // LAN) never back up into the relay; only frames to our MAC are kept.
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(f)) if f.len() >= 6 && f[0..6] == mac => {
                        if tx.try_send(f).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.push(format!("client {index}: receive: {e}"));
                        return;
                    }
                }
            }
        });
        Ok(Vm {
            index,
            mac,
            sink,
            frames,
            reader,
        })
    }

    pub(super) async fn send(&mut self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.sink.send(Message::Binary(Bytes::from(frame))).await?;
        Ok(())
    }

    /// The first frame `pick` accepts, or None at `deadline`.
    pub(super) async fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        timeout_at(deadline.into(), async {
            loop {
                let frame = self.frames.recv().await?;
                if let Some(t) = pick(&frame) {
                    return Some(t);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.reader.abort();
    }
}

/// Connects every VM (bounded concurrency); returns them by index, None where it failed.
pub(super) async fn connect_all(args: &Args, errors: &Arc<Errors>) -> (Vec<Option<Vm>>, f64) {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        let (args, sem, errors) = (args.clone(), sem.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            Vm::connect(&args, i, errors).await
        }));
    }
    let mut vms = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(vm)) => vms.push(Some(vm)),
            Ok(Err(e)) => {
                errors.push(format!("client {i}: {e:#}"));
                vms.push(None);
            }
            Err(e) => {
                errors.push(format!("client {i}: {e}"));
                vms.push(None);
            }
        }
    }
    (vms, t0.elapsed().as_secs_f64())
}
