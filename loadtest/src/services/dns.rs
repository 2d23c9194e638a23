//! `dns` mode: every VM takes a DHCP lease, then keeps A queries in flight to the LAN's DNS.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use bytes::Bytes;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;

use super::dhcp::{DhcpCounters, HandshakeStats, Lease, handshake, xid};
use super::vm::{Vm, connect_all};
use super::{CpuSample, CpuUse, DnsNames, DnsReport, in_flight};
use crate::packets::{self, ResponseCode};
use crate::report::base_report;
use crate::{Args, Errors, Latency, Report, new_histogram, secs};

/// UDP source port of every VM's DNS queries.
const DNS_CLIENT_PORT: u16 = 40_000;

#[derive(Default)]
struct DnsCounters {
    sent: u64,
    answered: u64,
    noerror: u64,
    noerror_empty: u64,
    refused: u64,
    servfail: u64,
    other_rcode: u64,
    lost: u64,
}

impl DnsCounters {
    fn add(&mut self, o: &DnsCounters) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.noerror += o.noerror;
        self.noerror_empty += o.noerror_empty;
        self.refused += o.refused;
        self.servfail += o.servfail;
        self.other_rcode += o.other_rcode;
        self.lost += o.lost;
    }
}

/// The measurement window, shared by every VM.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
    hard_end: Instant,
}

impl Window {
    /// Opens after `--warmup`, lasts `--duration`; answers are awaited `--drain` longer.
    fn from_now(args: &Args) -> Window {
        let now = Instant::now();
        Window {
            start: now + secs(args.warmup),
            end: now + secs(args.warmup) + secs(args.duration),
            hard_end: now + secs(args.warmup) + secs(args.duration) + secs(args.drain),
        }
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

struct DnsPlan {
    names: DnsNames,
    domain: String,
    nonce: String,
    in_flight: usize,
    reply_timeout: Duration,
}

impl DnsPlan {
    fn name(&self, vm: u32, seq: u64) -> String {
        match self.names {
            DnsNames::Cached => format!("www.{}.", self.domain),
            DnsNames::Uncached => format!("q{}-{vm}-{seq}.{}.", self.nonce, self.domain),
        }
    }
}

/// A query waiting for its answer.
#[derive(Clone, Copy)]
struct Outstanding {
    id: u16,
    sent: Instant,
}

/// One VM's queries in flight and what came of those sent inside the window.
struct Querier<'a> {
    plan: &'a DnsPlan,
    lease: Lease,
    window: Window,
    counters: DnsCounters,
    hist: Histogram<u64>,
    slots: Vec<Option<Outstanding>>,
    next_id: u16,
    seq: u64,
}

/// Keeps `plan.in_flight` queries outstanding until the window ends, then waits for the
/// last answers. Counts only queries sent inside the window.
async fn query_loop(
    vm: &mut Vm,
    lease: Lease,
    plan: &DnsPlan,
    window: Window,
) -> anyhow::Result<(DnsCounters, Histogram<u64>)> {
    let mut querier = Querier {
        plan,
        lease,
        window,
        counters: DnsCounters::default(),
        hist: new_histogram(),
        slots: vec![None; plan.in_flight],
        next_id: (vm.index as u16).wrapping_mul(7919),
        seq: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let now = Instant::now();
        if now < window.end {
            querier.fill(vm).await?;
        } else if querier.slots.iter().all(Option::is_none) || now >= window.hard_end {
            break;
        }
        tokio::select! {
            frame = vm.frames.recv() => {
                let Some(frame) = frame else { bail!("relay connection closed") };
                querier.on_frame(&frame);
            }
            _ = tick.tick() => querier.expire(Instant::now()),
            _ = sleep_until(window.hard_end.into()) => {}
        }
    }
    Ok(querier.finish())
}

impl Querier<'_> {
    /// Our UDP endpoint: the leased address and the fixed client port.
    fn me(&self) -> (Ipv4Addr, u16) {
        (self.lease.ip, DNS_CLIENT_PORT)
    }

