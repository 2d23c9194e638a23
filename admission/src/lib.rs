//! Admission control for the hosted relay (placeholder docs, rewritten below).
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod rate;
pub mod token;
