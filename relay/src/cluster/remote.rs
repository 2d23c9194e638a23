//! Frames between nodes: the uplink of a LAN another node owns (local ports' frames to
//! the owner), the node's egress subscription (frames from owners to local ports), and
//! the owner's ingress, which gives every remote port a normal bounded port of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bus::wire::{self, Builder, Kind};
use bytes::Bytes;
use futures_util::StreamExt;
use switch::PortId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::stats::BusDrop;
use crate::lan::{Lan, Port, PortCounters, PortReceiver, Uplink};
use crate::shared::{LanName, Transport};

/// Frames of one LAN's local ports waiting for the bus; beyond, they are dropped and
/// counted (`bus_full`), as a full port queue would drop them.
const UPLINK_QUEUE: usize = 4096;
/// How often a non-owner lists its live ports of a LAN to the owner.
pub(super) const HELLO_EVERY: Duration = Duration::from_secs(1);
/// An owner forgets a remote port not heard of for this long (its node died or was cut).
const PROXY_SILENCE: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Up {
    Frame(PortId, Bytes),
    Left(PortId),
}

/// The uplink a LAN uses while another node owns it.
#[derive(Debug)]
pub(super) struct BusUplink {
    tx: mpsc::Sender<Up>,
}

impl Uplink for BusUplink {
    fn send(&self, port: PortId, frame: Bytes) -> bool {
        self.tx.try_send(Up::Frame(port, frame)).is_ok()
    }

    fn left(&self, port: PortId) {
        // When the queue is full the owner forgets the port after PROXY_SILENCE instead.
        let _ = self.tx.try_send(Up::Left(port));
    }
}

/// Starts the task that carries `lan`'s uplink frames to its owner, and the hellos.
pub(super) fn spawn_uplink(cluster: &Arc<Cluster>, lan: &Arc<Lan>) -> Arc<BusUplink> {
    let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
    cluster
        .tasks
        .spawn(run_uplink(cluster.clone(), lan.clone(), rx));
    Arc::new(BusUplink { tx })
}

async fn publish(cluster: &Cluster, subject: &str, builder: Builder, frames: bool) {
    let count = builder.len();
    let bytes = builder.finish();
    let len = bytes.len();
    match cluster.client.publish(subject.to_owned(), bytes).await {
        Ok(()) => cluster.stats.sent(if frames { count } else { 0 }, len),
        Err(e) => {
            tracing::debug!("cluster: publish to {subject} failed: {e}");
            cluster.stats.count_drop(
                BusDrop::PublishFailed,
                if frames { count as u64 } else { 1 },
            );
        }
    }
}

async fn run_uplink(cluster: Arc<Cluster>, lan: Arc<Lan>, mut rx: mpsc::Receiver<Up>) {
    let subject = cluster.ingress_subject(lan.name());
    let (node, name) = (cluster.node.clone(), lan.name().as_str().to_owned());
    let builder = |kind| Builder::new(kind, 0, &node, &name);
    let mut hello = tokio::time::interval(HELLO_EVERY);
    hello.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lan.removed() => break,
            up = rx.recv() => {
                let Some(up) = up else { break };
                // Whatever else queued goes in the same messages: batching under load.
                let (mut frames, mut byes) = (builder(Kind::Frames), builder(Kind::Bye));
                let mut next = Some(up);
                while let Some(up) = next.take() {
                    match up {
                        Up::Frame(port, frame) => frames.push(port.0, &frame),
                        Up::Left(port) => {
                            if byes.is_full() {
                                let full = std::mem::replace(&mut byes, builder(Kind::Bye));
                                publish(&cluster, &subject, full, false).await;
                            }
                            byes.push(port.0, &[]);
                        }
                    }
                    if frames.is_full() {
                        let full = std::mem::replace(&mut frames, builder(Kind::Frames));
                        publish(&cluster, &subject, full, true).await;
                    }
                    next = rx.try_recv().ok();
                }
                if !frames.is_empty() {
                    publish(&cluster, &subject, frames, true).await;
                }
                if !byes.is_empty() {
                    publish(&cluster, &subject, byes, false).await;
                }
            }
            _ = hello.tick() => {
                if !lan.has_uplink() {
                    continue;
                }
                let mut b = builder(Kind::Hello);
                for port in lan.client_ports() {
                    if b.is_full() {
                        let full = std::mem::replace(&mut b, builder(Kind::Hello));
                        publish(&cluster, &subject, full, false).await;
                    }
                    b.push(port.0, &[]);
                }
                if !b.is_empty() {
                    publish(&cluster, &subject, b, false).await;
                }
            }
        }
    }
}

