//! Wire-level IPv4 helpers below the gateway and the NAT: pure functions and sans-IO state
//! over packet bytes. A leaf layer: it imports nothing from the crate.

pub mod frag;
