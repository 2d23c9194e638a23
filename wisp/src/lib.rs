//! Wisp v1/v2 server sessions, sans-IO.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod wire;
