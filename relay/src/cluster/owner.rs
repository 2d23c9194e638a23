//! One task per LAN on every node that has it: claim it when nobody owns it, serve it
//! while the claim is renewed, stop at once when it is not, hand it over on a drain.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bus::claim::{ObservedClaim, OwnedClaim};
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::remote::{self, BusUplink};
use super::{Cluster, LanRole};
use crate::gateway_port::ClusterRun;
use crate::lan::{Lan, Uplink};

/// Starts the task of a LAN that was just created on this node.
pub(super) fn spawn(cluster: &Arc<Cluster>, lan: &Arc<Lan>) {
    // Remote until claimed: frames go to whoever owns it (nobody yet, for a brand-new LAN;
    // the first ones are lost for the few milliseconds a claim takes, as on a cold switch).
    let uplink = remote::spawn_uplink(cluster, lan);
    lan.set_uplink(Some(uplink.clone() as Arc<dyn Uplink>));
    cluster.set_role(lan, LanRole::default());
    cluster
        .tasks
        .spawn(run(cluster.clone(), lan.clone(), uplink));
}

/// What the KV claim of a LAN holds: the owner and the revision it won the claim with.
fn claim_value(node: &str, epoch: u64) -> Bytes {
    Bytes::from(format!("{node} {epoch}"))
}

pub(super) fn parse_claim(entry: &kv::Entry) -> (String, u64) {
    let text = String::from_utf8_lossy(&entry.value);
    let mut parts = text.split_whitespace();
    let node = parts.next().unwrap_or("?").to_owned();
    // Epoch 0 is written by the create that won the claim: its own revision.
    let epoch = parts
        .next()
        .and_then(|e| e.parse().ok())
        .filter(|e| *e != 0)
        .unwrap_or(entry.revision);
    (node, epoch)
}

enum Attempt {
    /// Won with this revision, by a write sent at that instant; taken over or new.
    Won(u64, Instant, bool),
    Other,
}

/// How a write of the LAN's leases went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseWrite {
    Stored,
    /// NATS did not take it; tried again later.
    Failed,
    /// Another node wrote the LAN's leases: it owns the LAN now.
    Fenced,
}

enum End {
    Removed,
    Lost,
    Drained,
}

async fn run(cluster: Arc<Cluster>, lan: Arc<Lan>, uplink: Arc<BusUplink>) {
    let mut observed = ObservedClaim::default();
    loop {
        // Remote: look at the claim, take it when it is free or stale.
        let won = loop {
            if !cluster.draining.is_cancelled() {
                match cluster.try_claim(&lan, &mut observed).await {
                    Attempt::Won(revision, sent, taken_over) => break (revision, sent, taken_over),
                    Attempt::Other => {}
                }
            }
            tokio::select! {
                _ = lan.removed() => return cluster.forget(&lan),
                _ = tokio::time::sleep(cluster.timing.check_every()) => {}
            }
        };
        let (revision, sent, taken_over) = won;
        let claim = OwnedClaim::won(cluster.timing, revision, sent);
        match cluster.serve(&lan, claim, taken_over, &uplink).await {
            End::Removed => return cluster.forget(&lan),
            End::Lost | End::Drained => {}
        }
        observed = ObservedClaim::default();
    }
}

impl Cluster {
    pub(super) fn set_role(&self, lan: &Lan, role: LanRole) {
        if let Ok(mut roles) = self.roles.lock() {
            let served = roles
                .insert(lan.name().clone(), role)
                .map_or(0, |old| old.remote_ports_served);
            self.stats
                .remote_ports_served
                .fetch_sub(served as i64, Relaxed);
        }
    }

    fn forget(&self, lan: &Lan) {
        self.set_role(lan, LanRole::default());
        if let Ok(mut roles) = self.roles.lock() {
            roles.remove(lan.name());
        }
    }

