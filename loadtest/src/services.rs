//! `dhcp` and `dns` modes: synthetic VMs that talk to the gateway port of their LAN.
//!
//! - `dhcp`: every VM connects first; then all start together and each runs `--rounds`
//!   DISCOVER/OFFER/REQUEST/ACK handshakes with its own MAC, at most `--in-flight`
//!   handshakes at once over all VMs (closed loop). Latency is DISCOVER sent to ACK
//!   received, retransmissions included (after `--reply-timeout`, 4 tries per step).
//!   Round 2 and later are a rebooted VM asking again: the server offers its bound address.
//! - `dns`: every VM gets a lease by DHCP, then keeps `--in-flight` A queries outstanding
//!   to the LAN's DNS address over UDP, for `--warmup` + `--duration` seconds. `cached`
//!   asks one name over and over (answered from the relay's cache after the first);
//!   `uncached` asks a new name every time, so each query goes upstream.
//!
//! The relay's CPU (and an upstream's, `--upstream-pid`) is read from /proc/PID/stat over
//! the measured interval.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::packets::{self, DhcpType, ResponseCode};
use crate::{
    Args, Errors, Latency, Report, Ws, base_report, client_mac, connect, lan_url, new_histogram,
    secs,
};

/// Which names the `dns` mode asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsNames {
    /// One name (`www.DOMAIN`) for every query: cache hits after the first.
    Cached,
    /// A new name for every query (`qNONCE-VM-SEQ.DOMAIN`): every query goes upstream.
    Uncached,
}

/// Tries per DHCP step (first send plus retransmissions), like udhcpc's default 3 + 1.
const DHCP_TRIES: u32 = 4;
/// UDP source port of every VM's DNS queries.
const DNS_CLIENT_PORT: u16 = 40_000;
/// Frames addressed to one VM that wait for it; more are dropped (the VM is too slow).
const VM_QUEUE: usize = 1024;

/// CPU time of a process over the measured interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub pid: u32,
    /// User + system seconds spent during the interval.
    pub cpu_seconds: f64,
    /// Of one core: 100 % is one core busy all the time.
    pub percent_of_one_core: f64,
}

/// `dhcp` mode results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DhcpReport {
    pub rounds: u32,
    pub in_flight: u32,
    /// Handshakes that ended with an ACK.
    pub handshakes: u64,
    pub failed: u64,
    pub naks: u64,
    pub retransmissions: u64,
    /// From the common start to the last handshake's end.
    pub seconds: f64,
    pub handshakes_per_s: f64,
    /// DISCOVER sent to ACK received.
    pub latency: Latency,
    pub relay_cpu: Option<CpuUse>,
    /// Relay CPU time per handshake, microseconds.
    pub relay_cpu_us_per_handshake: Option<f64>,
    /// This load generator's own CPU: it shares the machine with the relay.
    pub loadgen_cpu: Option<CpuUse>,
}

/// `dns` mode results (queries sent inside the measurement window).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DnsReport {
    pub names: String,
    pub in_flight_per_vm: u32,
    pub vms_with_lease: u64,
    pub sent: u64,
    pub answered: u64,
    /// NOERROR with at least one record.
    pub noerror: u64,
    pub noerror_empty: u64,
    pub refused: u64,
    pub servfail: u64,
    pub other_rcode: u64,
    /// No answer within `--reply-timeout`.
    pub lost: u64,
    pub answers_per_s: f64,
    pub latency: Latency,
    pub relay_cpu: Option<CpuUse>,
    pub relay_cpu_us_per_query: Option<f64>,
    pub upstream_cpu: Option<CpuUse>,
    pub loadgen_cpu: Option<CpuUse>,
}

impl Latency {
    fn of(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
        Latency {
            samples: hist.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: hist.max() as f64 / 1000.0,
            mean_us: hist.mean() / 1000.0,
        }
    }
}

/// utime + stime of a process, in seconds (from /proc/PID/stat).
pub fn read_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture's user ABI.
    Some((utime + stime) as f64 / 100.0)
}

