//! Transports: each turns a client connection into a [`crate::lan::Port`] and drains that
//! port's queue back to the client.

pub mod webrtc;
pub mod websocket;
pub mod webtransport;
