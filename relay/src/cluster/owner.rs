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

#[derive(Clone, Copy)]
enum End {
    Removed,
    Lost,
    Drained,
}

/// What an owner keeps while it serves a LAN.
struct Serving {
    key: String,
    /// The claim's value, written on every renewal.
    value: Bytes,
    claim: OwnedClaim,
    lease_revision: Option<u64>,
    lease_changes: watch::Receiver<Option<dhcp::LeaseSnapshot>>,
    /// A lease write failed: tried again at the next renewal.
    dirty: bool,
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
        claim: OwnedClaim,
        taken_over: bool,
        uplink: &Arc<BusUplink>,
    ) -> End {
        let key = lan.name().as_str().to_owned();
        let Some((lease_revision, leases)) = self.read_leases(&key, &claim).await else {
            return End::Lost;
        };
        self.announce_owned(lan, &claim, taken_over, leases.as_ref());
        lan.set_uplink(None);
        let ingress = match remote::start_ingress(self, lan, claim.epoch).await {
            Ok(stop) => stop,
            Err(e) => {
                tracing::warn!(lan = %key, "cluster: cannot subscribe: {e}");
                CancellationToken::new()
            }
        };
        let (published, lease_changes) = watch::channel(None);
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
        let mut serving = Serving {
            value: claim_value(&self.node, claim.epoch),
            key,
            claim,
            lease_revision,
            lease_changes,
            dirty: false,
        };
        let end = self.serve_loop(lan, &mut serving, gateway.is_none()).await;
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
        self.finish(lan, end, &mut serving).await;
        end
    }

    /// The leases as the last owner left them (revision, snapshot); `None` when they cannot
    /// be read, after giving the claim back.
    async fn read_leases(
        &self,
        key: &str,
        claim: &OwnedClaim,
    ) -> Option<(Option<u64>, Option<dhcp::LeaseSnapshot>)> {
        match self.leases.entry(key).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => Some((
                Some(entry.revision),
                serde_json::from_slice::<dhcp::LeaseSnapshot>(&entry.value).ok(),
            )),
            Ok(Some(entry)) => Some((Some(entry.revision), None)),
            Ok(None) => Some((None, None)),
            Err(e) => {
                // Serving without the LAN's leases could hand a live VM's address to
                // another: give the claim back and try again.
                tracing::warn!(lan = %key, "cluster: cannot read the LAN's leases: {e}");
                let _ = self
                    .owners
                    .delete_expect_revision(key, Some(claim.revision))
                    .await;
                None
            }
        }
    }

    fn announce_owned(
        &self,
        lan: &Lan,
        claim: &OwnedClaim,
        taken_over: bool,
        leases: Option<&dhcp::LeaseSnapshot>,
    ) {
        let counter = if taken_over {
            &self.stats.claims_taken_over
        } else {
            &self.stats.claims_won
        };
        counter.fetch_add(1, Relaxed);
        tracing::info!(lan = %lan.name(), epoch = claim.epoch, "cluster: this node owns the LAN ({} leases)", leases.map_or(0, |l| l.leases.len()));
        self.set_role(
            lan,
            LanRole {
                owned: true,
                owner: Some(self.node.clone()),
                epoch: claim.epoch,
                remote_ports_served: 0,
            },
        );
    }

    /// Renews the claim and stores lease changes until the serving ends.
    async fn serve_loop(&self, lan: &Lan, s: &mut Serving, mut gateway_gone: bool) -> End {
        loop {
            let deadline = tokio::time::Instant::from_std(s.claim.poll_timeout());
            tokio::select! {
                _ = lan.removed() => return End::Removed,
                _ = self.draining.cancelled() => return End::Drained,
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(end) = self.on_claim_timer(s).await {
                        return end;
                    }
                }
                changed = s.lease_changes.changed(), if !gateway_gone => {
                    if changed.is_err() {
                        // The gateway stopped by itself (the LAN is going); its last
                        // leases are still in the channel.
                        gateway_gone = true;
                        continue;
                    }
                    match self.store_leases(&s.key, &s.lease_changes, &mut s.lease_revision).await {
                        LeaseWrite::Stored => s.dirty = false,
                        LeaseWrite::Failed => s.dirty = true,
                        LeaseWrite::Fenced => {
                            tracing::error!(lan = %s.key, "cluster: another node wrote the LAN's leases; this node stops serving the LAN");
                            return End::Lost;
                        }
                    }
                }
            }
        }
    }

    /// The claim's timer: stop when it can no longer be served, renew when due (and retry a
    /// lease write that failed). `Some` ends the serving.
    async fn on_claim_timer(&self, s: &mut Serving) -> Option<End> {
        let now = Instant::now();
        if !s.claim.may_serve(now) {
            tracing::error!(lan = %s.key, "cluster: the claim could not be renewed in time; this node stops serving the LAN");
            return Some(End::Lost);
        }
        if !s.claim.renew_due(now) {
            return None;
        }
        s.claim.renewal_sent(now);
        let serve_until = tokio::time::Instant::from_std(now + self.timing.serve_for());
        let update = self
            .owners
            .update(&s.key, s.value.clone(), s.claim.revision);
        match tokio::time::timeout_at(serve_until, update).await {
            Ok(Ok(revision)) => s.claim.handle_renewed(revision, now),
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                self.stats.renew_failures.fetch_add(1, Relaxed);
                tracing::error!(lan = %s.key, "cluster: another node holds the claim now; this node stops serving the LAN");
                return Some(End::Lost);
            }
            Ok(Err(e)) => {
                self.stats.renew_failures.fetch_add(1, Relaxed);
                tracing::warn!(lan = %s.key, "cluster: renewing the claim failed: {e}");
            }
            Err(_) => {
                self.stats.renew_failures.fetch_add(1, Relaxed);
                tracing::warn!(lan = %s.key, "cluster: renewing the claim timed out");
            }
        }
        if s.dirty {
            match self
                .store_leases(&s.key, &s.lease_changes, &mut s.lease_revision)
                .await
            {
                LeaseWrite::Stored => s.dirty = false,
                LeaseWrite::Failed => {}
                LeaseWrite::Fenced => return Some(End::Lost),
            }
        }
        None
    }

    /// After serving: count a lost claim, or hand the final leases and then the claim over
    /// so the next node starts with every address that was given out.
    async fn finish(&self, lan: &Arc<Lan>, end: End, s: &mut Serving) {
        match end {
            End::Lost => {
                self.stats.claims_lost.fetch_add(1, Relaxed);
            }
            End::Removed | End::Drained => {
                self.store_leases(&s.key, &s.lease_changes, &mut s.lease_revision)
                    .await;
                let _ = self
                    .owners
                    .delete_expect_revision(&s.key, Some(s.claim.revision))
                    .await;
                if matches!(end, End::Drained) {
                    self.stats.claims_handed_over.fetch_add(1, Relaxed);
                    tracing::info!(lan = %s.key, "cluster: LAN handed over (drain)");
                }
            }
        }
        self.set_role(lan, LanRole::default());
        if !matches!(end, End::Removed) {
            self.registry.release_service(lan);
        }
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