struct CpuSample {
    pid: u32,
    start: Option<f64>,
    at: Instant,
}

impl CpuSample {
    fn start(pid: Option<u32>) -> Option<CpuSample> {
        let pid = pid?;
        Some(CpuSample {
            pid,
            start: read_cpu_seconds(pid),
            at: Instant::now(),
        })
    }

    fn finish(self) -> Option<CpuUse> {
        let end = read_cpu_seconds(self.pid)?;
        let cpu_seconds = end - self.start?;
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Some(CpuUse {
            pid: self.pid,
            cpu_seconds,
            percent_of_one_core: cpu_seconds / wall * 100.0,
        })
    }
}

/// One synthetic VM: its socket's sending half and the frames addressed to its MAC.
struct Vm {
    index: u32,
    mac: [u8; 6],
    sink: SplitSink<Ws, Message>,
    frames: mpsc::Receiver<Bytes>,
    reader: JoinHandle<()>,
}

impl Vm {
    async fn connect(args: &Args, index: u32, errors: Arc<Errors>) -> anyhow::Result<Vm> {
        let url = lan_url(args, index % args.lans);
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let ws = connect(&url, cfg, secs(args.connect_timeout)).await?;
        let (sink, mut stream) = ws.split();
        let mac = client_mac(index);
        let (tx, frames) = mpsc::channel(VM_QUEUE);
        // Keeps reading whatever the VM is doing, so other VMs' broadcasts (DHCP floods the
        // LAN) never back up into the relay; only frames to our MAC are kept.
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(f)) if f.len() >= 6 && f[0..6] == mac => {
                        if tx.try_send(f).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.push(format!("client {index}: receive: {e}"));
                        return;
                    }
                }
            }
        });
        Ok(Vm {
            index,
            mac,
            sink,
            frames,
            reader,
        })
    }

    async fn send(&mut self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.sink.send(Message::Binary(Bytes::from(frame))).await?;
        Ok(())
    }

    /// The first frame `pick` accepts, or None at `deadline`.
    async fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        timeout_at(deadline.into(), async {
            loop {
                let frame = self.frames.recv().await?;
                if let Some(t) = pick(&frame) {
                    return Some(t);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.reader.abort();
    }
}

/// What a VM got from DHCP.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ip: Ipv4Addr,
    dns: Ipv4Addr,
    gateway_mac: [u8; 6],
}

#[derive(Debug, Default)]
struct HandshakeStats {
    retransmissions: u64,
}

enum HandshakeError {
    Nak,
    NoReply(&'static str),
    Send(anyhow::Error),
}

/// DISCOVER, OFFER, REQUEST, ACK, with retransmissions.
async fn handshake(
    vm: &mut Vm,
    xid: u32,
    reply_timeout: Duration,
    stats: &mut HandshakeStats,
) -> Result<Lease, HandshakeError> {
    let mac = vm.mac;
    let mut offer = None;
    for try_no in 0..DHCP_TRIES {
        if try_no > 0 {
            stats.retransmissions += 1;
        }
        vm.send(packets::dhcp_discover(mac, xid))
            .await
            .map_err(HandshakeError::Send)?;
        let deadline = Instant::now() + reply_timeout;
        offer = vm
            .wait_for(deadline, |f| {
                packets::parse_dhcp_reply(f, mac, xid).filter(|r| r.kind == DhcpType::Offer)
            })
            .await;
        if offer.is_some() {
            break;
        }
    }
    let offer = offer.ok_or(HandshakeError::NoReply("OFFER"))?;
    let server = offer.server_id.unwrap_or(Ipv4Addr::UNSPECIFIED);
    for try_no in 0..DHCP_TRIES {
        if try_no > 0 {
            stats.retransmissions += 1;
        }
        vm.send(packets::dhcp_request(mac, xid, offer.yiaddr, server))
            .await
            .map_err(HandshakeError::Send)?;
        let deadline = Instant::now() + reply_timeout;
        let reply = vm
            .wait_for(deadline, |f| {
                packets::parse_dhcp_reply(f, mac, xid)
                    .filter(|r| matches!(r.kind, DhcpType::Ack | DhcpType::Nak))
            })
            .await;
        match reply {
            Some(r) if r.kind == DhcpType::Ack => {
                return Ok(Lease {
                    ip: r.yiaddr,
                    dns: r.dns.or(offer.dns).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    gateway_mac: r.from_mac,
                });
            }
            Some(_) => return Err(HandshakeError::Nak),
            None => {}
        }
    }
    Err(HandshakeError::NoReply("ACK"))
}

/// A transaction id per VM and round (any value works; distinct ones keep replies apart).
fn xid(index: u32, round: u32) -> u32 {
    index.wrapping_mul(0x9e37_79b9) ^ round.wrapping_mul(0x85eb_ca6b) ^ 0x5bd1_e995
}

fn in_flight(args: &Args, default: u32) -> u32 {
    args.in_flight.unwrap_or(default).max(1)
}

/// Connects every VM (bounded concurrency); returns them by index, None where it failed.
async fn connect_all(args: &Args, errors: &Arc<Errors>) -> (Vec<Option<Vm>>, f64) {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        let (args, sem, errors) = (args.clone(), sem.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            Vm::connect(&args, i, errors).await
        }));
    }
    let mut vms = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(vm)) => vms.push(Some(vm)),
            Ok(Err(e)) => {
                errors.push(format!("client {i}: {e:#}"));
                vms.push(None);
            }
            Err(e) => {
                errors.push(format!("client {i}: {e}"));
                vms.push(None);
            }
        }
    }
    (vms, t0.elapsed().as_secs_f64())
}

