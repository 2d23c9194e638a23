//! The cluster bus of v86-relay, sans-IO (docs/cluster.md).
//!
//! Relay nodes share LANs over NATS: one node owns a LAN (its switch and gateway), the
//! others forward their ports' frames to it. This crate holds the parts that need no
//! socket and no clock of their own:
//!
//! - [`wire`]: the bus message (frames, hellos and byes of remote ports), with a decoder
//!   that treats every message as hostile.
//! - [`claim`]: when an owner renews its claim, when it must stop serving (fencing), and
//!   when a watcher may take a claim over; `now` is always passed in.
#![forbid(unsafe_code)]

pub mod claim;
pub mod wire;
