#![forbid(unsafe_code)]
//! A sans-IO DHCPv4 server with a lease pool, for one virtual LAN of v86-relay.
//!
//! The crate never reads the clock, opens sockets or spawns tasks: the driver (the gateway)
//! passes `now` in, hands over UDP payloads received on port 67, and sends back whatever
//! replies come out, like `quinn-proto`. Encoding and decoding use `dhcproto`.
//!
//! ```text
//! DhcpServer::new(config)?                       validated DhcpConfig
//! handle_message(now, frame_src, payload)        -> Result<Option<Reply>, DhcpError>
//! handle_timeout(now) / poll_timeout()           expire offers, leases, quarantines
//! poll_event()                                   -> Option<LeaseEvent> (Bound/Released/Expired/Declined/PoolExhausted)
//! leases() / lease_by_ip / lease_by_mac / lease_by_host_name
//! stats()                                        -> &DhcpStats
//! snapshot(now, unix_now_secs) / restore(&snapshot, now, unix_now_secs)
//! ```
//!
//! A [`Reply`] says where it goes ([`ReplyTarget`], RFC 2131 4.1); the driver wraps its
//! `payload` in UDP 67 -> 68, IPv4 from [`DhcpServer::server_id`], and Ethernet.
//!
//! # Behaviour worth knowing
//! - Leases are keyed by client identifier (option 61), else chaddr, so VMs sharing a MAC
//!   but sending different client ids get different addresses. They outlive the VM's
//!   connection: v86 keeps its address across reconnects without asking again, so only
//!   DHCPRELEASE or expiry frees one.
//! - A returning client gets its last address back while nobody else holds it, also after
//!   expiry (the last address of up to [`DhcpConfig::max_remembered_clients`] clients is
//!   remembered, and fresh allocations avoid remembered addresses while others are free).
//! - REQUEST in INIT-REBOOT, RENEWING or REBINDING for a free pool address we have no
//!   record of is ACKed (RFC 2131 would stay silent in INIT-REBOOT): a relay restart
//!   without a state file must not strand clients. Addresses outside the subnet or pool,
//!   reserved, quarantined or held by another client are NAKed.
//! - A REQUEST naming another server identifier drops our offer silently.
//! - DECLINE quarantines the address for [`DhcpConfig::decline_quarantine`].
//! - Every table is bounded: slots by the pool (at most [`config::MAX_POOL_SIZE`]) plus
//!   static leases, remembered addresses by config, events by [`MAX_PENDING_EVENTS`].

pub mod config;
pub mod hostname;
mod lease;
mod server;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, DhcpConfig, StaticLease};
/// Re-exported so drivers and tests build messages with the same `dhcproto`.
pub use dhcproto;
pub use lease::{
    ClientKey, LastAddressRecord, Lease, LeaseEvent, LeaseRecord, LeaseSnapshot, MAX_CLIENT_ID_LEN,
    RestoreReport,
};
pub use server::{
    DhcpError, DhcpServer, DhcpStats, MAX_PENDING_EVENTS, Reply, ReplyKind, ReplyTarget,
};
pub use smoltcp::wire::EthernetAddress;