#[derive(Default)]
struct DhcpCounters {
    handshakes: AtomicU64,
    failed: AtomicU64,
    naks: AtomicU64,
    retransmissions: AtomicU64,
}

impl DhcpCounters {
    fn record(&self, index: u32, result: &Result<Lease, HandshakeError>, errors: &Errors) {
        match result {
            Ok(_) => {
                self.handshakes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                match e {
                    HandshakeError::Nak => {
                        self.naks.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("client {index}: DHCPNAK"));
                    }
                    HandshakeError::NoReply(what) => errors.push(format!(
                        "client {index}: no DHCP {what} after {DHCP_TRIES} tries"
                    )),
                    HandshakeError::Send(e) => errors.push(format!("client {index}: send: {e}")),
                }
            }
        }
    }
}

pub(crate) async fn run_dhcp(args: &Args) -> anyhow::Result<Report> {
    let errors = Arc::new(Errors::default());
    let (vms, connect_seconds) = connect_all(args, &errors).await;
    let connected = vms.iter().flatten().count() as u64;
    eprintln!(
        "connected {connected}/{} in {connect_seconds:.2} s",
        args.clients
    );
    let in_flight = in_flight(args, 64);
    let rounds = args.rounds.max(1);
    let permits = Arc::new(Semaphore::new(in_flight as usize));
    let counters = Arc::new(DhcpCounters::default());
    let reply_timeout = secs(args.reply_timeout);
    let (start_tx, start_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for mut vm in vms.into_iter().flatten() {
        let (permits, counters, errors) = (permits.clone(), counters.clone(), errors.clone());
        let mut start_rx = start_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut last_end = None;
            let _ = start_rx.wait_for(|&go| go).await;
            for round in 0..rounds {
                let Ok(_permit) = permits.acquire().await else {
                    break;
                };
                let mut stats = HandshakeStats::default();
                let t0 = Instant::now();
                let id = xid(vm.index, round);
                let result = handshake(&mut vm, id, reply_timeout, &mut stats).await;
                let end = Instant::now();
                counters
                    .retransmissions
                    .fetch_add(stats.retransmissions, Ordering::Relaxed);
                counters.record(vm.index, &result, &errors);
                if result.is_ok() {
                    hist.saturating_record((end - t0).as_nanos() as u64);
                    last_end = Some(end);
                }
            }
            (vm, hist, last_end)
        }));
    }
    let cpu = CpuSample::start(args.relay_pid);
    let own_cpu = CpuSample::start(Some(std::process::id()));
    let start = Instant::now();
    let _ = start_tx.send(true);
    let mut hist = new_histogram();
    let mut last_end = start;
    let mut vms = Vec::new();
    for task in tasks {
        if let Ok((vm, h, end)) = task.await {
            let _ = hist.add(&h);
            last_end = last_end.max(end.unwrap_or(start));
            vms.push(vm);
        }
    }
    let relay_cpu = cpu.and_then(CpuSample::finish);
    let loadgen_cpu = own_cpu.and_then(CpuSample::finish);
    for vm in vms {
        vm.close().await;
    }
    let handshakes = counters.handshakes.load(Ordering::Relaxed);
    let seconds = (last_end - start).as_secs_f64();
    let relay_cpu_us_per_handshake = relay_cpu
        .as_ref()
        .filter(|_| handshakes > 0)
        .map(|c| c.cpu_seconds * 1e6 / handshakes as f64);
    let (error_count, error_samples) = errors.take();
    Ok(Report {
        connected,
        connect_failed: u64::from(args.clients) - connected,
        connect_seconds,
        errors: error_count,
        error_samples,
        dhcp: Some(DhcpReport {
            rounds,
            in_flight,
            handshakes,
            failed: counters.failed.load(Ordering::Relaxed),
            naks: counters.naks.load(Ordering::Relaxed),
            retransmissions: counters.retransmissions.load(Ordering::Relaxed),
            seconds,
            handshakes_per_s: if seconds > 0.0 {
                handshakes as f64 / seconds
            } else {
                0.0
            },
            latency: Latency::of(&hist),
            relay_cpu,
            relay_cpu_us_per_handshake,
            loadgen_cpu,
        }),
        ..base_report(args)
    })
}

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