    async fn try_claim(&self, lan: &Lan, observed: &mut ObservedClaim) -> Attempt {
        let key = lan.name().as_str();
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            self.timing.renew_every(),
            self.owners.create(key, claim_value(&self.node, 0)),
        )
        .await;
        match attempt {
            Ok(Ok(revision)) => return Attempt::Won(revision, sent, false),
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Ok(Err(e)) => {
                tracing::debug!(lan = %key, "cluster: cannot claim: {e}");
                return Attempt::Other;
            }
            Err(_) => return Attempt::Other,
        }
        let entry =
            match tokio::time::timeout(self.timing.renew_every(), self.owners.entry(key)).await {
                Ok(Ok(Some(entry))) if entry.operation == Operation::Put => entry,
                _ => {
                    observed.handle_absent();
                    return Attempt::Other;
                }
            };
        let (owner, epoch) = parse_claim(&entry);
        let now = Instant::now();
        observed.handle_seen(entry.revision, now);
        self.set_role(
            lan,
            LanRole {
                owned: false,
                owner: Some(owner.clone()),
                epoch,
                remote_ports_served: 0,
            },
        );
        // Our own claim from before (a restart, or a renewal whose answer was lost): nobody
        // else serves the LAN, so it is ours to take back. Otherwise only a claim that has
        // not moved for a whole TTL.
        let ours = owner == self.node;
        if !ours && !observed.is_stale(self.timing, now) {
            return Attempt::Other;
        }
        let sent = Instant::now();
        let update = self
            .owners
            .update(key, claim_value(&self.node, 0), entry.revision);
        match tokio::time::timeout(self.timing.renew_every(), update).await {
            Ok(Ok(revision)) => {
                if !ours {
                    tracing::warn!(lan = %key, "cluster: {owner} stopped renewing its claim; this node takes the LAN over");
                }
                Attempt::Won(revision, sent, !ours)
            }
            _ => Attempt::Other,
        }
    }

    /// Runs `lan` as its owner until the claim is lost, the LAN goes or a drain hands it
    /// over.
    async fn serve(
        self: &Arc<Self>,
        lan: &Arc<Lan>,
        mut claim: OwnedClaim,
        taken_over: bool,
        uplink: &Arc<BusUplink>,
    ) -> End {
        let key = lan.name().as_str().to_owned();
        let value = claim_value(&self.node, claim.epoch);
        // The leases as the last owner left them.
        let (mut lease_revision, leases) = match self.leases.entry(key.clone()).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => (
                Some(entry.revision),
                serde_json::from_slice::<dhcp::LeaseSnapshot>(&entry.value).ok(),
            ),
            Ok(Some(entry)) => (Some(entry.revision), None),
            Ok(None) => (None, None),
            Err(e) => {
                // Serving without the LAN's leases could hand a live VM's address to
                // another: give the claim back and try again.
                tracing::warn!(lan = %key, "cluster: cannot read the LAN's leases: {e}");
                let _ = self
                    .owners
                    .delete_expect_revision(&key, Some(claim.revision))
                    .await;
                return End::Lost;
            }
        };
        let counter = if taken_over {
            &self.stats.claims_taken_over
        } else {
            &self.stats.claims_won
        };
        counter.fetch_add(1, Relaxed);
        tracing::info!(lan = %key, epoch = claim.epoch, "cluster: this node owns the LAN ({} leases)", leases.as_ref().map_or(0, |l| l.leases.len()));
        self.set_role(
            lan,
            LanRole {
                owned: true,
                owner: Some(self.node.clone()),
                epoch: claim.epoch,
                remote_ports_served: 0,
            },
        );
        lan.set_uplink(None);
        let ingress = match remote::start_ingress(self, lan, claim.epoch).await {
            Ok(stop) => stop,
            Err(e) => {
                tracing::warn!(lan = %key, "cluster: cannot subscribe: {e}");
                CancellationToken::new()
            }
        };
        let (published, mut lease_changes) = watch::channel(None);
        let stop = CancellationToken::new();
        let gateway = self.gateways.start(
            &self.registry,
            lan,
            Some(ClusterRun {
                stop: stop.clone(),
                leases,
                published,
            }),
        );
        let mut dirty = false;
        let mut gateway_gone = gateway.is_none();
        let end = loop {
            let deadline = tokio::time::Instant::from_std(claim.poll_timeout());
            tokio::select! {
                _ = lan.removed() => break End::Removed,
                _ = self.draining.cancelled() => break End::Drained,
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if !claim.may_serve(now) {
                        tracing::error!(lan = %key, "cluster: the claim could not be renewed in time; this node stops serving the LAN");
                        break End::Lost;
                    }
                    if claim.renew_due(now) {
                        claim.renewal_sent(now);
                        let serve_until = tokio::time::Instant::from_std(now + self.timing.serve_for());
                        match tokio::time::timeout_at(serve_until, self.owners.update(&key, value.clone(), claim.revision)).await {
                            Ok(Ok(revision)) => claim.handle_renewed(revision, now),
                            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                                self.stats.renew_failures.fetch_add(1, Relaxed);
                                tracing::error!(lan = %key, "cluster: another node holds the claim now; this node stops serving the LAN");
                                break End::Lost;
                            }
                            Ok(Err(e)) => {
                                self.stats.renew_failures.fetch_add(1, Relaxed);
                                tracing::warn!(lan = %key, "cluster: renewing the claim failed: {e}");
                            }
                            Err(_) => {
                                self.stats.renew_failures.fetch_add(1, Relaxed);
                                tracing::warn!(lan = %key, "cluster: renewing the claim timed out");
                            }
                        }
                        if dirty {
                            match self.store_leases(&key, &lease_changes, &mut lease_revision).await {
                                LeaseWrite::Stored => dirty = false,
                                LeaseWrite::Failed => {}
                                LeaseWrite::Fenced => break End::Lost,
                            }
                        }
                    }
                }
                changed = lease_changes.changed(), if !gateway_gone => {
                    if changed.is_err() {
                        // The gateway stopped by itself (the LAN is going); its last
                        // leases are still in the channel.
                        gateway_gone = true;
                        continue;
                    }
                    match self.store_leases(&key, &lease_changes, &mut lease_revision).await {
                        LeaseWrite::Stored => dirty = false,
                        LeaseWrite::Failed => dirty = true,
                        LeaseWrite::Fenced => {
                            tracing::error!(lan = %key, "cluster: another node wrote the LAN's leases; this node stops serving the LAN");
                            break End::Lost;
                        }
                    }
                }
            }
        };
        // Stop serving first: frames of local ports go to the bus, the gateway stops.
        if !matches!(end, End::Removed) {
            lan.set_uplink(Some(uplink.clone() as Arc<dyn Uplink>));
        }
        stop.cancel();
        ingress.cancel();
        if let Some(gateway) = gateway
            && let Ok(exit) = gateway.await
        {
            self.stats
                .nat_flows_lost
                .fetch_add(exit.flows_open as u64, Relaxed);
        }
        match end {
            End::Lost => {
                self.stats.claims_lost.fetch_add(1, Relaxed);
            }
            End::Removed | End::Drained => {
                // Hand over: the final leases, then the claim, so the next node starts
                // with every address that was given out.
                self.store_leases(&key, &lease_changes, &mut lease_revision)
                    .await;
                let _ = self
                    .owners
                    .delete_expect_revision(&key, Some(claim.revision))
                    .await;
                if matches!(end, End::Drained) {
                    self.stats.claims_handed_over.fetch_add(1, Relaxed);
                    tracing::info!(lan = %key, "cluster: LAN handed over (drain)");
                }
            }
        }
        self.set_role(lan, LanRole::default());
        if !matches!(end, End::Removed) {
            self.registry.release_service(lan);
        }
        end
    }

    /// Writes the gateway's latest leases to the cluster; true when stored.
    async fn store_leases(
        &self,
        key: &str,
        changes: &watch::Receiver<Option<dhcp::LeaseSnapshot>>,
        revision: &mut Option<u64>,
    ) -> LeaseWrite {
        let Some(snapshot) = changes.borrow().clone() else {
            return LeaseWrite::Stored;
        };
        let Ok(json) = serde_json::to_vec(&snapshot) else {
            return LeaseWrite::Stored;
        };
        // (error, whether someone else wrote the leases since this owner read them)
        let write = async {
            match *revision {
                Some(r) => self.leases.update(key, json.into(), r).await.map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => self
                    .leases
                    .create(key, json.into())
                    .await
                    .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())),
            }
        };
        match tokio::time::timeout(self.timing.renew_every(), write).await {
            Ok(Ok(r)) => {
                *revision = Some(r);
                LeaseWrite::Stored
            }
            Ok(Err((fenced, e))) => {
                self.stats.lease_write_failures.fetch_add(1, Relaxed);
                tracing::warn!(lan = %key, "cluster: cannot store the LAN's leases: {e}");
                if fenced {
                    LeaseWrite::Fenced
                } else {
                    LeaseWrite::Failed
                }
            }
            Err(_) => {
                self.stats.lease_write_failures.fetch_add(1, Relaxed);
                LeaseWrite::Failed
            }
        }
    }
}
