//! Packet capture for v86-relay LANs, sans-IO: a pcapng writer ([`pcapng`]) and a small
//! capture filter ([`filter`]). No runtime, no sockets, no clock: the relay passes each
//! frame with its timestamp (`now`, microseconds since 1970) and writes the bytes this crate
//! appends to a buffer.
//!
//! # Modules and their API
//! - [`pcapng`]: [`Pcapng::new`]`(snaplen)`, [`Pcapng::section_header`]`(out, app)`,
//!   [`Pcapng::interface`]`(out, key, name) -> u32` (one Interface Description Block per
//!   port), [`Pcapng::interface_id`]`(key)`, [`Pcapng::packet`]`(out, if_id, now_us, frame,
//!   dropped_before)` (Enhanced Packet Block, `epb_dropcount` when frames were lost),
//!   [`Pcapng::statistics`]`(out, now_us, drops)` (one Interface Statistics Block per
//!   interface at the end).
//! - [`filter`]: [`Filter::parse`]`("udp port 53")`, [`Filter::matches`]`(frame)`.
//! - [`decode`]: [`Decoder::decode`]`(frame) -> Line`, one line a person reads
//!   (`vm-a -> vm-b  ICMP echo request id=3 seq=1`), naming machines by what it was told
//!   ([`Decoder::name_mac`], [`Decoder::name_ip`]) and what it learns from DHCP and ARP.
//!
//! # Example
//! ```
//! use capture::{Filter, Pcapng};
//!
//! let filter = Filter::parse("udp port 53 or arp").unwrap();
//! let mut out = Vec::new();
//! let mut writer = Pcapng::new(262_144);
//! writer.section_header(&mut out, "example");
//! let vm = writer.interface(&mut out, 7, "port 7 02:00:00:00:00:01 websocket");
//! let arp = [[0xff; 6].as_slice(), &[2, 0, 0, 0, 0, 1], &[0x08, 0x06], &[0; 28]].concat();
//! if filter.matches(&arp) {
//!     writer.packet(&mut out, vm, 1_700_000_000_000_000, &arp, 0);
//! }
//! writer.statistics(&mut out, 1_700_000_000_000_001, &[]);
//! assert_eq!(&out[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
//! ```
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod decode;
pub mod filter;
pub mod pcapng;

pub use decode::{Decoder, Kind, Line};
pub use filter::{Filter, FilterError};
pub use pcapng::Pcapng;
