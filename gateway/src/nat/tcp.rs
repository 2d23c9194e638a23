//! TCP flows: smoltcp terminates the VM's connection, the driver's host socket carries the
//! other side. The SYN-ACK waits for the host connect.

use std::net::SocketAddrV4;
use std::time::Instant;

use smoltcp::iface::SocketSet;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    Icmpv4DstUnreachable, IpAddress, IpListenEndpoint, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
};

use super::budget::{Storage, touched};
use super::dns_tcp::DNS_PORT;
use super::flows::{FlowId, FlowKind, TcpKey};
use super::quiet::Quiet;
use super::{Nat, NatAction, NatProtocol};
use crate::emit::OutPacket;

/// Why a host connect failed; decides what the VM is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// RST to the VM.
    Refused,
    /// ICMP host unreachable to the VM.
    Unreachable,
    /// ICMP host unreachable to the VM.
    TimedOut,
}

/// A TCP flow's state, for the driver to move data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpStatus {
    pub flow: FlowId,
    /// Bytes from the VM waiting for [`Nat::tcp_recv`].
    pub readable: usize,
    /// Bytes [`Nat::tcp_send`] would take now.
    pub send_space: usize,
    /// The VM closed its side and everything it sent was taken: shut the host side's write.
    pub vm_finished: bool,
}

impl Nat {
    /// TCP flows whose state changed since they were last reported.
    pub fn poll_tcp_status(&mut self) -> Option<TcpStatus> {
        while let Some(flow) = self.status_queue.pop_front() {
            let Some(entry) = self.flows.get_mut(&flow) else {
                continue;
            };
            entry.dirty = false;
            if let Some(status) = self.tcp_status(flow) {
                return Some(status);
            }
        }
        None
    }

    /// The current state of a TCP flow (`None` when it is gone or still connecting).
    pub fn tcp_status(&mut self, flow: FlowId) -> Option<TcpStatus> {
        if !self.tcp_established(flow) {
            return None;
        }
        let socket = self.socket(flow)?;
        let readable = socket.recv_queue();
        let send_space = if socket.may_send() {
            socket.send_capacity() - socket.send_queue()
        } else {
            0
        };
        Some(TcpStatus {
            flow,
            readable,
            send_space,
            vm_finished: readable == 0 && !socket.may_recv() && socket_past_handshake(socket),
        })
    }

    /// A TCP segment from a VM, to an outside address, to the DNS address, or (with
    /// host loopback) to the gateway address. `packet` is the whole IP packet.
    /// `false`: the segment was malformed.
    pub(crate) fn handle_tcp(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        packet: &[u8],
        segment_bytes: &[u8],
    ) -> bool {
        let caps = ChecksumCapabilities::default();
        let src = IpAddress::Ipv4(ip.src_addr);
        let dst = IpAddress::Ipv4(ip.dst_addr);
        let Ok(tcp_packet) = TcpPacket::new_checked(segment_bytes) else {
            return false;
        };
        let Ok(segment) = TcpRepr::parse(&tcp_packet, &src, &dst, &caps) else {
            return false;
        };
        let remote = SocketAddrV4::new(ip.dst_addr, segment.dst_port);
        let vm = SocketAddrV4::new(ip.src_addr, segment.src_port);
        if ip.dst_addr == self.dns_ip && segment.dst_port == DNS_PORT {
            self.poll_dns(now, Some(packet));
            self.after_dns_tcp(now);
            return true;
        }
        let key = TcpKey { vm, remote };
        if let Some(&flow) = self.tcp_flows.get(&key) {
            if let Some(entry) = self.flows.get_mut(&flow) {
                entry.last_active = now;
                if let FlowKind::Tcp { quiet, .. } = &mut entry.kind {
                    quiet.saw_from_vm(segment.seq_number + segment.segment_len());
                }
            }
            self.poll_flow(now, flow, Some(packet));
            self.mark_dirty(flow);
            self.reap_tcp(flow);
            return true;
        }
        let is_syn = segment.control == TcpControl::Syn && segment.ack_number.is_none();
        if !is_syn {
            // Not a flow we know: smoltcp answers with RST (RST itself is ignored).
            self.feed_unknown(now, packet);
            return true;
        }
        self.open_outbound_tcp(now, ip, &segment, packet, segment_bytes)
    }