/// Subscribes to this node's egress (`PREFIX.out.NODE.*`): frames from owners for local
/// ports.
pub(super) async fn spawn_egress(cluster: &Arc<Cluster>) -> Result<(), async_nats::SubscribeError> {
    let subject = format!("{}.out.{}.*", cluster.prefix, cluster.node);
    let mut sub = cluster.client.subscribe(subject).await?;
    let c = cluster.clone();
    cluster.tasks.spawn(async move {
        while let Some(message) = sub.next().await {
            handle_egress(&c, &message.payload);
        }
    });
    Ok(())
}

fn handle_egress(cluster: &Cluster, payload: &Bytes) {
    let message = match wire::decode(payload) {
        Ok(m) if m.kind == Kind::Frames => m,
        _ => return cluster.stats.count_drop(BusDrop::Malformed, 1),
    };
    let n = message.entries.len();
    cluster.stats.received(n, payload.len());
    let lan = LanName::new(&message.lan)
        .ok()
        .and_then(|name| cluster.registry.get(&name));
    let Some(lan) = lan else {
        return cluster.stats.count_drop(BusDrop::UnknownPort, n as u64);
    };
    let known = cluster
        .roles
        .lock()
        .ok()
        .and_then(|roles| roles.get(lan.name()).map(|r| r.epoch))
        .unwrap_or(0);
    if message.epoch < known {
        return cluster.stats.count_drop(BusDrop::StaleEpoch, n as u64);
    }
    for entry in message.entries {
        // A full queue is counted there (queue_full), as for a switched frame.
        lan.deliver_to(&cluster.registry, PortId(entry.port), entry.frame);
    }
}

/// The owner's side of LAN `lan`: listens on its ingress subject until `stop`.
pub(super) async fn start_ingress(
    cluster: &Arc<Cluster>,
    lan: &Arc<Lan>,
    epoch: u64,
) -> Result<CancellationToken, async_nats::SubscribeError> {
    let sub = cluster
        .client
        .subscribe(cluster.ingress_subject(lan.name()))
        .await?;
    let stop = CancellationToken::new();
    cluster.tasks.spawn(run_ingress(
        cluster.clone(),
        lan.clone(),
        epoch,
        sub,
        stop.clone(),
    ));
    Ok(stop)
}

/// A remote port as its owner holds it: a normal port of the LAN.
struct Proxy {
    port: Port,
    heard: Instant,
}

struct Ingress {
    cluster: Arc<Cluster>,
    lan: Arc<Lan>,
    epoch: u64,
    proxies: HashMap<(String, u64), Proxy>,
}

async fn run_ingress(
    cluster: Arc<Cluster>,
    lan: Arc<Lan>,
    epoch: u64,
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
) {
    let mut ingress = Ingress {
        cluster,
        lan,
        epoch,
        proxies: HashMap::new(),
    };
    let mut sweep = tokio::time::interval(HELLO_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ingress.lan.removed() => break,
            message = sub.next() => {
                let Some(message) = message else { break };
                ingress.handle(&message.payload);
            }
            _ = sweep.tick() => ingress.sweep(Instant::now()),
        }
    }
    let _ = sub.unsubscribe().await;
    ingress.proxies.clear();
    ingress.publish_count();
}

