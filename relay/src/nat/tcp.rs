//! TCP flows: a reader and a writer task per host connection, with credits so that host
//! data waits in the kernel, not in the relay, while the VM is slow (see `nat/mod.rs`).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway::{FlowId, TcpStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use super::pacing::{PACED_CHUNK, Pacer};
use super::{CHUNK, HOST_READ_BUDGET, HostEvent, HostFlow, NatHost, TaskGuard, WRITER_QUEUE};

pub(super) enum ToHost {
    Data(Bytes),
    Shutdown,
}

pub(super) struct TcpFlow {
    pub(super) to_host: mpsc::Sender<ToHost>,
    pub(super) credits: Arc<Semaphore>,
    /// Host data smoltcp's send buffer had no room for yet.
    pub(super) pending: VecDeque<Bytes>,
    pub(super) host_eof: bool,
    pub(super) eof_passed: bool,
    /// Chunks sent to the writer and not yet written.
    pub(super) chunks_at_writer: usize,
    pub(super) vm_fin_passed: bool,
    pub(super) tasks: [AbortHandle; 2],
}

impl NatHost {
    pub(super) fn move_data(&mut self, nat: &mut gateway::Nat, status: TcpStatus) {
        let Some(HostFlow::Tcp(tcp)) = self.flows.get_mut(&status.flow) else {
            return;
        };
        let now = Instant::now();
        let flow = status.flow;
        let mut readable = status.readable;
        while readable > 0 {
            if tcp.chunks_at_writer >= WRITER_QUEUE {
                // The writer will say Drained when there is room.
                break;
            }
            let Ok(permit) = tcp.to_host.try_reserve() else {
                break;
            };
            tcp.chunks_at_writer += 1;
            let data = nat.tcp_recv(now, flow, CHUNK);
            if data.is_empty() {
                break;
            }
            readable = readable.saturating_sub(data.len());
            permit.send(ToHost::Data(Bytes::from(data)));
        }
        let vm_finished = nat.tcp_status(flow).is_some_and(|s| s.vm_finished);
        if vm_finished
            && !tcp.vm_fin_passed
            && let Ok(permit) = tcp.to_host.try_reserve()
        {
            tcp.vm_fin_passed = true;
            permit.send(ToHost::Shutdown);
        }
        if status.send_space > 0 {
            push_to_vm(nat, now, flow, tcp);
        }
    }

    /// Starts the reader and the writer of a host connection for the VM at `vm`.
    pub(super) fn spawn_tcp(&mut self, flow: FlowId, stream: TcpStream, vm: Ipv4Addr) -> TcpFlow {
        let (read_half, write_half) = stream.into_split();
        let credits = Arc::new(Semaphore::new(HOST_READ_BUDGET));
        let (to_host, from_gateway) = mpsc::channel::<ToHost>(WRITER_QUEUE);
        let pacer = self.pacer(vm);
        let reader = tokio::spawn(read_host(
            flow,
            read_half,
            credits.clone(),
            self.events.clone(),
            pacer.clone(),
            TaskGuard::new(&self.shared.tasks),
        ));
        let writer = tokio::spawn(write_host(
            flow,
            write_half,
            from_gateway,
            self.events.clone(),
            pacer,
            TaskGuard::new(&self.shared.tasks),
        ));
        TcpFlow {
            to_host,
            credits,
            pending: VecDeque::new(),
            host_eof: false,
            eof_passed: false,
            chunks_at_writer: 0,
            vm_fin_passed: false,
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }
    }
}

/// Moves waiting host data into smoltcp, returns the credits, and passes the host's EOF
/// once everything before it is in.
pub(super) fn push_to_vm(nat: &mut gateway::Nat, now: Instant, flow: FlowId, tcp: &mut TcpFlow) {
    while let Some(front) = tcp.pending.front_mut() {
        let taken = nat.tcp_send(now, flow, front);
        tcp.credits.add_permits(taken);
        front.advance(taken);
        if front.is_empty() {
            tcp.pending.pop_front();
        } else {
            return;
        }
    }
    if tcp.host_eof && !tcp.eof_passed {
        tcp.eof_passed = true;
        nat.tcp_host_eof(now, flow);
    }
}

/// Reads up to this much leave as an exact copy; larger ones keep their chunk.
const SMALL_READ: usize = 16 * 1024;

/// Reads the host side of a flow: credits first (so at most [`HOST_READ_BUDGET`] bytes wait
/// outside smoltcp), then the VM's bandwidth budget when it has one.
///
/// The read buffer is taken only once the socket is readable, and let go after a read
/// that emptied the socket: an idle flow holds none (a 64 KiB chunk per idle reader was
/// most of an idle flow's memory), while a bulk transfer, whose reads fill their budget,
/// keeps reclaiming the same allocation once the gateway task has taken the data.
async fn read_host(
    flow: FlowId,
    read_half: OwnedReadHalf,
    credits: Arc<Semaphore>,
    events: mpsc::Sender<HostEvent>,
    pacer: Option<Arc<Pacer>>,
    _guard: TaskGuard,
) {
    let chunk = if pacer.is_some() { PACED_CHUNK } else { CHUNK };
    let mut buffer = BytesMut::new();
    loop {
        let Ok(permit) = credits.acquire_many(chunk as u32).await else {
            return;
        };
        let budget = permit.num_permits();
        permit.forget();
        let result = match read_half.readable().await {
            Ok(()) => {
                buffer.reserve(budget);
                // `limit`: never more than the credits taken, whatever the capacity.
                read_half.try_read_buf(&mut (&mut buffer).limit(budget))
            }
            Err(e) => Err(e),
        };
        let event = match result {
            Ok(0) => HostEvent::Eof(flow),
            Ok(n) => {
                credits.add_permits(budget - n);
                if let Some(pacer) = &pacer {
                    pacer.down(n).await;
                }
                let data = if n <= SMALL_READ {
                    let data = Bytes::copy_from_slice(&buffer);
                    buffer.clear();
                    data
                } else {
                    buffer.split().freeze()
                };
                if n < budget {
                    // The socket is empty for now: hold nothing while it stays so.
                    buffer = BytesMut::new();
                }
                HostEvent::Data(flow, data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // A spurious wake-up: give the credits and the buffer back, wait again.
                credits.add_permits(budget);
                buffer = BytesMut::new();
                continue;
            }
            Err(_) => HostEvent::Failed(flow),
        };
        let last = !matches!(event, HostEvent::Data(..));
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}

/// Writes what the VM sent to the host side of a flow, within the VM's bandwidth budget.
async fn write_host(
    flow: FlowId,
    mut write_half: OwnedWriteHalf,
    mut from_gateway: mpsc::Receiver<ToHost>,
    events: mpsc::Sender<HostEvent>,
    pacer: Option<Arc<Pacer>>,
    _guard: TaskGuard,
) {
    while let Some(message) = from_gateway.recv().await {
        match message {
            ToHost::Data(data) => {
                if let Some(pacer) = &pacer {
                    pacer.up(data.len()).await;
                }
                if write_half.write_all(&data).await.is_err() {
                    let _ = events.send(HostEvent::Failed(flow)).await;
                    return;
                }
                if events.send(HostEvent::Drained(flow)).await.is_err() {
                    return;
                }
            }
            ToHost::Shutdown => {
                let _ = write_half.shutdown().await;
                // Keep the half alive: dropping it would not reset, but the reader may
                // still be receiving.
                std::future::pending::<()>().await;
            }
        }
    }
}
