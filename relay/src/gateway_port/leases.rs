//! The DHCP state file: every LAN's leases as JSON, so a relay restart never hands a live
//! VM's address to another. Gateways put snapshots here; a task writes the file when it
//! changed (atomically: temp file, then rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    lans: BTreeMap<String, dhcp::LeaseSnapshot>,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseStore {
    path: Option<PathBuf>,
    lans: Mutex<BTreeMap<String, dhcp::LeaseSnapshot>>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseFileError {
    #[error("cannot read DHCP state file {0}: {1}. Check --dhcp-state-file and its permissions.")]
    Read(PathBuf, std::io::Error),
    #[error("DHCP state file {0} is damaged ({1}). Move it away to start with no leases.")]
    Parse(PathBuf, serde_json::Error),
}

impl LeaseStore {
    /// Loads `path` if given; a missing file is an empty store.
    pub(crate) fn open(path: Option<&Path>) -> Result<LeaseStore, LeaseFileError> {
        let mut store = LeaseStore {
            path: path.map(Path::to_owned),
            ..LeaseStore::default()
        };
        if let Some(path) = path {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let file: StateFile = serde_json::from_slice(&bytes)
                        .map_err(|e| LeaseFileError::Parse(path.to_owned(), e))?;
                    tracing::info!(
                        "loaded leases of {} LANs from {}",
                        file.lans.len(),
                        path.display()
                    );
                    store.lans = Mutex::new(file.lans);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LeaseFileError::Read(path.to_owned(), e)),
            }
        }
        Ok(store)
    }

    pub(crate) fn get(&self, lan: &str) -> Option<dhcp::LeaseSnapshot> {
        self.lans.lock().ok()?.get(lan).cloned()
    }

    pub(crate) fn put(&self, lan: &str, snapshot: dhcp::LeaseSnapshot) {
        if let Ok(mut lans) = self.lans.lock() {
            if snapshot.leases.is_empty() && snapshot.last_addresses.is_empty() {
                lans.remove(lan);
            } else {
                lans.insert(lan.to_owned(), snapshot);
            }
        }
        self.changed.notify_one();
    }

    /// Forgets leases that have expired, and LANs left with none.
    pub(crate) fn prune(&self, now_unix: u64) {
        if let Ok(mut lans) = self.lans.lock() {
            lans.retain(|_, snapshot| {
                snapshot
                    .leases
                    .retain(|lease| lease.expires_unix_secs > now_unix);
                !snapshot.leases.is_empty()
            });
        }
    }

    /// Writes the file now (no-op without a path).
    pub(crate) fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = StateFile {
            lans: self.lans.lock().map(|l| l.clone()).unwrap_or_default(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Writes the file after changes, at most once a second, until `stop`; then once more.
    pub(crate) async fn run_writer(&self, stop: tokio_util::sync::CancellationToken) {
        if self.path.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.changed.notified() => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = self.save() {
                tracing::error!("cannot write the DHCP state file: {e}");
            }
        }
    }
}
