//! TCP flows: a reader and a writer task per host connection, with credits so that host
//! data waits in the kernel, not in the relay, while the VM is slow (see `nat/mod.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use gateway::{FlowId, TcpStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

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

    pub(super) fn spawn_tcp(&self, flow: FlowId, stream: TcpStream) -> TcpFlow {
        let (mut read_half, mut write_half) = stream.into_split();
        let credits = Arc::new(Semaphore::new(HOST_READ_BUDGET));
        let (to_host, mut from_gateway) = mpsc::channel::<ToHost>(WRITER_QUEUE);
        let events = self.events.clone();
        let reader_credits = credits.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let reader = tokio::spawn(async move {
            let _guard = guard;
            let mut buffer = BytesMut::new();
            loop {
                let Ok(permit) = reader_credits.acquire_many(CHUNK as u32).await else {
                    return;
                };
                let budget = permit.num_permits();
                permit.forget();
                buffer.reserve(budget);
                let mut limited = (&mut read_half).take(budget as u64);
                let event = match limited.read_buf(&mut buffer).await {
                    Ok(0) => HostEvent::Eof(flow),
                    Ok(n) => {
                        reader_credits.add_permits(budget - n);
                        HostEvent::Data(flow, buffer.split().freeze())
                    }
                    Err(_) => HostEvent::Failed(flow),
                };
                let last = !matches!(event, HostEvent::Data(..));
                if events.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        let events = self.events.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let writer = tokio::spawn(async move {
            let _guard = guard;
            while let Some(message) = from_gateway.recv().await {
                match message {
                    ToHost::Data(data) => {
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
                        // Keep the half alive: dropping it would not reset, but the
                        // reader may still be receiving.
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
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
