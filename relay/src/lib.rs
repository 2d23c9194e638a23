//! v86-relay: the runtime. Layers, each importing only the ones above it in this list
//! (docs/architecture.md, "Layers"; `scripts/check-layers.sh` fails on a back-edge):
//!
//! 0. [`shared`]: LAN names, transports, drop reasons, frame limits, the metrics encoder.
//! 1. [`config`]: every section's types and checks.
//! 2. `lan`: the LAN registry, ports and their bounded queues, traffic counters.
//! 3. `admission`: tokens, per-address limits, the audit trail; before every join.
//! 4. `transport` (WebSocket, WebTransport, WebRTC) and `nat` (host sockets).
//! 5. `gateway_port`: the per-LAN task driving the `gateway` crate, its commands and stats.
//! 6. `forward`: inbound port-forward listeners.
//! 7. `http`: the client router, `/net/info`, the demo, the admin API, `/metrics`.
//! 8. [`app`] (starts everything), [`cli`] and [`tap`] (the binary's edge).
//!
//! A frame's path: `transport/websocket/mod.rs` -> `lan/port.rs` (`Port::ingress`, the switch)
//! -> another port's queue, or the gateway port (`gateway_port/mod.rs`) -> the `gateway`
//! crate -> `nat/` (host sockets) -> back the same way.
#![warn(unreachable_pub)]

pub(crate) mod admission;
pub mod app;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod forward;
pub(crate) mod gateway_port;
pub(crate) mod http;
pub(crate) mod lan;
pub(crate) mod nat;
pub mod reload;
pub mod shared;
pub mod tap;
pub(crate) mod transport;

pub use app::Relay;
pub use config::Config;
