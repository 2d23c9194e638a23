//! `[cors]`: the CORS proxy at `/cors/` for v86's "fetch" network backend
//! (`cors_proxy: "http://HOST:8086/cors/"`). Off by default: it is an open HTTP client for
//! whoever can reach the relay, held to `[nat]`'s egress policy.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSection {
    /// Serve `/cors/` on `server.listen`.
    pub enabled: bool,
    /// Largest request body and largest response body; a response over it is cut off.
    pub max_body_bytes: u64,
    /// Seconds one proxied request may take, redirects and the whole body included.
    pub timeout_secs: u64,
}

impl Default for CorsSection {
    fn default() -> Self {
        Self {
            enabled: false,
            max_body_bytes: 64 << 20,
            timeout_secs: 120,
        }
    }
}

impl CorsSection {
    /// Checks the section; the error names the key, the problem and the fix.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String, &'static str, String)> {
        if !(1024..=(4 << 30)).contains(&self.max_body_bytes) {
            return Err((
                "cors.max_body_bytes",
                self.max_body_bytes.to_string(),
                "out of range",
                "use 1024 to 4294967296 (default 67108864)".to_owned(),
            ));
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err((
                "cors.timeout_secs",
                self.timeout_secs.to_string(),
                "out of range",
                "use 1 to 3600 (default 120)".to_owned(),
            ));
        }
        Ok(())
    }
}
