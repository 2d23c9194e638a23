//! v86-relay: the runtime. Transports turn client connections into ports of a LAN
//! ([`lan`]), whose switch ([`switch`] crate) forwards frames between them.
//!
//! Frame path: `transport::websocket` -> [`lan::Port::ingress`] -> `switch::Switch` ->
//! the other ports' bounded queues -> each transport's writer, or the LAN's gateway port
//! ([`gateway_port`], driving the `gateway` crate: ARP/ICMP, DHCP, DNS).

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod forward;
pub mod gateway_port;
pub mod lan;
pub mod leases;
pub mod metrics;
pub mod nat;
pub mod net_info;
pub mod network;
pub mod server;
pub mod tap;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use server::Relay;
