//! JWT join tokens: compact JWS, verified against configured keys, scoped to LANs.
//!
//! A token is `base64url(header) . base64url(claims) . base64url(signature)` (no padding).
//! [`Verifier::verify`] checks, in this order, and stops at the first failure:
//! 1. presence (`Missing`) and size: over [`MAX_TOKEN_LEN`] bytes is refused before any
//!    decoding (`TooLong`);
//! 2. shape and header: three segments of canonical base64url, a JSON header without `crit`;
//! 3. `alg`: it must be one the verifier has a key for. `none`, unknown algorithms, and a
//!    known one without a configured key (an HS256 token when only public keys are
//!    configured) are `AlgNotAllowed`;
//! 4. the signature, against every key of that algorithm: any one valid is enough, so an
//!    old secret kept in the list keeps its tokens valid during a rotation;
//! 5. the claims (`lan` and `exp` required, see [`Claims`]), then time with a leeway, then
//!    the requested LAN.
//!
//! Metric labels ([`TokenError::reason`]): `auth_missing`, `auth_invalid`, `auth_expired`,
//! `auth_lan`. A token that is not valid *yet* counts as `auth_invalid`: `nbf` in the future
//! beyond the leeway means a clock far off or a token minted for later, neither of which an
//! operator acts on differently from a bad token, and a closed set of four labels keeps
//! dashboards simple. Its Display message still says exactly what happened.
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize};

use crate::rate::Rate;

mod keys;
#[cfg(test)]
mod tests;

pub use keys::{Algorithm, Key, KeyError, MIN_HS256_SECRET_LEN};

/// Longest token accepted, in bytes, checked before anything is decoded.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp` and `nbf` unless [`Verifier::with_leeway`] says otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// What a join token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The LAN: an exact name, or a prefix ending in `*` (`physics-*`; `*` alone is any LAN).
    pub lan: String,
    /// Expiry, unix seconds (required). Fractional JSON numbers are rounded down.
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds (informational).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_numeric_date"
    )]
    pub iat: Option<u64>,
    /// Who the token was issued to (for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Most ports (VMs) this token may hold in its LAN at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ports: Option<u32>,
    /// Per-port bandwidth, a rate string such as `"10Mbit"` (see [`crate::rate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// A role such as `"teacher"`, interpreted by the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Claims {
    /// Claims for `lan`, issued at `now_unix` and expiring `ttl` later; the rest unset.
    pub fn new(lan: impl Into<String>, now_unix: u64, ttl: Duration) -> Self {
        Self {
            lan: lan.into(),
            exp: now_unix.saturating_add(ttl.as_secs()),
            nbf: None,
            iat: Some(now_unix),
            sub: None,
            max_ports: None,
            rate: None,
            role: None,
        }
    }

    /// True when the `lan` claim covers `requested`.
    pub fn allows_lan(&self, requested: &str) -> bool {
        match self.lan.strip_suffix('*') {
            Some(prefix) => requested.starts_with(prefix),
            None => self.lan == requested,
        }
    }
}

/// Why a token was refused. Display is one line for an HTTP 401 body: what was wrong and
/// what to do; it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("a join token is required: open the link you were given, which carries ?token=...")]
    Missing,
    #[error(
        "join token is {len} bytes, over the {MAX_TOKEN_LEN}-byte limit: use the token exactly as given"
    )]
    TooLong { len: usize },
    #[error("join token is malformed ({0}): copy the whole link again")]
    Malformed(&'static str),
    #[error(
        "join token algorithm {alg:?} is not accepted by this relay: ask for a token signed with its key"
    )]
    AlgNotAllowed { alg: String },
    #[error("join token signature matches none of this relay's keys: ask for a new token")]
    BadSignature,
    #[error("join token claims are invalid ({0}): ask for a new token")]
    Invalid(String),
    #[error("join token expired {} s ago: ask for a new token", .now.saturating_sub(*.exp))]
    Expired { exp: u64, now: u64 },
    #[error(
        "join token is not valid for another {} s: check this computer's clock, or wait", .nbf.saturating_sub(*.now)
    )]
    NotYetValid { nbf: u64, now: u64 },
    #[error("join token is for LAN {allowed:?}, not {requested:?}: use the link for this LAN")]
    WrongLan { allowed: String, requested: String },
}

impl TokenError {
    /// Every label [`reason`](Self::reason) returns, for registering metrics up front.
    pub const REASONS: [&'static str; 4] =
        ["auth_missing", "auth_invalid", "auth_expired", "auth_lan"];

    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "auth_missing",
            TokenError::TooLong { .. }
            | TokenError::Malformed(_)
            | TokenError::AlgNotAllowed { .. }
            | TokenError::BadSignature
            | TokenError::Invalid(_)
            | TokenError::NotYetValid { .. } => "auth_invalid",
            TokenError::Expired { .. } => "auth_expired",
            TokenError::WrongLan { .. } => "auth_lan",
        }
    }
}

/// Verifies join tokens against a fixed set of keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    leeway_secs: u64,
}