impl Ingress {
    fn handle(&mut self, payload: &Bytes) {
        let message = match wire::decode(payload) {
            Ok(m) if m.lan == self.lan.name().as_str() => m,
            _ => return self.cluster.stats.count_drop(BusDrop::Malformed, 1),
        };
        let frames = if message.kind == Kind::Frames {
            message.entries.len()
        } else {
            0
        };
        self.cluster.stats.received(frames, payload.len());
        if message.node == self.cluster.node {
            // Frames this node's uplink sent before it won the claim: its ports are local
            // now. Taken in, they would make a second port for one client (found by the
            // benchmark: a client's MAC moved to it and its partner saw translated frames).
            return self
                .cluster
                .stats
                .count_drop(BusDrop::OwnNode, frames as u64);
        }
        if self.lan.has_uplink() {
            return self
                .cluster
                .stats
                .count_drop(BusDrop::NotOwner, frames as u64);
        }
        let now = Instant::now();
        let before = self.proxies.len();
        for entry in message.entries {
            let key = (message.node.clone(), entry.port);
            if message.kind == Kind::Bye {
                self.proxies.remove(&key);
                continue;
            }
            let Some(proxy) = self.proxy(key) else {
                continue;
            };
            proxy.heard = now;
            if message.kind == Kind::Frames {
                proxy.port.ingress(now, entry.frame);
            }
        }
        if self.proxies.len() != before {
            self.publish_count();
        }
    }

    /// The port of remote port `key`, made on first sight.
    fn proxy(&mut self, key: (String, u64)) -> Option<&mut Proxy> {
        if !self.proxies.contains_key(&key) {
            let Some((port, queue)) = self
                .cluster
                .registry
                .join_existing(&self.lan, Transport::Cluster)
            else {
                self.cluster.stats.count_drop(BusDrop::LanFull, 1);
                return None;
            };
            tracing::debug!(lan = %self.lan.name(), "remote port {}:{} joined as {}", key.0, key.1, port.id());
            let subject = self.cluster.egress_subject(&key.0, key.1);
            self.cluster.tasks.spawn(run_writer(
                self.cluster.clone(),
                subject,
                queue,
                self.lan.name().as_str().to_owned(),
                self.epoch,
                key.1,
                port.counters_handle(),
            ));
            self.proxies.insert(
                key.clone(),
                Proxy {
                    port,
                    heard: Instant::now(),
                },
            );
        }
        self.proxies.get_mut(&key)
    }

    fn sweep(&mut self, now: Instant) {
        let before = self.proxies.len();
        self.proxies
            .retain(|_, p| now.duration_since(p.heard) < PROXY_SILENCE);
        if self.proxies.len() != before {
            self.publish_count();
        }
    }

    fn publish_count(&self) {
        if let Ok(mut roles) = self.cluster.roles.lock()
            && let Some(role) = roles.get_mut(self.lan.name())
        {
            let old = std::mem::replace(&mut role.remote_ports_served, self.proxies.len());
            self.cluster
                .stats
                .remote_ports_served
                .fetch_add(self.proxies.len() as i64 - old as i64, Relaxed);
        }
    }
}

/// Sends what the switch queued for one remote port to its node, batched.
async fn run_writer(
    cluster: Arc<Cluster>,
    subject: String,
    mut queue: PortReceiver,
    lan: String,
    epoch: u64,
    remote_port: u64,
    counters: Arc<PortCounters>,
) {
    while let Some(frame) = queue.recv().await {
        let mut b = Builder::new(Kind::Frames, epoch, &cluster.node, &lan);
        b.push(remote_port, &counters.outgoing(frame));
        while !b.is_full() {
            let Ok(frame) = queue.try_recv() else { break };
            b.push(remote_port, &counters.outgoing(frame));
        }
        publish(&cluster, &subject, b, true).await;
    }
}
