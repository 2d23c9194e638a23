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

use std::time::Instant;

use clap::ValueEnum;
use serde::Serialize;

use crate::{Args, Latency, Report};

mod dhcp;
mod dns;
mod vm;

pub(crate) use dhcp::run_dhcp;
pub(crate) use dns::run_dns;

/// Which names the `dns` mode asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsNames {
    /// One name (`www.DOMAIN`) for every query: cache hits after the first.
    Cached,
    /// A new name for every query (`qNONCE-VM-SEQ.DOMAIN`): every query goes upstream.
    Uncached,
}

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

fn in_flight(args: &Args, default: u32) -> u32 {
    args.in_flight.unwrap_or(default).max(1)
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
}
