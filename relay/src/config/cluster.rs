//! `[cluster]`: relay nodes that share LANs over NATS (docs/cluster.md). Absent (no
//! `nats_urls`): the single-process relay of before, and no NATS is needed or contacted.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS servers (`nats://host:4222`, `tls://host:4222`); empty: no cluster.
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster; default: the host name.
    pub node_name: Option<String>,
    /// First token of every subject and of the KV bucket names.
    pub subject_prefix: String,
    /// How long a LAN's owner claim lives without renewal; a dead owner's LANs move after it.
    pub lease_ttl_secs: u64,
    /// SIGTERM/SIGINT hand this node's LANs to others (as `POST /admin/drain`) before
    /// clients are closed.
    pub drain_on_stop: bool,
    /// Credentials: user and password, or a token (not both).
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// TLS to NATS: a CA to trust, and a client certificate and key when NATS asks for one.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Seconds to wait for NATS at start-up before giving up.
    pub connect_timeout_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            node_name: None,
            subject_prefix: "v86relay".to_owned(),
            lease_ttl_secs: 10,
            drain_on_stop: true,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout_secs: 5,
        }
    }
}

/// Whether `name` can travel in a NATS subject and a KV key.
fn token_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A rejected key: (key, its value, the problem, the fix).
type Invalid = (&'static str, String, &'static str, String);

impl ClusterSection {
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    /// `node_name`, else the host name made subject-safe.
    pub fn node(&self) -> String {
        if let Some(name) = &self.node_name {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if name.is_empty() {
            "relay".to_owned()
        } else {
            name
        }
    }

    /// Checks the section; the error names the key, the problem and the fix.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if !self.enabled() {
            return Ok(());
        }
        self.validate_names()?;
        self.validate_credentials()?;
        if !(3..=600).contains(&self.lease_ttl_secs) {
            return Err((
                "cluster.lease_ttl_secs",
                self.lease_ttl_secs.to_string(),
                "out of range",
                "use 3 to 600 (default 10): a dead owner's LANs move after about this long"
                    .to_owned(),
            ));
        }
        if !(1..=120).contains(&self.connect_timeout_secs) {
            return Err((
                "cluster.connect_timeout_secs",
                self.connect_timeout_secs.to_string(),
                "out of range",
                "use 1 to 120 (default 5)".to_owned(),
            ));
        }
        Ok(())
    }

    /// The NATS URLs, the node's name and the subject prefix.
    fn validate_names(&self) -> Result<(), Invalid> {
        for url in &self.nats_urls {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s))
                || !url.contains("://");
            if !scheme_ok || url.trim().is_empty() {
                return Err((
                    "cluster.nats_urls",
                    format!("{url:?}"),
                    "not a NATS URL",
                    "write e.g. [\"nats://10.0.0.5:4222\"]".to_owned(),
                ));
            }
        }
        if !token_ok(&self.node()) {
            return Err((
                "cluster.node_name",
                format!("{:?}", self.node()),
                "must be 1 to 64 of [A-Za-z0-9_-] (it goes into NATS subjects)",
                "set --node-name to e.g. relay-1, unique in the cluster".to_owned(),
            ));
        }
        if !token_ok(&self.subject_prefix) {
            return Err((
                "cluster.subject_prefix",
                format!("{:?}", self.subject_prefix),
                "must be 1 to 64 of [A-Za-z0-9_-]",
                "keep the default v86relay, or one word per cluster".to_owned(),
            ));
        }
        Ok(())
    }

    /// The token, user and password, and the TLS files.
    fn validate_credentials(&self) -> Result<(), Invalid> {
        if self.token.is_some() && (self.user.is_some() || self.password.is_some()) {
            return Err((
                "cluster.token",
                "(set)".to_owned(),
                "given together with cluster.user/password",
                "use either a token or a user and password".to_owned(),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err((
                "cluster.user",
                format!("{:?}", self.user),
                "a user needs a password and a password a user",
                "set both cluster.user and cluster.password".to_owned(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err((
                "cluster.tls_cert_file",
                format!("{:?}", self.tls_cert_file),
                "a client certificate needs its key and a key its certificate",
                "set both cluster.tls_cert_file and cluster.tls_key_file".to_owned(),
            ));
        }
        for path in [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err((
                    "cluster.tls_*_file",
                    path.display().to_string(),
                    "no such file",
                    "give the path of a PEM file this process can read".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_off_and_valid() {
        let c = ClusterSection::default();
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn mistakes_name_their_key() {
        let on = ClusterSection {
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            node_name: Some("n1".into()),
            ..Default::default()
        };
        assert!(on.validate().is_ok());
        for (broken, key) in [
            (
                ClusterSection {
                    node_name: Some("a.b".into()),
                    ..on.clone()
                },
                "cluster.node_name",
            ),
            (
                ClusterSection {
                    lease_ttl_secs: 1,
                    ..on.clone()
                },
                "cluster.lease_ttl_secs",
            ),
            (
                ClusterSection {
                    token: Some("t".into()),
                    user: Some("u".into()),
                    password: Some("p".into()),
                    ..on.clone()
                },
                "cluster.token",
            ),
            (
                ClusterSection {
                    nats_urls: vec!["http://x".into()],
                    ..on.clone()
                },
                "cluster.nats_urls",
            ),
        ] {
            assert_eq!(broken.validate().unwrap_err().0, key);
        }
    }
}
