//! The "internet" side of NAT tests: a namespace behind a veth pair on 198.18.0.0/15, and
//! a relay with metrics plus a VM namespace that has its DHCP lease.

use std::time::{Duration, Instant};

use super::netns::*;
use super::vm::*;

/// An "internet" namespace behind a veth pair: the host side is 198.18.N.1/24 (one of the
/// relay host's own addresses), the namespace 198.18.N.2/24.
pub struct Internet {
    pub ns: Netns,
    pub host_if: String,
    pub n: u8,
}

impl Internet {
    pub fn new(tag: &str, n: u8) -> Internet {
        let ns = Netns::new(tag);
        let host_if = format!("v86v{}{n}", std::process::id() % 10000);
        let peer = format!("{host_if}p");
        let _ = run(&["ip", "link", "del", &host_if]);
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        must(&["ip", "link", "set", &peer, "netns", &ns.name]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &host_if,
        ]);
        must(&["ip", "link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", &peer]);
        ns.ip(&["link", "set", &peer, "up"]);
        Internet { ns, host_if, n }
    }

    pub fn addr(&self) -> String {
        format!("198.18.{}.2", self.n)
    }

    /// A process inside the namespace, killed by PID on drop.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        self.ns.spawn_proc(args)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// Waits until `ns` accepts TCP on `addr:port` (from inside `ns`).
pub fn wait_listening(ns: &Netns, addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = format!("{addr}:{port}");
    loop {
        let ok = ns
            .spawn({
                let target = target.clone();
                move || {
                    std::net::TcpStream::connect_timeout(
                        &target.parse().unwrap(),
                        Duration::from_millis(300),
                    )
                    .is_ok()
                }
            })
            .join()
            .unwrap();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {target}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn metrics(port: u16) -> String {
    let out = run(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {name} in metrics")) as u64
}

/// Polls /metrics until the TCP flow gauge and the host task gauge are both zero.
pub fn wait_no_flows(metrics_port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics(metrics_port);
        let flows = sample(&text, "v86_relay_nat_flows_active{protocol=\"tcp\"}");
        let tasks = sample(&text, "v86_relay_nat_host_tasks");
        if flows == 0 && tasks == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NAT state left behind: {flows} TCP flows, {tasks} host tasks"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A relay with metrics on, and a VM namespace on LAN `lan` that has its DHCP lease.
pub fn relay_and_vm(tag: &str, scratch: &Scratch, extra: &[&str]) -> (Proc, u16, u16, Netns, Proc) {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut args = vec!["--metrics-listen", &metrics_addr];
    args.extend_from_slice(extra);
    let (relay, port) = start_relay(&args);
    let ns = vm(tag);
    let tap = attach_tap(port, "nat", &ns);
    let lease = udhcpc(&ns, &scratch.0, Some(tag), &[]);
    assert_eq!(lease.get("router").map(String::as_str), Some("10.0.2.2"));
    (relay, port, metrics_port, ns, tap)
}

/// Writes `mib` MiB of xorshift bytes (nothing compresses them) to `path` and returns their
/// sha256 in hex, so a download can be checked end to end.
pub fn random_file(path: &std::path::Path, mib: usize, seed: u32) -> String {
    use sha2::Digest;
    use std::io::Write;
    let mut expected = sha2::Sha256::new();
    let mut file = std::fs::File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut x = seed;
    for _ in 0..mib {
        for byte in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *byte = x as u8;
        }
        expected.update(&block);
        file.write_all(&block).unwrap();
    }
    format!("{:x}", expected.finalize())
}
