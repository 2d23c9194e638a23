//! Admission control for the hosted relay (module docs come with the last module).
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod limits;
pub mod rate;
pub mod token;
