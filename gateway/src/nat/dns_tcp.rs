//! DNS over TCP to the DNS address: smoltcp terminates the connections, whole messages go
//! to the DNS proxy and its answers come back on the same connection.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use super::Nat;

/// A DNS message over TCP is at most 65535 bytes plus its length prefix.
const DNS_TCP_BUFFER: usize = 65_537;

pub(super) const DNS_PORT: u16 = 53;

const DNS_TCP_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) struct DnsConn {
    conn: u64,
    last_active: Instant,
}

impl Nat {
    /// A DNS query that arrived over TCP, for the DNS proxy.
    pub(crate) fn poll_dns_query(&mut self) -> Option<(dns::ClientId, Vec<u8>)> {
        self.dns_queries.pop_front()
    }

    /// An answer for a TCP client; dropped if its connection is gone.
    pub(crate) fn dns_tcp_answer(&mut self, now: Instant, conn: u64, answer: &[u8]) {
        let Some((&handle, _)) = self.dns_conns.iter().find(|(_, c)| c.conn == conn) else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let socket = self.dns_sockets.get_mut::<tcp::Socket>(handle);
        // All or nothing: a partial message would corrupt the stream.
        if socket.send_capacity() - socket.send_queue() >= answer.len() + 2 {
            let _ = socket.send_slice(&len.to_be_bytes());
            let _ = socket.send_slice(answer);
        }
        self.poll_dns(now, None);
    }

    pub(super) fn ensure_dns_listener(&mut self) {
        if self.dns_listener.is_some()
            || self.dns_conns.len() >= self.config.max_dns_tcp_connections
        {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; DNS_TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; DNS_TCP_BUFFER]),
        );
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.dns_ip)),
                port: DNS_PORT,
            })
            .is_ok()
        {
            self.dns_listener = Some(self.dns_sockets.add(socket));
        }
    }

    pub(super) fn after_dns_tcp(&mut self, now: Instant) {
        if let Some(listener) = self.dns_listener
            && self.dns_sockets.get::<tcp::Socket>(listener).state() != tcp::State::Listen
        {
            self.dns_listener = None;
            let conn = self.next_dns_conn;
            self.next_dns_conn += 1;
            self.dns_conns.insert(
                listener,
                DnsConn {
                    conn,
                    last_active: now,
                },
            );
            self.ensure_dns_listener();
        }
        let handles: Vec<SocketHandle> = self.dns_conns.keys().copied().collect();
        for handle in handles {
            self.serve_dns_conn(now, handle);
        }
        self.stats.dns_tcp_connections = self.dns_conns.len();
    }

    pub(super) fn serve_dns_conn(&mut self, now: Instant, handle: SocketHandle) {
        let Some(conn) = self.dns_conns.get_mut(&handle) else {
            return;
        };
        let socket = self.dns_sockets.get_mut::<tcp::Socket>(handle);
        let client = match socket.remote_endpoint() {
            Some(IpEndpoint {
                addr: IpAddress::Ipv4(ip),
                port,
            }) => SocketAddrV4::new(ip, port),
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        // Whole messages only: peek the length, then take the message.
        loop {
            let mut prefix = [0u8; 2];
            if socket.peek_slice(&mut prefix) != Ok(2) {
                break;
            }
            let len = usize::from(u16::from_be_bytes(prefix));
            if socket.recv_queue() < 2 + len {
                break;
            }
            let mut message = vec![0; 2 + len];
            if socket.recv_slice(&mut message) != Ok(2 + len) {
                break;
            }
            conn.last_active = now;
            message.drain(..2);
            self.dns_queries
                .push_back((dns::ClientId::tcp(client, conn.conn), message));
        }
        let closed = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
        if !closed && !socket.may_recv() && socket.recv_queue() == 0 && socket.may_send() {
            // The VM is done asking: close our side once the answers are out.
            socket.close();
        }
        if closed || now.saturating_duration_since(conn.last_active) > DNS_TCP_IDLE {
            socket.abort();
            self.poll_dns(now, None);
            self.dns_sockets.remove(handle);
            self.dns_conns.remove(&handle);
            self.ensure_dns_listener();
        }
    }
}
