//! `dns` mode: every VM takes a DHCP lease, then keeps A queries in flight to the LAN's DNS.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use bytes::Bytes;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;

use super::dhcp::{DhcpCounters, HandshakeStats, Lease, handshake, xid};
use super::vm::{Vm, connect_all};
use super::{CpuSample, DnsNames, DnsReport, in_flight};
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