    /// Sends a query for every free slot, in one flush.
    async fn fill(&mut self, vm: &mut Vm) -> anyhow::Result<()> {
        let mut fed = false;
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let Some(query) = packets::dns_query(id, &self.plan.name(vm.index, self.seq)) else {
                bail!(
                    "--dns-domain {:?} is not a valid DNS name",
                    self.plan.domain
                );
            };
            self.seq += 1;
            let frame = packets::udp_frame(
                vm.mac,
                self.lease.gateway_mac,
                self.me(),
                (self.lease.dns, packets::DNS_PORT),
                &query,
            );
            vm.sink.feed(Message::Binary(Bytes::from(frame))).await?;
            fed = true;
            let sent = Instant::now();
            if self.window.contains(sent) {
                self.counters.sent += 1;
            }
            self.slots[i] = Some(Outstanding { id, sent });
        }
        if fed {
            vm.sink.flush().await?;
        }
        Ok(())
    }

    /// Frees the slot a DNS answer is for, and counts it if its query was in the window.
    fn on_frame(&mut self, frame: &[u8]) {
        let Some(answer) = packets::parse_dns_answer(frame, self.lease.dns, self.me()) else {
            return;
        };
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|o| o.id == answer.id))
        else {
            return; // late answer to a query already counted lost
        };
        let Some(o) = slot.take() else { return };
        if !self.window.contains(o.sent) {
            return;
        }
        let counters = &mut self.counters;
        counters.answered += 1;
        self.hist
            .saturating_record(o.sent.elapsed().as_nanos() as u64);
        match answer.rcode {
            ResponseCode::NoError if answer.answers > 0 => counters.noerror += 1,
            ResponseCode::NoError => counters.noerror_empty += 1,
            ResponseCode::Refused => counters.refused += 1,
            ResponseCode::ServFail => counters.servfail += 1,
            _ => counters.other_rcode += 1,
        }
    }

    /// Gives up on queries unanswered for `--reply-timeout`: lost, if sent in the window.
    fn expire(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if let Some(o) = *slot
                && now.duration_since(o.sent) >= self.plan.reply_timeout
            {
                *slot = None;
                if self.window.contains(o.sent) {
                    self.counters.lost += 1;
                }
            }
        }
    }

    /// Queries still unanswered at the end are lost.
    fn finish(mut self) -> (DnsCounters, Histogram<u64>) {
        for o in self.slots.into_iter().flatten() {
            if self.window.contains(o.sent) {
                self.counters.lost += 1;
            }
        }
        (self.counters, self.hist)
    }
}

fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()))
}

/// What every VM's task shares.
struct DnsRun {
    /// DHCP handshakes in flight at once while the VMs get their leases.
    lease_permits: Semaphore,
    errors: Arc<Errors>,
    plan: DnsPlan,
}

/// A VM (to close it) and, if it got a lease and its queries ran, what they measured.
type VmQueries = (Vm, Option<(DnsCounters, Histogram<u64>)>);

/// CPU use over the measurement window.
struct WindowCpu {
    relay: Option<CpuUse>,
    upstream: Option<CpuUse>,
    loadgen: Option<CpuUse>,
}

pub(crate) async fn run_dns(args: &Args) -> anyhow::Result<Report> {
    let errors = Arc::new(Errors::default());
    let (vms, connect_seconds) = connect_all(args, &errors).await;
    let connected = vms.iter().flatten().count() as u64;
    eprintln!(
        "connected {connected}/{} in {connect_seconds:.2} s",
        args.clients
    );
    let plan = dns_plan(args)?;
    // Leases first (at most 64 handshakes at once), then everyone queries together.
    let run = Arc::new(DnsRun {
        lease_permits: Semaphore::new(64),
        errors: errors.clone(),
        plan,
    });
    let (window_tx, window_rx) = watch::channel::<Option<Window>>(None);
    let (leased_tx, leased_rx) = mpsc::unbounded_channel::<bool>();
    let tasks: Vec<_> = vms
        .into_iter()
        .flatten()
        .map(|vm| {
            let task = lease_then_query(vm, run.clone(), leased_tx.clone(), window_rx.clone());
            tokio::spawn(task)
        })
        .collect();
    drop(leased_tx);
    let with_lease = count_leases(leased_rx, tasks.len()).await;
    eprintln!("{with_lease}/{connected} VMs have a lease; querying");
    let window = Window::from_now(args);
    let _ = window_tx.send(Some(window));
    sleep_until(window.start.into()).await;
    let relay_cpu = CpuSample::start(args.relay_pid);
    let upstream_cpu = CpuSample::start(args.upstream_pid);
    let own_cpu = CpuSample::start(Some(std::process::id()));
    sleep_until(window.end.into()).await;
    let cpu = WindowCpu {
        relay: relay_cpu.and_then(CpuSample::finish),
        upstream: upstream_cpu.and_then(CpuSample::finish),
        loadgen: own_cpu.and_then(CpuSample::finish),
    };
    let (total, hist) = collect(tasks).await;
    let (error_count, error_samples) = errors.take();
    Ok(Report {
        connected,
        connect_failed: u64::from(args.clients) - connected,
        connect_seconds,
        errors: error_count,
        error_samples,
        dns: Some(dns_report(args, &run.plan, with_lease, &total, &hist, cpu)),
        ..base_report(args)
    })
}