/// The JOSE header fields this crate reads; others (`typ`, `kid`) are ignored, since every
/// key of the token's algorithm is tried anyway.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier accepting tokens signed by any of `keys`, with [`DEFAULT_LEEWAY`].
    pub fn new(keys: impl IntoIterator<Item = Key>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            leeway_secs: DEFAULT_LEEWAY.as_secs(),
        }
    }

    /// Tolerates this much clock skew on `exp` and `nbf` (whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// The configured keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Checks `token` for a join to LAN `requested_lan` at `now_unix` (unix seconds) and
    /// returns its claims. `None` or an empty token is [`TokenError::Missing`].
    pub fn verify(
        &self,
        token: Option<&str>,
        requested_lan: &str,
        now_unix: u64,
    ) -> Result<Claims, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: token.len() });
        }
        let (signing_input, payload, signature) = split_compact(token)?;
        let alg = self.allowed_algorithm(signing_input)?;
        let signature = decode_segment(signature, "signature")?;
        let signed = self
            .keys
            .iter()
            .filter(|key| key.algorithm() == alg)
            .any(|key| key.verifies(signing_input.as_bytes(), &signature));
        if !signed {
            return Err(TokenError::BadSignature);
        }
        let claims = decode_claims(payload)?;
        self.check_claims(&claims, requested_lan, now_unix)?;
        Ok(claims)
    }

    /// Reads the header and returns its `alg` if some configured key serves it.
    fn allowed_algorithm(&self, signing_input: &str) -> Result<Algorithm, TokenError> {
        let (header, _) = signing_input
            .split_once('.')
            .expect("split_compact checked");
        let header = decode_segment(header, "header")?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|_| TokenError::Malformed("header"))?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not implement must not be ignored.
            return Err(TokenError::Malformed("unsupported crit header"));
        }
        Algorithm::from_jose(&header.alg)
            .filter(|alg| self.keys.iter().any(|key| key.algorithm() == *alg))
            .ok_or_else(|| TokenError::AlgNotAllowed {
                alg: printable(&header.alg, 16),
            })
    }

    fn check_claims(&self, claims: &Claims, lan: &str, now: u64) -> Result<(), TokenError> {
        // RFC 7519: the current time must be before `exp`.
        if now >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(self.leeway_secs) < nbf
        {
            return Err(TokenError::NotYetValid { nbf, now });
        }
        if !claims.allows_lan(lan) {
            return Err(TokenError::WrongLan {
                allowed: printable(&claims.lan, 64),
                requested: printable(lan, 64),
            });
        }
        Ok(())
    }
}

/// Splits `header.payload.signature` into (`header.payload`, payload, signature).
fn split_compact(token: &str) -> Result<(&str, &str, &str), TokenError> {
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("not three dot-separated parts"))?;
    let (header, payload) = signing_input
        .split_once('.')
        .ok_or(TokenError::Malformed("not three dot-separated parts"))?;
    if payload.contains('.') {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    }
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::Malformed("empty part"));
    }
    Ok((signing_input, payload, signature))
}

/// Canonical base64url without padding (RFC 7515 §2): padding, other alphabets and non-zero
/// trailing bits are all refused, so one token has exactly one spelling.
fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(what))
}

fn decode_claims(payload: &str) -> Result<Claims, TokenError> {
    let json = decode_segment(payload, "payload")?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|e| {
        // The payload is signed by now, so the message is the issuer's, not an attacker's;
        // still keep it one short line.
        TokenError::Invalid(printable(&e.to_string(), 120))
    })?;
    if claims.lan.is_empty() {
        return Err(TokenError::Invalid("empty lan".into()));
    }
    Ok(claims)
}

/// A JWT NumericDate as whole seconds: integers, or non-negative finite decimals rounded down.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(secs) = number.as_u64() {
        return Ok(secs);
    }
    match number.as_f64() {
        Some(secs) if secs >= 0.0 && secs < u64::MAX as f64 => Ok(secs as u64),
        _ => Err(serde::de::Error::custom(
            "a date must be non-negative unix seconds",
        )),
    }
}

fn optional_numeric_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    numeric_date(deserializer).map(Some)
}

/// Signs `claims` as an HS256 compact JWS (`typ: JWT`). For the relay's `token` command and
/// `POST /admin/tokens`; configure the same secret through [`Key::hs256_secret`] to verify.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> String {
    const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    // Strings, integers and a rate: serialization cannot fail.
    let payload = serde_json::to_vec(claims).expect("claims serialize to JSON");
    let mut token = URL_SAFE_NO_PAD.encode(HEADER);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let tag = keys::hs256_tag(secret, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// A token safe to log: at most its first 8 characters (fewer for short strings, so that
/// no token is ever shown whole) followed by `…`. Control characters show as `?`.
pub fn redact(token: &str) -> String {
    let shown = token.chars().take(16).count() / 2;
    let mut out: String = token
        .chars()
        .take(shown.min(8))
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    out.push('…');
    out
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Caller-supplied text made safe for a one-line message: at most `max` characters, with
/// control characters replaced.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