    /// A SYN that starts a flow: policy and limits (a RST when refused), then a listening
    /// socket takes the SYN and holds its SYN-ACK back until the host connect succeeds.
    /// `false`: smoltcp refused the SYN.
    fn open_outbound_tcp(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        segment: &TcpRepr,
        packet: &[u8],
        segment_bytes: &[u8],
    ) -> bool {
        let remote = SocketAddrV4::new(ip.dst_addr, segment.dst_port);
        let vm = SocketAddrV4::new(ip.src_addr, segment.src_port);
        let key = TcpKey { vm, remote };
        let to = match self.outbound_target(NatProtocol::Tcp, remote) {
            Ok(to) => to,
            Err(reason) => {
                self.stats.denied.add(reason);
                self.push_reset(ip, segment);
                return true;
            }
        };
        if let Err(reason) = self.admit(now, ip.src_addr, NatProtocol::Tcp) {
            self.stats.denied.add(reason);
            self.push_reset(ip, segment);
            return true;
        }
        let (mut socket, storage) = self.new_tcp_socket();
        socket.pause_synack(true);
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(remote.ip().to_owned())),
                port: remote.port(),
            })
            .is_err()
        {
            return false;
        }
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let flow = self.new_flow(
            now,
            ip.src_addr,
            FlowKind::Tcp {
                key,
                sockets,
                handle,
                through: [0, 0],
                charged: 0,
                quiet: Quiet::new(storage),
                connecting: Some((*ip, quote(segment_bytes))),
            },
        );
        self.tcp_flows.insert(key, flow);
        self.poll_flow(now, flow, Some(packet));
        if self.socket(flow).map(tcp::Socket::state) != Some(tcp::State::SynReceived) {
            // smoltcp refused the SYN (bad options): forget the flow.
            self.remove_flow(flow, false);
            return false;
        }
        self.actions
            .push_back(NatAction::TcpConnect { flow, vm, to });
        true
    }

    /// The host connect of `flow` succeeded: the VM gets its SYN-ACK. `false` when the flow
    /// is gone already (drop the connection).
    pub fn handle_tcp_connected(&mut self, now: Instant, flow: FlowId) -> bool {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return false;
        };
        let FlowKind::Tcp {
            sockets,
            handle,
            connecting,
            ..
        } = &mut entry.kind
        else {
            return false;
        };
        *connecting = None;
        entry.last_active = now;
        sockets.get_mut::<tcp::Socket>(*handle).pause_synack(false);
        self.poll_flow(now, flow, None);
        self.mark_dirty(flow);
        true
    }

    /// The host connect of `flow` failed: RST or ICMP unreachable to the VM.
    pub fn handle_tcp_connect_failed(&mut self, now: Instant, flow: FlowId, why: ConnectFailure) {
        let Some(entry) = self.flows.get(&flow) else {
            return;
        };
        let FlowKind::Tcp {
            connecting: Some(syn),
            ..
        } = &entry.kind
        else {
            return;
        };
        self.stats.connect_failed += 1;
        match why {
            ConnectFailure::Refused => {
                // Abort in SYN-RECEIVED sends the RST (RFC 9293 3.10.7.4).
                if let Some(socket) = self.socket_mut(flow) {
                    socket.abort();
                }
                self.poll_flow(now, flow, None);
            }
            ConnectFailure::Unreachable | ConnectFailure::TimedOut => {
                let (ip, quoted) = *syn;
                self.push_unreachable(&ip, &quoted, Icmpv4DstUnreachable::HostUnreachable);
            }
        }
        self.remove_flow(flow, false);
    }

    /// Takes up to `max` bytes the VM sent on `flow` (for the host socket).
    pub fn tcp_recv(&mut self, now: Instant, flow: FlowId, max: usize) -> Vec<u8> {
        if !self.tcp_established(flow) {
            return Vec::new();
        }
        let Some(socket) = self.socket_mut(flow) else {
            return Vec::new();
        };
        let mut data = Vec::new();
        while data.len() < max {
            let taken = socket.recv(|buffer| {
                let n = buffer.len().min(max - data.len());
                data.extend_from_slice(&buffer[..n]);
                (n, n)
            });
            match taken {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        if !data.is_empty() {
            self.stats.bytes_out += data.len() as u64;
            self.recharge(flow, [data.len() as u64, 0]);
            self.touch(flow, now);
            // The window opened: tell the VM.
            self.poll_flow(now, flow, None);
        }
        data
    }

    /// Queues host data for the VM; returns how much fit.
    pub fn tcp_send(&mut self, now: Instant, flow: FlowId, data: &[u8]) -> usize {
        if !self.tcp_established(flow) {
            return 0;
        }
        let Some(socket) = self.socket_mut(flow) else {
            return 0;
        };
        let sent = socket.send_slice(data).unwrap_or(0);
        if sent > 0 {
            self.stats.bytes_in += sent as u64;
            self.recharge(flow, [0, sent as u64]);
            self.touch(flow, now);
            self.poll_flow(now, flow, None);
        }
        sent
    }

    /// The host closed its side: FIN to the VM after what is queued.
    pub fn tcp_host_eof(&mut self, now: Instant, flow: FlowId) {
        if self.tcp_established(flow)
            && let Some(socket) = self.socket_mut(flow)
        {
            socket.close();
            self.poll_flow(now, flow, None);
            self.reap_tcp(flow);
        }
    }

    /// The host connection failed: RST to the VM, flow removed.
    pub fn tcp_abort(&mut self, now: Instant, flow: FlowId) {
        if self.tcp_established(flow)
            && let Some(socket) = self.socket_mut(flow)
        {
            socket.abort();
            self.poll_flow(now, flow, None);
            self.remove_flow(flow, true);
        }
    }

    /// A TCP flow past its host connect.
    pub(super) fn tcp_established(&self, flow: FlowId) -> bool {
        matches!(
            self.flows.get(&flow).map(|f| &f.kind),
            Some(FlowKind::Tcp {
                connecting: None,
                ..
            })
        )
    }

    /// Removes a TCP flow whose connection is over (both sides closed, or reset).
    pub(super) fn reap_tcp(&mut self, flow: FlowId) {
        let Some(state) = self.socket(flow).map(tcp::Socket::state) else {
            return;
        };
        // TIME-WAIT protects nothing here: the host side has its own.
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            self.remove_flow(flow, true);
        }
    }

    /// A socket with buffers sized by the budget (see `budget`), and where their bytes are.
    pub(super) fn new_tcp_socket(&self) -> (tcp::Socket<'static>, [Storage; 2]) {
        let budget = &self.config.buffer_budget;
        let rx = budget.size_for(self.config.tcp_rx_buffer);
        let tx = budget.size_for(self.config.tcp_tx_buffer);
        // Zeroed allocations: pages the flow never fills are never touched, so an idle
        // flow costs the pages its few bytes went through, not the whole capacity.
        let (rx, tx) = (vec![0; rx], vec![0; tx]);
        let storage = [Storage::of(&rx), Storage::of(&tx)];
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // We forward what we get at once; delaying small writes only adds latency.
        socket.set_nagle_enabled(false);
        let vm_timeout = smoltcp::time::Duration::from_micros(
            u64::try_from(self.config.tcp_vm_timeout.as_micros()).unwrap_or(u64::MAX),
        );
        socket.set_timeout(Some(vm_timeout));
        // smoltcp aborts `vm_timeout` after the VM's last packet, and probes `keep_alive`
        // after its own: with both equal, a connection whose VM spoke last (the NAT's ACK
        // followed) was reset just before its first probe. A third of it lets a live VM
        // answer twice before the timeout, and a dead one still goes at `vm_timeout`.
        socket.set_keep_alive(Some(vm_timeout / 3));
        socket.set_congestion_control(self.config.tcp_congestion.smoltcp());
        (socket, storage)
    }

    /// Counts `bytes` more through `flow`'s buffers (from the VM, for the VM) and charges
    /// the budget for the pages they can have touched. Charges only grow while the flow
    /// lives: touched pages stay touched.
    pub(super) fn recharge(&mut self, flow: FlowId, bytes: [u64; 2]) {
        let Some(FlowKind::Tcp {
            sockets,
            handle,
            through,
            charged,
            ..
        }) = self.flows.get_mut(&flow).map(|f| &mut f.kind)
        else {
            return;
        };
        through[0] += bytes[0];
        through[1] += bytes[1];
        let socket = sockets.get::<tcp::Socket>(*handle);
        let now = touched(socket.recv_capacity(), through[0])
            + touched(socket.send_capacity(), through[1]);
        if now > *charged {
            self.config.buffer_budget.charge(now - *charged);
            self.stats.buffer_bytes += now - *charged;
            *charged = now;
        }
    }

    fn push_reset(&mut self, ip: &Ipv4Repr, segment: &TcpRepr) {
        if segment.control != TcpControl::Rst {
            self.push(&OutPacket::reset(ip, segment));
        }
    }
}

fn socket_past_handshake(socket: &tcp::Socket) -> bool {
    !matches!(
        socket.state(),
        tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

/// What an ICMP error quotes of the offending packet's payload.
fn quote(payload: &[u8]) -> [u8; 8] {
    let mut quoted = [0; 8];
    let n = payload.len().min(8);
    quoted[..n].copy_from_slice(&payload[..n]);
    quoted
}
