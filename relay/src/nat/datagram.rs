//! UDP flows and pings: one host socket per VM address:port (UDP) or one ICMP socket per
//! LAN (ping), each read by one task that hands datagrams to the gateway task.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::FlowId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{HostEvent, HostFlow, NatHost, PING_MEMORY, TaskGauge, TaskGuard};

/// Datagrams a UDP flow holds while its socket's send buffer is full; beyond, UDP drops.
const UDP_BACKLOG: usize = 64;

/// Sends one datagram now with a plain non-blocking `sendto`.
///
/// Not tokio's `try_send_to`: that refuses (`WouldBlock`) until the reactor has seen the
/// socket writable, which a socket opened for a flow's first datagram (or a LAN's first
/// ping) never has yet, so that datagram was lost: the first ping of 20 went unanswered.
fn send_now(socket: &UdpSocket, payload: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(payload, &to.into())
}

/// A UDP flow's writer task: its queue of (destination, datagram), and its handle.
type Writer = (mpsc::Sender<(SocketAddr, Vec<u8>)>, AbortHandle);

/// The host socket of one UDP flow and its tasks.
pub(super) struct UdpFlow {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
    /// Set once the send buffer was full: from then on datagrams go through this writer
    /// task, in order, and wait for room instead of being dropped.
    writer: Option<Writer>,
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some((_, writer)) = &self.writer {
            writer.abort();
        }
    }
}

impl UdpFlow {
    /// Sends `payload` to `to`, or holds it (bounded) until the socket has room.
    pub(super) fn send(&mut self, tasks: &Arc<TaskGauge>, to: SocketAddr, payload: Vec<u8>) {
        if let Some((queue, _)) = &self.writer {
            // A full backlog drops, as a full NIC ring would.
            let _ = queue.try_send((to, payload));
            return;
        }
        match send_now(&self.socket, &payload, to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let (queue, mut backlog) = mpsc::channel(UDP_BACKLOG);
                let _ = queue.try_send((to, payload));
                let socket = self.socket.clone();
                let guard = TaskGuard::new(tasks);
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    while let Some((to, payload)) = backlog.recv().await {
                        // `send_to` waits for room; an error loses only this datagram.
                        let _ = socket.send_to(&payload, to).await;
                    }
                });
                self.writer = Some((queue, task.abort_handle()));
            }
            // Unreachable networks and the like: UDP's loss, reported by nobody.
            Err(_) | Ok(_) => {}
        }
    }
}

/// How the relay can send pings, found once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingMode {
    /// Unprivileged ICMP datagram sockets (`net.ipv4.ping_group_range`).
    Datagram,
    /// Raw sockets (root or CAP_NET_RAW).
    Raw,
    Unavailable,
}

impl PingMode {
    /// Tries an ICMP datagram socket, then a raw one.
    pub(crate) fn detect() -> PingMode {
        if icmp_socket(socket2::Type::DGRAM).is_ok() {
            PingMode::Datagram
        } else if icmp_socket(socket2::Type::RAW).is_ok() {
            PingMode::Raw
        } else {
            PingMode::Unavailable
        }
    }
}

fn icmp_socket(kind: socket2::Type) -> io::Result<socket2::Socket> {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, kind, Some(socket2::Protocol::ICMPV4))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

pub(super) struct PingSocket {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
    /// Raw sockets see every reply on the host: ours carry this identifier.
    ident: u16,
    next_seq: u16,
    pub(super) requests: HashMap<u16, (FlowId, u16)>,
    order: VecDeque<u16>,
}

