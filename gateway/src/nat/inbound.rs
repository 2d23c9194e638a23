//! Inbound port forwards: connections and datagrams into a VM from the gateway address.

use std::net::SocketAddrV4;
use std::time::Instant;

use smoltcp::iface::SocketSet;

use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Repr, UDP_HEADER_LEN, UdpRepr};

use super::flows::{FlowId, FlowKind, InboundUdpKey, TcpKey};
use super::quiet::Quiet;
use super::{DenyReason, Nat, NatAction};

/// Gateway-side ports of inbound forward connections (the IANA dynamic range).
pub(super) const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Nat {
    /// Opens a TCP connection from the gateway address to a VM, for an inbound port
    /// forward; move data as for outbound flows once it is established. `None` when no
    /// local port is free or the LAN is at its flow limit.
    pub fn open_inbound_tcp(&mut self, now: Instant, target: SocketAddrV4) -> Option<FlowId> {
        if self.flows.len() >= self.config.max_flows {
            self.stats.denied.add(DenyReason::Limit);
            return None;
        }
        let remote = |nat: &Self, port| SocketAddrV4::new(nat.gateway_ip, port);
        let port = self.free_inbound_port(|nat, port| {
            nat.tcp_flows.contains_key(&TcpKey {
                vm: target,
                remote: remote(nat, port),
            })
        })?;
        let key = TcpKey {
            vm: target,
            remote: remote(self, port),
        };
        self.stamp(now);
        let (mut socket, storage) = self.new_tcp_socket();
        if socket
            .connect(
                self.iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(*target.ip()), target.port()),
                IpListenEndpoint {
                    addr: Some(IpAddress::Ipv4(self.gateway_ip)),
                    port,
                },
            )
            .is_err()
        {
            return None;
        }
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let flow = self.new_flow(
            now,
            *target.ip(),
            FlowKind::Tcp {
                key,
                sockets,
                handle,
                through: [0, 0],
                charged: 0,
                quiet: Quiet::new(storage),
                connecting: None,
            },
        );
        self.tcp_flows.insert(key, flow);
        self.stats.inbound_connections += 1;
        self.poll_flow(now, flow, None);
        Some(flow)
    }

    /// A datagram from `client` of a UDP forward, for `target` in the LAN. It leaves from
    /// the gateway address on a port kept for this client, so the VM's answers come back
    /// as [`NatAction::ForwardReply`].
    pub fn inbound_udp(
        &mut self,
        now: Instant,
        client: SocketAddrV4,
        target: SocketAddrV4,
        payload: &[u8],
    ) -> Option<FlowId> {
        let key = InboundUdpKey { client, target };
        let flow = match self.inbound_udp.get(&key) {
            Some(&flow) => flow,
            None => {
                if self.flows.len() >= self.config.max_flows {
                    self.stats.denied.add(DenyReason::Limit);
                    return None;
                }
                let gateway_port =
                    self.free_inbound_port(|nat, port| nat.inbound_udp_ports.contains_key(&port))?;
                let flow = self.new_flow(
                    now,
                    *target.ip(),
                    FlowKind::InboundUdp { key, gateway_port },
                );
                self.inbound_udp.insert(key, flow);
                self.inbound_udp_ports.insert(gateway_port, flow);
                flow
            }
        };
        let entry = self.flows.get_mut(&flow)?;
        entry.last_active = now;
        let FlowKind::InboundUdp { gateway_port, .. } = entry.kind else {
            return None;
        };
        self.stats.bytes_in += payload.len() as u64;
        self.push_udp(
            SocketAddrV4::new(self.gateway_ip, gateway_port),
            target,
            payload,
        );
        Some(flow)
    }

    /// The next gateway-side port of [`INBOUND_PORTS`], round robin, that `taken` does not
    /// claim; `None` after a whole round.
    fn free_inbound_port(&mut self, taken: impl Fn(&Self, u16) -> bool) -> Option<u16> {
        for _ in 0..INBOUND_PORTS.len() {
            let port = self.next_inbound_port;
            self.next_inbound_port = if port >= *INBOUND_PORTS.end() {
                *INBOUND_PORTS.start()
            } else {
                port + 1
            };
            if !taken(self, port) {
                return Some(port);
            }
        }
        None
    }

    /// UDP from a VM to the gateway address: an answer to a UDP forward's client, or
    /// (with host loopback) a datagram for the host. `false` when neither.
    pub(crate) fn handle_udp_to_gateway(
        &mut self,
        now: Instant,
        ip: &Ipv4Repr,
        udp: &UdpRepr,
        datagram: &[u8],
    ) -> bool {
        if let Some(&flow) = self.inbound_udp_ports.get(&udp.dst_port)
            && let Some(entry) = self.flows.get_mut(&flow)
            && let FlowKind::InboundUdp { key, .. } = entry.kind
            && key.target == SocketAddrV4::new(ip.src_addr, udp.src_port)
        {
            entry.last_active = now;
            let payload = &datagram[UDP_HEADER_LEN.min(datagram.len())..];
            self.stats.bytes_out += payload.len() as u64;
            self.actions.push_back(NatAction::ForwardReply {
                flow,
                client: key.client,
                payload: payload.to_vec(),
            });
            return true;
        }
        if self.config.host_loopback {
            self.handle_udp(now, ip, udp, datagram);
            return true;
        }
        false
    }
}
