#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! The sans-IO router port of one v86-relay LAN.
//!
//! The switch delivers the gateway port's frames (broadcasts and unicast to the gateway
//! MAC) to [`Gateway::handle_frame`]; the gateway answers ARP and ping for its two
//! addresses itself, hands DHCP to [`dhcp::DhcpServer`] and DNS to [`dns::DnsProxy`], and
//! queues the answers as Ethernet frames. It never reads the clock, opens sockets or
//! spawns tasks, like `quinn-proto`. Every header is parsed and emitted with
//! `smoltcp::wire`.
//!
//! # Driving it
//!
//! ```text
//! GatewayConfig::default() / validate()?       10.0.2.0/24, gw 10.0.2.2 52:54:00:12:34:56, DNS 10.0.2.3
//! Gateway::new(config, dhcp_server, dns_proxy)
//!
//! handle_frame(now, &frame)                    every frame the switch gives the gateway port
//! poll_frame() -> Option<Vec<u8>>              frames to put on the LAN (from gateway_mac)
//! poll_dns_upstream() -> Option<UpstreamQuery> resolve it (hickory-resolver), then
//! handle_dns_upstream(now, id, result)         answers become frames for poll_frame
//! poll_timeout() / handle_timeout(now)         DHCP expiries, DNS upstream timeouts and cache
//! poll_lease_event() -> Option<LeaseEvent>     after DNS names were updated: log, count, persist
//! restore_leases(&snapshot, now, unix_secs)    DHCP restore + DNS names of restored leases
//! dhcp() / dhcp_mut() / dns() / stats() / neighbor(ip)
//! ```
//!
//! After every `handle_*` call, drain `poll_frame`, `poll_dns_upstream` and
//! `poll_lease_event`, then re-arm the timer from `poll_timeout`.
//!
//! # Behaviour
//!
//! - **Ethernet**: frames to other unicast MACs, multicast, our own source MAC and
//!   ethertypes other than ARP/IPv4 are ignored; a non-unicast source is malformed.
//! - **ARP**: requests whose target is `gateway_ip` or `dns_ip` are answered with
//!   `gateway_mac` (probes from 0.0.0.0 too). Requests for other addresses are left to the
//!   VMs. Senders teach the neighbour cache.
//! - **IPv4**: header length, checksum and total length are checked, and the total length
//!   (not the frame length: ne2k pads to 60 bytes) bounds the payload. Options are
//!   skipped. Broadcast, multicast or our own addresses as source are malformed.
//!   Packets to anything but our two addresses and broadcast go to the NAT when it is
//!   enabled ([`Gateway::enable_nat`], see [`Nat`]), and are otherwise dropped and
//!   counted in `not_routed`. Fragments from LAN hosts, to us or through the NAT, are
//!   reassembled first ([`wire::frag`]: bounded per VM and per LAN, 30 s timeout, drops
//!   counted by [`FragDrop`]); fragments to broadcast addresses are dropped. A packet with
//!   DF set and longer than the MTU, to us or through the NAT, is answered with ICMP
//!   "fragmentation needed" carrying the MTU (a VM whose own MTU is larger learns ours).
//! - **ICMP**: echo requests to either address get a reply with the same id, sequence and
//!   data. Broadcast pings and other ICMP are ignored.
//! - **DHCP**: UDP to port 67 (broadcast or our address) goes to the server; replies go
//!   from the server id, port 67 to 68, to the [`dhcp::ReplyTarget`].
//! - **DNS**: UDP to `dns_ip`:53 goes to the proxy; answers come from `dns_ip`:53. Late
//!   answers (upstream) are addressed through the neighbour cache (IP -> MAC, learned from
//!   ARP senders, IPv4 sources and leases, least recently seen evicted). With NAT on,
//!   DNS over TCP is served too (smoltcp terminates it); without, TCP to `dns_ip`:53
//!   gets a RST.
//! - **Lease names**: `Bound` with a host name publishes `host -> ip` in DNS; `Released`,
//!   `Expired`, `Declined` and `Bound` without a name withdraw it.
//! - **Emitted packets**: TTL 64, DF, correct checksums, frames padded to 60 bytes; the
//!   NAT's UDP datagrams and echo replies over the MTU go out in fragments (DF clear, one
//!   identification per datagram); the gateway's own answers over the MTU are dropped and
//!   counted (`oversized`).
//! - **Bounds**: output queue (`max_queued_frames`, tail drop), neighbour cache
//!   (`max_neighbors`), lease events ([`MAX_PENDING_LEASE_EVENTS`], oldest dropped), plus
//!   the DHCP and DNS crates' own bounds. No input panics.

// Layers, each importing only the ones above it: `wire` (IPv4 fragments), `config`, `emit`
// (every frame and packet we send is built there) and `neighbors` import nothing from the
// crate; `nat` imports `config`, `emit` and `wire`; `gateway` imports them all.
mod config;
mod emit;
mod gateway;
pub mod nat;
mod neighbors;
pub mod wire;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, GatewayConfig, MIN_MTU};
pub use emit::{MIN_FRAME_LEN, TTL};
pub use gateway::{Gateway, GatewayStats, MAX_PENDING_LEASE_EVENTS};
pub use nat::{
    BufferBudget, ConnectFailure, DenyCounts, DenyReason, EgressPolicy, FlowId, FlowInfo,
    MIN_TCP_BUFFER, Nat, NatAction, NatConfig, NatProtocol, NatStats, PolicyRule, QUIET_AFTER,
    ReleasePages, TcpCongestion, TcpStatus,
};
pub use smoltcp::wire::{EthernetAddress, Ipv4Cidr};
pub use wire::frag::{FragDrop, FragDropCounts, FragLimits, FragStats};
/// Re-exported so drivers use the same versions.
pub use {dhcp, dns, smoltcp};