/// Keeps `plan.in_flight` queries outstanding until the window ends, then waits for the
/// last answers. Counts only queries sent inside the window.
async fn query_loop(
    vm: &mut Vm,
    lease: Lease,
    plan: &DnsPlan,
    window: Window,
) -> anyhow::Result<(DnsCounters, Histogram<u64>)> {
    let mut counters = DnsCounters::default();
    let mut hist = new_histogram();
    let mut slots: Vec<Option<Outstanding>> = vec![None; plan.in_flight];
    let mut next_id: u16 = (vm.index as u16).wrapping_mul(7919);
    let mut seq = 0u64;
    let me = (lease.ip, DNS_CLIENT_PORT);
    let in_window = |t: Instant| t >= window.start && t < window.end;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let now = Instant::now();
        if now < window.end {
            let mut fed = false;
            for slot in slots.iter_mut().filter(|s| s.is_none()) {
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                let Some(query) = packets::dns_query(id, &plan.name(vm.index, seq)) else {
                    bail!("--dns-domain {:?} is not a valid DNS name", plan.domain);
                };
                seq += 1;
                let frame = packets::udp_frame(
                    vm.mac,
                    lease.gateway_mac,
                    me,
                    (lease.dns, packets::DNS_PORT),
                    &query,
                );
                vm.sink.feed(Message::Binary(Bytes::from(frame))).await?;
                fed = true;
                let sent = Instant::now();
                if in_window(sent) {
                    counters.sent += 1;
                }
                *slot = Some(Outstanding { id, sent });
            }
            if fed {
                vm.sink.flush().await?;
            }
        } else if slots.iter().all(Option::is_none) || now >= window.hard_end {
            break;
        }
        tokio::select! {
            frame = vm.frames.recv() => {
                let Some(frame) = frame else { bail!("relay connection closed") };
                let Some(answer) = packets::parse_dns_answer(&frame, lease.dns, me) else { continue };
                let Some(slot) = slots.iter_mut().find(|s| s.is_some_and(|o| o.id == answer.id)) else {
                    continue; // late answer to a query already counted lost
                };
                let Some(o) = slot.take() else { continue };
                if !in_window(o.sent) {
                    continue;
                }
                counters.answered += 1;
                hist.saturating_record(o.sent.elapsed().as_nanos() as u64);
                match answer.rcode {
                    ResponseCode::NoError if answer.answers > 0 => counters.noerror += 1,
                    ResponseCode::NoError => counters.noerror_empty += 1,
                    ResponseCode::Refused => counters.refused += 1,
                    ResponseCode::ServFail => counters.servfail += 1,
                    _ => counters.other_rcode += 1,
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for slot in &mut slots {
                    if let Some(o) = *slot && now.duration_since(o.sent) >= plan.reply_timeout {
                        *slot = None;
                        if in_window(o.sent) {
                            counters.lost += 1;
                        }
                    }
                }
            }
            _ = sleep_until(window.hard_end.into()) => {}
        }
    }
    for o in slots.into_iter().flatten() {
        if in_window(o.sent) {
            counters.lost += 1;
        }
    }
    Ok((counters, hist))
}

fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()))
}

pub(crate) async fn run_dns(args: &Args) -> anyhow::Result<Report> {
    let errors = Arc::new(Errors::default());
    let (vms, connect_seconds) = connect_all(args, &errors).await;
    let connected = vms.iter().flatten().count() as u64;
    eprintln!(
        "connected {connected}/{} in {connect_seconds:.2} s",
        args.clients
    );
    let plan = Arc::new(DnsPlan {
        names: args.dns_names,
        domain: args.dns_domain.trim_end_matches('.').to_owned(),
        nonce: run_nonce(),
        in_flight: in_flight(args, 8) as usize,
        reply_timeout: secs(args.reply_timeout),
    });
    if packets::dns_query(0, &plan.name(0, 0)).is_none() {
        bail!(
            "--dns-domain {:?} is not a valid DNS name; use something like bench.test",
            args.dns_domain
        );
    }
    // Leases first (at most 64 handshakes at once), then everyone queries together.
    let permits = Arc::new(Semaphore::new(64));
    let reply_timeout = secs(args.reply_timeout);
    let (window_tx, window_rx) = watch::channel::<Option<Window>>(None);
    let (leased_tx, mut leased_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::new();
    for mut vm in vms.into_iter().flatten() {
        let (permits, errors, plan, leased_tx) = (
            permits.clone(),
            errors.clone(),
            plan.clone(),
            leased_tx.clone(),
        );
        let mut window_rx = window_rx.clone();
        tasks.push(tokio::spawn(async move {
            let lease = {
                let _permit = permits.acquire().await;
                let mut stats = HandshakeStats::default();
                let id = xid(vm.index, 0);
                handshake(&mut vm, id, reply_timeout, &mut stats).await
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(e) => {
                    DhcpCounters::default().record(vm.index, &Err(e), &errors);
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
            let result = query_loop(&mut vm, lease, &plan, window).await;
            match result {
                Ok(r) => (vm, Some(r)),
                Err(e) => {
                    errors.push(format!("client {}: {e:#}", vm.index));
                    (vm, None)
                }
            }
        }));
    }
    drop(leased_tx);
    // Each task keeps its sender while it queries, so count answers rather than wait for
    // the channel to close.
    let mut with_lease = 0u64;
    for _ in 0..tasks.len() {
        match leased_rx.recv().await {
            Some(ok) => with_lease += u64::from(ok),
            None => break,
        }
    }
    eprintln!("{with_lease}/{connected} VMs have a lease; querying");
    let now = Instant::now();
    let window = Window {
        start: now + secs(args.warmup),
        end: now + secs(args.warmup) + secs(args.duration),
        hard_end: now + secs(args.warmup) + secs(args.duration) + secs(args.drain),
    };
    let _ = window_tx.send(Some(window));
    sleep_until(window.start.into()).await;
    let relay_cpu = CpuSample::start(args.relay_pid);
    let upstream_cpu = CpuSample::start(args.upstream_pid);
    let own_cpu = CpuSample::start(Some(std::process::id()));
    sleep_until(window.end.into()).await;
    let relay_cpu = relay_cpu.and_then(CpuSample::finish);
    let upstream_cpu = upstream_cpu.and_then(CpuSample::finish);
    let loadgen_cpu = own_cpu.and_then(CpuSample::finish);
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
    let relay_cpu_us_per_query = relay_cpu
        .as_ref()
        .filter(|_| total.answered > 0)
        .map(|c| c.cpu_seconds * 1e6 / total.answered as f64);
    let (error_count, error_samples) = errors.take();
    Ok(Report {
        connected,
        connect_failed: u64::from(args.clients) - connected,
        connect_seconds,
        errors: error_count,
        error_samples,
        dns: Some(DnsReport {
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
            latency: Latency::of(&hist),
            relay_cpu,
            relay_cpu_us_per_query,
            upstream_cpu,
            loadgen_cpu,
        }),
        ..base_report(args)
    })
}

/// Human-readable lines for the `dhcp` and `dns` parts of a report.
pub(crate) fn format_lines(r: &Report, out: &mut Vec<String>) {
    let cpu = |c: &Option<CpuUse>, what: &str| {
        c.as_ref().map(|c| {
            format!(
                "{what} CPU: {:.2} s = {:.0} % of one core",
                c.cpu_seconds, c.percent_of_one_core
            )
        })
    };
    let lat = |l: &Latency, what: &str| {
        format!(
            "{what} latency (us): p50 {:.0}  p99 {:.0}  p999 {:.0}  max {:.0}  mean {:.0}  (n={})",
            l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.samples
        )
    };
    if let Some(d) = &r.dhcp {
        out.push(format!(
            "dhcp: {} VMs in {} LANs ({} connected in {:.2} s), {} rounds, {} handshakes in flight",
            r.clients, r.lans, r.connected, r.connect_seconds, d.rounds, d.in_flight
        ));
        out.push(format!(
            "handshakes: {} ok, {} failed ({} NAK), {} retransmissions, in {:.3} s: {:.0} handshakes/s",
            d.handshakes, d.failed, d.naks, d.retransmissions, d.seconds, d.handshakes_per_s
        ));
        out.push(lat(&d.latency, "handshake (DISCOVER to ACK)"));
        if let Some(line) = cpu(&d.relay_cpu, "relay") {
            let per = d
                .relay_cpu_us_per_handshake
                .map_or(String::new(), |u| format!(", {u:.1} us per handshake"));
            out.push(line + &per);
        }
        if let Some(line) = cpu(&d.loadgen_cpu, "load generator") {
            out.push(line);
        }
    }
    if let Some(d) = &r.dns {
        out.push(format!(
            "dns ({}): {} VMs in {} LANs, {} with a lease, {} queries in flight per VM, {:.1} s measured",
            d.names, r.clients, r.lans, d.vms_with_lease, d.in_flight_per_vm, r.duration_s
        ));
        out.push(format!(
            "queries: sent {} answered {} (NOERROR {} + empty {}, REFUSED {}, SERVFAIL {}, other {}), lost {}: {:.0} answers/s",
            d.sent, d.answered, d.noerror, d.noerror_empty, d.refused, d.servfail, d.other_rcode, d.lost, d.answers_per_s
        ));
        out.push(lat(&d.latency, "query"));
        if let Some(line) = cpu(&d.relay_cpu, "relay") {
            let per = d
                .relay_cpu_us_per_query
                .map_or(String::new(), |u| format!(", {u:.1} us per answer"));
            out.push(line + &per);
        }
        if let Some(line) = cpu(&d.upstream_cpu, "upstream") {
            out.push(line);
        }
        if let Some(line) = cpu(&d.loadgen_cpu, "load generator") {
            out.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_self_is_readable() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(read_cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(read_cpu_seconds(u32::MAX).is_none());
    }

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

    #[test]
    fn xids_differ_per_vm_and_round() {
        assert_ne!(xid(0, 0), xid(1, 0));
        assert_ne!(xid(0, 0), xid(0, 1));
    }
}