impl Drop for PingSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NatHost {
    /// A task that reads `socket` until aborted and passes what `to_event` makes of each
    /// datagram to the gateway task.
    fn spawn_reader(
        &self,
        socket: Arc<UdpSocket>,
        to_event: impl Fn(&[u8], SocketAddrV4) -> Option<HostEvent> + Send + 'static,
    ) -> AbortHandle {
        let events = self.events.clone();
        let guard = TaskGuard::new(&self.shared.tasks);
        let task = tokio::spawn(async move {
            let _guard = guard;
            loop {
                // The datagram lands on the worker's stack and leaves as an exact copy:
                // an idle flow's task holds no 64 KiB buffer (it was most of a UDP flow's
                // memory).
                let received = match socket.readable().await {
                    Ok(()) => {
                        let mut buffer = [0u8; 65536];
                        match socket.try_recv_from(&mut buffer) {
                            Ok((n, SocketAddr::V4(from))) => Ok(to_event(&buffer[..n], from)),
                            Ok(_) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                let event = match received {
                    Ok(Some(event)) => event,
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => {
                        // A persistent error must not spin a core.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        });
        task.abort_handle()
    }

    pub(super) fn open_udp(&self, flow: FlowId) -> io::Result<HostFlow> {
        let std_socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let reader = self.spawn_reader(socket.clone(), move |datagram, from| {
            Some(HostEvent::Datagram(
                flow,
                from,
                Bytes::copy_from_slice(datagram),
            ))
        });
        Ok(HostFlow::Udp(UdpFlow {
            socket,
            reader,
            writer: None,
        }))
    }

    pub(super) fn ping(&mut self, flow: FlowId, to: Ipv4Addr, seq: u16, payload: &[u8]) {
        if self.ping.is_none() {
            match self.open_ping() {
                Ok(ping) => self.ping = Some(ping),
                Err(e) => {
                    tracing::debug!(lan = %self.lan, "NAT: no ping socket: {e}");
                    return;
                }
            }
        }
        let Some(ping) = self.ping.as_mut() else {
            return;
        };
        self.ping_flows.insert(flow);
        let host_seq = ping.next_seq;
        ping.next_seq = ping.next_seq.wrapping_add(1);
        if let Some(old) = ping
            .requests
            .insert(host_seq, (flow, seq))
            .map(|_| host_seq)
        {
            ping.order.retain(|&s| s != old);
        }
        ping.order.push_back(host_seq);
        while ping.order.len() > PING_MEMORY {
            if let Some(oldest) = ping.order.pop_front() {
                ping.requests.remove(&oldest);
            }
        }
        let request = echo_request(ping.ident, host_seq, payload);
        // A full send buffer loses this echo request, as it would on the wire.
        let _ = send_now(&ping.socket, &request, SocketAddr::from((to, 0)));
    }

    fn open_ping(&self) -> io::Result<PingSocket> {
        let (socket, raw) = match self.shared.ping_mode {
            PingMode::Datagram => (icmp_socket(socket2::Type::DGRAM)?, false),
            PingMode::Raw => (icmp_socket(socket2::Type::RAW)?, true),
            PingMode::Unavailable => {
                return Err(io::Error::other("ping is unavailable on this host"));
            }
        };
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(socket))?);
        // Datagram sockets get their identifier from the kernel, which also filters
        // replies; raw sockets filter by ours.
        let ident = (std::process::id() as u16) ^ (rand_u16());
        let reader = self.spawn_reader(socket.clone(), move |mut packet, _from| {
            if raw {
                // Raw sockets include the IPv4 header.
                let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
                if header < 20 || packet.len() < header {
                    return None;
                }
                packet = &packet[header..];
            }
            let (reply_ident, host_seq, data) = parse_echo_reply(packet)?;
            if raw && reply_ident != ident {
                return None;
            }
            Some(HostEvent::PingReply {
                host_seq,
                data: Bytes::copy_from_slice(data),
            })
        });
        Ok(PingSocket {
            socket,
            reader,
            ident,
            next_seq: 0,
            requests: HashMap::new(),
            order: VecDeque::new(),
        })
    }
}

fn echo_request(ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};
    let request = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: seq,
        data: payload,
    };
    let mut buffer = vec![0; request.buffer_len()];
    request.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buffer[..]),
        &ChecksumCapabilities::default(),
    );
    buffer
}

fn parse_echo_reply(packet: &[u8]) -> Option<(u16, u16, &[u8])> {
    use smoltcp::wire::{Icmpv4Message, Icmpv4Packet};
    let icmp = Icmpv4Packet::new_checked(packet).ok()?;
    if icmp.msg_type() != Icmpv4Message::EchoReply {
        return None;
    }
    Some((icmp.echo_ident(), icmp.echo_seq_no(), icmp.data()))
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}