/// The names and pacing of the queries; fails if `--dns-domain` makes no valid name.
fn dns_plan(args: &Args) -> anyhow::Result<DnsPlan> {
    let plan = DnsPlan {
        names: args.dns_names,
        domain: args.dns_domain.trim_end_matches('.').to_owned(),
        nonce: run_nonce(),
        in_flight: in_flight(args, 8) as usize,
        reply_timeout: secs(args.reply_timeout),
    };
    if packets::dns_query(0, &plan.name(0, 0)).is_none() {
        bail!(
            "--dns-domain {:?} is not a valid DNS name; use something like bench.test",
            args.dns_domain
        );
    }
    Ok(plan)
}

/// One VM: a DHCP lease (reported on `leased_tx`), then queries in the common window.
/// `leased_tx` is held until the queries are done, so the run counts reports instead of
/// waiting for the channel to close.
async fn lease_then_query(
    mut vm: Vm,
    run: Arc<DnsRun>,
    leased_tx: mpsc::UnboundedSender<bool>,
    mut window_rx: watch::Receiver<Option<Window>>,
) -> VmQueries {
    let lease = {
        let _permit = run.lease_permits.acquire().await;
        let mut stats = HandshakeStats::default();
        let id = xid(vm.index, 0);
        handshake(&mut vm, id, run.plan.reply_timeout, &mut stats).await
    };
    let lease = match lease {
        Ok(lease) => lease,
        Err(e) => {
            DhcpCounters::default().record(vm.index, &Err(e), &run.errors);
            let _ = leased_tx.send(false);
            return (vm, None);
        }
    };
    let _ = leased_tx.send(true);
    let Ok(window) = window_rx.wait_for(Option::is_some).await.map(|w| *w) else {
        return (vm, None);
    };
    let Some(window) = window else {
        return (vm, None);
    };
    let result = query_loop(&mut vm, lease, &run.plan, window).await;
    match result {
        Ok(r) => (vm, Some(r)),
        Err(e) => {
            run.errors.push(format!("client {}: {e:#}", vm.index));
            (vm, None)
        }
    }
}

/// How many of `vms` got a lease.
async fn count_leases(mut leased_rx: mpsc::UnboundedReceiver<bool>, vms: usize) -> u64 {
    let mut with_lease = 0u64;
    for _ in 0..vms {
        match leased_rx.recv().await {
            Some(ok) => with_lease += u64::from(ok),
            None => break,
        }
    }
    with_lease
}

/// Waits for every VM's task, sums what they measured and closes the VMs.
async fn collect(tasks: Vec<JoinHandle<VmQueries>>) -> (DnsCounters, Histogram<u64>) {
    let mut total = DnsCounters::default();
    let mut hist = new_histogram();
    let mut vms = Vec::new();
    for task in tasks {
        if let Ok((vm, result)) = task.await {
            if let Some((c, h)) = result {
                total.add(&c);
                let _ = hist.add(&h);
            }
            vms.push(vm);
        }
    }
    for vm in vms {
        vm.close().await;
    }
    (total, hist)
}

fn dns_report(
    args: &Args,
    plan: &DnsPlan,
    with_lease: u64,
    total: &DnsCounters,
    hist: &Histogram<u64>,
    cpu: WindowCpu,
) -> DnsReport {
    let relay_cpu_us_per_query = cpu
        .relay
        .as_ref()
        .filter(|_| total.answered > 0)
        .map(|c| c.cpu_seconds * 1e6 / total.answered as f64);
    DnsReport {
        names: format!("{:?}", args.dns_names).to_lowercase(),
        in_flight_per_vm: plan.in_flight as u32,
        vms_with_lease: with_lease,
        sent: total.sent,
        answered: total.answered,
        noerror: total.noerror,
        noerror_empty: total.noerror_empty,
        refused: total.refused,
        servfail: total.servfail,
        other_rcode: total.other_rcode,
        lost: total.lost,
        answers_per_s: total.answered as f64 / args.duration,
        latency: Latency::of(hist),
        relay_cpu: cpu.relay,
        relay_cpu_us_per_query,
        upstream_cpu: cpu.upstream,
        loadgen_cpu: cpu.loadgen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fixed_or_fresh() {
        let plan = |names| DnsPlan {
            names,
            domain: "bench.test".to_owned(),
            nonce: "ab".to_owned(),
            in_flight: 1,
            reply_timeout: Duration::from_secs(1),
        };
        let cached = plan(DnsNames::Cached);
        assert_eq!(cached.name(1, 1), cached.name(2, 9));
        let fresh = plan(DnsNames::Uncached);
        assert_eq!(fresh.name(3, 4), "qab-3-4.bench.test.");
        assert_ne!(fresh.name(3, 4), fresh.name(3, 5));
    }
}
