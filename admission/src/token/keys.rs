//! Verification keys: HS256 secrets and Ed25519 / P-256 public keys, from config text.
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use hmac::{KeyInit as _, Mac as _};

/// Shortest HS256 secret accepted: RFC 7518 §3.2 requires a key at least as long as the
/// hash output, and a short secret is brute-forced offline from any one token.
pub const MIN_HS256_SECRET_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A JWS algorithm this crate verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA-256 with a shared secret.
    Hs256,
    /// Ed25519 signatures (`"EdDSA"`, or the fully-specified `"Ed25519"` of RFC 9864).
    EdDsa,
    /// ECDSA over P-256 with SHA-256.
    Es256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Es256 => "ES256",
        }
    }

    /// Reads a JOSE `alg` value; `None` for anything else, `"none"` included.
    pub fn from_jose(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Algorithm::Hs256),
            "EdDSA" | "Ed25519" => Some(Algorithm::EdDsa),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }
}

/// One key a [`Verifier`](super::Verifier) accepts tokens from. Each key serves exactly one
/// algorithm, so a token's `alg` only selects among keys configured for it (no confusion of
/// a public key with an HMAC secret).
#[derive(Clone)]
pub struct Key(KeyKind);

#[derive(Clone)]
enum KeyKind {
    Hs256(Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
    Es256(p256::ecdsa::VerifyingKey),
}

/// Why a configured key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(
        "HS256 secret is {0} bytes: use at least {MIN_HS256_SECRET_LEN} random bytes (e.g. `openssl rand -base64 32`)"
    )]
    ShortSecret(usize),
    #[error(
        "this is a private key: configure its public half (`openssl pkey -in key.pem -pubout`)"
    )]
    PrivateKey,
    #[error("PEM public key is neither Ed25519 nor P-256: only EdDSA and ES256 keys are supported")]
    UnsupportedPem,
    #[error("public key is neither PEM nor base64: paste the -----BEGIN PUBLIC KEY----- block")]
    NotBase64,
    #[error(
        "public key of {0} bytes is neither Ed25519 (32 raw bytes) nor P-256 (33/65-byte SEC1 point) nor SPKI DER"
    )]
    UnsupportedRaw(usize),
    #[error("invalid {0} public key: the bytes are not a point on the curve")]
    InvalidPoint(&'static str),
}

/// Base64 as people paste it: standard or URL-safe alphabet, padded or not.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

impl Key {
    /// An HS256 shared secret (the bytes as configured; no decoding).
    pub fn hs256_secret(secret: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let secret = secret.into();
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        Ok(Key(KeyKind::Hs256(secret)))
    }

    /// An Ed25519 or P-256 public key, told apart by its content. Accepted forms:
    /// a PEM `PUBLIC KEY` block (SPKI); or base64 (standard or URL-safe, padding optional)
    /// of 32 raw Ed25519 bytes, of a 33- or 65-byte P-256 SEC1 point, or of SPKI DER.
    pub fn public_key(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return Self::from_pem(text);
        }
        let compact: String = text.split_whitespace().collect();
        let bytes = STANDARD_LENIENT
            .decode(&compact)
            .or_else(|_| URL_SAFE_LENIENT.decode(&compact))
            .map_err(|_| KeyError::NotBase64)?;
        Self::from_bytes(&bytes)
    }

    fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.contains("PRIVATE KEY-----") {
            return Err(KeyError::PrivateKey);
        }
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Key(KeyKind::Ed25519(key)));
        }
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(|key| Key(KeyKind::Es256(key)))
            .map_err(|_| KeyError::UnsupportedPem)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if let Ok(raw) = <&[u8; 32]>::try_from(bytes) {
            return ed25519_dalek::VerifyingKey::from_bytes(raw)
                .map(|key| Key(KeyKind::Ed25519(key)))
                .map_err(|_| KeyError::InvalidPoint("Ed25519"));
        }
        match bytes {
            [0x04, ..] if bytes.len() == 65 => Self::p256_sec1(bytes),
            [0x02 | 0x03, ..] if bytes.len() == 33 => Self::p256_sec1(bytes),
            _ => {
                if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(bytes) {
                    return Ok(Key(KeyKind::Ed25519(key)));
                }
                p256::ecdsa::VerifyingKey::from_public_key_der(bytes)
                    .map(|key| Key(KeyKind::Es256(key)))
                    .map_err(|_| KeyError::UnsupportedRaw(bytes.len()))
            }
        }
    }

    fn p256_sec1(bytes: &[u8]) -> Result<Self, KeyError> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map(|key| Key(KeyKind::Es256(key)))
            .map_err(|_| KeyError::InvalidPoint("P-256"))
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            KeyKind::Hs256(_) => Algorithm::Hs256,
            KeyKind::Ed25519(_) => Algorithm::EdDsa,
            KeyKind::Es256(_) => Algorithm::Es256,
        }
    }

    /// Checks `signature` over `signing_input` (`header.payload`, as sent).
    pub(crate) fn verifies(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.0 {
            KeyKind::Hs256(secret) => {
                let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
                    return false;
                };
                mac.update(signing_input);
                // Constant-time comparison, and a wrong-length tag is simply a mismatch.
                mac.verify_slice(signature).is_ok()
            }
            KeyKind::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                // Strict: refuses small-order keys and non-canonical signatures.
                .is_ok_and(|sig| key.verify_strict(signing_input, &sig).is_ok()),
            KeyKind::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                // JWS carries r || s (64 bytes), not DER.
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok())
            }
        }
    }
}

/// HMAC-SHA-256 of `input` under `secret` (any length: minting does not second-guess the
/// caller's secret, [`Key::hs256_secret`] is where lengths are checked).
pub(crate) fn hs256_tag(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

impl fmt::Debug for Key {
    /// Never prints a secret; public keys are harmless but long, so only the algorithm shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyKind::Hs256(secret) => write!(f, "Key(HS256, {} byte secret)", secret.len()),
            KeyKind::Ed25519(_) => f.write_str("Key(EdDSA)"),
            KeyKind::Es256(_) => f.write_str("Key(ES256)"),
        }
    }
}
