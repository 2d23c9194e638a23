//! Admission control for the hosted relay: join tokens, per-IP limits, bandwidth shaping.
//!
//! A sans-IO core like the other core crates: no runtime, no sockets, no clock. Time comes
//! in as an argument: `now_unix: u64` (unix seconds) for token validity, and
//! [`std::time::Instant`] for everything monotonic (buckets, limits). The relay calls it
//! between a transport's accept and `LanRegistry::join`, once for every transport.
//!
//! # Modules and their API
//! - [`token`]: JWT join tokens (compact JWS).
//!   - [`Key::hs256_secret`]`(secret) -> Result<Key, KeyError>`,
//!     [`Key::public_key`]`(pem_or_base64) -> Result<Key, KeyError>` (Ed25519 or P-256);
//!   - [`Verifier::new`]`(keys)`, [`Verifier::with_leeway`]`(Duration)`,
//!     [`Verifier::verify`]`(token: Option<&str>, lan: &str, now_unix: u64) -> Result<Claims, TokenError>`;
//!   - [`TokenError::reason`]` -> &'static str`: `auth_missing`, `auth_invalid`,
//!     `auth_expired`, `auth_lan`; Display is a one-line HTTP 401 body;
//!   - [`Claims`] (`lan`, `exp`, `nbf`, `iat`, `sub`, `max_ports`, `rate`, `role`),
//!     [`Claims::new`]`(lan, now_unix, ttl)`, [`Claims::allows_lan`]`(name)`;
//!   - [`mint_hs256`]`(secret: &[u8], &Claims) -> String`, [`token::redact`]`(&str) -> String`,
//!     [`token::bearer`]`(authorization) -> Option<&str>`.
//! - [`rate`]: [`Rate`] parses `"10Mbit"`, `"2MB"`, `"512KB"`, `"1Gbit"` (bits by the
//!   `bit` suffix, bytes by a capital `B`, decimal SI prefixes) into bytes per second;
//!   [`TokenBucket::new`]`(rate_per_sec, burst, now)`,
//!   [`TokenBucket::try_take`]`(now, n) -> bool`, [`TokenBucket::time_until`]`(now, n) -> Duration`.
//! - [`limits`]: [`IpLimiter::new`]`(max_connections_per_ip, new_per_sec, burst, max_tracked_ips)`,
//!   [`IpLimiter::with_max_lans_per_ip`]`(n)`,
//!   [`IpLimiter::try_admit`]`(ip, now) -> Result<Permit, Refusal>`,
//!   [`IpLimiter::release`]`(permit, now)`,
//!   [`IpLimiter::try_create_lan`]`(ip, now) -> Result<LanPermit, Refusal>`,
//!   [`IpLimiter::release_lan`]`(permit, now)`, [`IpLimiter::sweep`]`(now)`;
//!   [`Refusal::reason`]: `ip_connections`, `ip_rate`, `ip_lans`, `ip_table_full`.
//! - [`forwarded`]: [`Cidr`] (`"10.0.0.0/8"`, `"::1"`), [`TrustedProxies::parse`]`(list)`,
//!   [`TrustedProxies::with_header`]`(ForwardedHeader)`,
//!   [`TrustedProxies::client_ip`]`(peer, x_forwarded_for, forwarded) -> IpAddr`.
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use admission::{Claims, IpLimiter, Key, TrustedProxies, Verifier, mint_hs256};
//!
//! let secret = b"a-secret-of-at-least-32-bytes-long!";
//! let now_unix = 1_900_000_000;
//! let token = mint_hs256(secret, &Claims::new("physics-*", now_unix, Duration::from_secs(7200)));
//!
//! let verifier = Verifier::new([Key::hs256_secret(secret.as_slice()).unwrap()]);
//! let claims = verifier.verify(Some(&token), "physics-101", now_unix).unwrap();
//! assert_eq!(claims.lan, "physics-*");
//! let refused = verifier.verify(Some(&token), "chemistry", now_unix).unwrap_err();
//! assert_eq!(refused.reason(), "auth_lan");
//!
//! let proxies = TrustedProxies::parse(["127.0.0.1/32"]).unwrap();
//! let client = proxies.client_ip("127.0.0.1".parse().unwrap(), Some("203.0.113.9"), None);
//! let mut limiter = IpLimiter::new(4, 2, 8, 65_536);
//! let now = Instant::now();
//! let permit = limiter.try_admit(client, now).unwrap();
//! // ... the connection lives ...
//! limiter.release(permit, now);
//! ```
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod forwarded;
pub mod limits;
pub mod rate;
pub mod token;

pub use forwarded::{Cidr, CidrError, ForwardedHeader, TrustedProxies};
pub use limits::{IpKey, IpLimiter, LanPermit, Permit, Refusal};
pub use rate::{Rate, RateError, TokenBucket};
pub use token::{Algorithm, Claims, Key, KeyError, TokenError, Verifier, mint_hs256};
