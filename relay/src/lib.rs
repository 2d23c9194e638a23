//! v86-relay: the runtime. Transports turn client connections into ports of a LAN
//! ([`lan`]), whose switch ([`switch`] crate) forwards frames between them.
//!
//! Frame path: `transport::websocket` -> [`lan::Port::ingress`] -> `switch::Switch` ->
//! the other ports' bounded queues -> each transport's writer.

pub mod cli;
pub mod config;
pub mod lan;
pub mod metrics;
pub mod server;
pub mod tap;
pub mod transport;

pub use config::Config;
pub use server::Relay;
