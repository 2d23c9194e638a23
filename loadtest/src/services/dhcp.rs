//! `dhcp` mode: closed-loop DISCOVER/OFFER/REQUEST/ACK handshakes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};

use super::vm::{Vm, connect_all};
use super::{CpuSample, CpuUse, DhcpReport, in_flight};
use crate::packets::{self, DhcpType};
use crate::report::base_report;
use crate::{Args, Errors, Latency, Report, new_histogram, secs};

/// Tries per DHCP step (first send plus retransmissions), like udhcpc's default 3 + 1.
const DHCP_TRIES: u32 = 4;

/// What a VM got from DHCP.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    pub(super) ip: Ipv4Addr,
    pub(super) dns: Ipv4Addr,
    pub(super) gateway_mac: [u8; 6],
}

#[derive(Debug, Default)]
pub(super) struct HandshakeStats {
    retransmissions: u64,
}

pub(super) enum HandshakeError {
    Nak,
    NoReply(&'static str),
    Send(anyhow::Error),
}

/// DISCOVER, OFFER, REQUEST, ACK, with retransmissions.
pub(super) async fn handshake(
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
pub(super) fn xid(index: u32, round: u32) -> u32 {
    index.wrapping_mul(0x9e37_79b9) ^ round.wrapping_mul(0x85eb_ca6b) ^ 0x5bd1_e995
}

#[derive(Default)]
pub(super) struct DhcpCounters {
    handshakes: AtomicU64,
    failed: AtomicU64,
    naks: AtomicU64,
    retransmissions: AtomicU64,
}

impl DhcpCounters {
    pub(super) fn record(
        &self,
        index: u32,
        result: &Result<Lease, HandshakeError>,
        errors: &Errors,
    ) {
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

/// What every VM's handshake task shares.
struct DhcpRun {
    rounds: u32,
    /// Handshakes in flight at once, over all VMs.
    permits: Semaphore,
    counters: DhcpCounters,
    errors: Arc<Errors>,
    reply_timeout: Duration,
}

/// One VM's handshakes: the VM (to close it), their latencies, when the last one ended.
type VmRounds = (Vm, Histogram<u64>, Option<Instant>);

pub(crate) async fn run_dhcp(args: &Args) -> anyhow::Result<Report> {
    let errors = Arc::new(Errors::default());
    let (vms, connect_seconds) = connect_all(args, &errors).await;
    let connected = vms.iter().flatten().count() as u64;
    eprintln!(
        "connected {connected}/{} in {connect_seconds:.2} s",
        args.clients
    );
    let in_flight = in_flight(args, 64);
    let run = Arc::new(DhcpRun {
        rounds: args.rounds.max(1),
        permits: Semaphore::new(in_flight as usize),
        counters: DhcpCounters::default(),
        errors: errors.clone(),
        reply_timeout: secs(args.reply_timeout),
    });
    let (start_tx, start_rx) = watch::channel(false);
    let tasks: Vec<_> = vms
        .into_iter()
        .flatten()
        .map(|vm| tokio::spawn(vm_rounds(vm, run.clone(), start_rx.clone())))
        .collect();
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
    let seconds = (last_end - start).as_secs_f64();
    let (error_count, error_samples) = errors.take();
    Ok(Report {
        connected,
        connect_failed: u64::from(args.clients) - connected,
        connect_seconds,
        errors: error_count,
        error_samples,
        dhcp: Some(run.report(in_flight, seconds, &hist, relay_cpu, loadgen_cpu)),
        ..base_report(args)
    })
}

/// `rounds` handshakes, one after the other, once the common start is given; each waits
/// for a permit so at most `--in-flight` run at once over all VMs.
async fn vm_rounds(mut vm: Vm, run: Arc<DhcpRun>, mut start_rx: watch::Receiver<bool>) -> VmRounds {
    let mut hist = new_histogram();
    let mut last_end = None;
    let _ = start_rx.wait_for(|&go| go).await;
    for round in 0..run.rounds {
        let Ok(_permit) = run.permits.acquire().await else {
            break;
        };
        let mut stats = HandshakeStats::default();
        let t0 = Instant::now();
        let id = xid(vm.index, round);
        let result = handshake(&mut vm, id, run.reply_timeout, &mut stats).await;
        let end = Instant::now();
        run.counters
            .retransmissions
            .fetch_add(stats.retransmissions, Ordering::Relaxed);
        run.counters.record(vm.index, &result, &run.errors);
        if result.is_ok() {
            hist.saturating_record((end - t0).as_nanos() as u64);
            last_end = Some(end);
        }
    }
    (vm, hist, last_end)
}

impl DhcpRun {
    /// `seconds` runs from the common start to the end of the last handshake.
    fn report(
        &self,
        in_flight: u32,
        seconds: f64,
        hist: &Histogram<u64>,
        relay_cpu: Option<CpuUse>,
        loadgen_cpu: Option<CpuUse>,
    ) -> DhcpReport {
        let handshakes = self.counters.handshakes.load(Ordering::Relaxed);
        let relay_cpu_us_per_handshake = relay_cpu
            .as_ref()
            .filter(|_| handshakes > 0)
            .map(|c| c.cpu_seconds * 1e6 / handshakes as f64);
        DhcpReport {
            rounds: self.rounds,
            in_flight,
            handshakes,
            failed: self.counters.failed.load(Ordering::Relaxed),
            naks: self.counters.naks.load(Ordering::Relaxed),
            retransmissions: self.counters.retransmissions.load(Ordering::Relaxed),
            seconds,
            handshakes_per_s: if seconds > 0.0 {
                handshakes as f64 / seconds
            } else {
                0.0
            },
            latency: Latency::of(hist),
            relay_cpu,
            relay_cpu_us_per_handshake,
            loadgen_cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xids_differ_per_vm_and_round() {
        assert_ne!(xid(0, 0), xid(1, 0));
        assert_ne!(xid(0, 0), xid(0, 1));
    }
}
