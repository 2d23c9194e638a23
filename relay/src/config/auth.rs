//! `[auth]`: join tokens. Off by default; setting `secrets` or `public_keys` turns it on,
//! and then every transport refuses a join without a valid token (401, before the upgrade).

use std::time::Duration;

use admission::{Key, Verifier};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// HS256 secrets, at least 32 bytes each. Any one verifies a token; the first mints
    /// (`v86-relay token`, `POST /admin/tokens`). List two while rotating.
    pub secrets: Vec<String>,
    /// Ed25519 or P-256 public keys (PEM text, or the path of a PEM file) of a service that
    /// mints tokens; the relay only verifies them.
    pub public_keys: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            public_keys: Vec::new(),
            leeway_secs: admission::token::DEFAULT_LEEWAY.as_secs(),
        }
    }
}

impl AuthSection {
    /// Whether joins need a token.
    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty() || !self.public_keys.is_empty()
    }

    /// The verifier for these keys, `None` when auth is off. Errors name the key and the fix.
    pub(crate) fn verifier(&self) -> Result<Option<Verifier>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for (i, secret) in self.secrets.iter().enumerate() {
            keys.push(Key::hs256_secret(secret.as_bytes()).map_err(|e| {
                format!("auth.secrets[{i}]: {e}; generate one with `openssl rand -base64 48`")
            })?);
        }
        for (i, text) in self.public_keys.iter().enumerate() {
            let pem = if text.trim_start().starts_with("-----BEGIN") {
                text.clone()
            } else {
                std::fs::read_to_string(text).map_err(|e| {
                    format!("auth.public_keys[{i}]: cannot read {text:?} ({e}); give PEM text or the path of a PEM file")
                })?
            };
            keys.push(Key::public_key(&pem).map_err(|e| {
                format!(
                    "auth.public_keys[{i}]: {e}; give an Ed25519 or P-256 public key in PEM (SPKI)"
                )
            })?);
        }
        Ok(Some(
            Verifier::new(keys).with_leeway(Duration::from_secs(self.leeway_secs)),
        ))
    }

    /// The secret new tokens are signed with: the first of `secrets`.
    pub(crate) fn minting_secret(&self) -> Option<&[u8]> {
        self.secrets.first().map(String::as_bytes)
    }
}
