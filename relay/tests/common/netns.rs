//! Real Linux network stacks for tests: network namespaces whose TAP device is attached to
//! a relay LAN with `v86-relay tap`. Everything made here is removed on drop; processes are
//! killed by PID.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when the test may use namespaces. Without root it skips with a message, unless
/// `V86_RELAY_REQUIRE_ROOT=1` (set by `.ci/run`) turns the skip into a failure.
pub fn root_or_skip(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if uid.as_ref().is_ok_and(|out| out == b"0\n") {
        return true;
    }
    if std::env::var("V86_RELAY_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{test} needs root for network namespaces and TAP devices, and V86_RELAY_REQUIRE_ROOT=1 forbids skipping it"
        );
    }
    eprintln!(
        "SKIPPED {test}: needs root for network namespaces and TAP devices (run the tests as root)"
    );
    false
}

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a TAP device `tap0` holding `cidr`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("v86t-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn with_tap(tag: &str, cidr: &str) -> Netns {
        let ns = Netns::new(tag);
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.ip(&["addr", "add", cidr, "dev", "tap0"]);
        ns.ip(&["link", "set", "tap0", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        must(&full);
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Pings `addr` until it answers or `within` passes.
    pub fn ping_ok(&self, addr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .exec(&["ping", "-c", "1", "-W", "1", addr])
                .status
                .success()
            {
                return true;
            }
        }
        false
    }

    /// A process inside this namespace (output discarded), killed by PID on drop.
    pub fn spawn_proc(&self, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        Proc(child)
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live here).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A child process killed (by PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn relay_bin() -> &'static str {
    env!("CARGO_BIN_EXE_v86-relay")
}

/// A free loopback port (bound then released; the relay binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the relay binary on loopback with extra flags; waits until it accepts.
pub fn start_relay(extra: &[&str]) -> (Proc, u16) {
    start_relay_bin(relay_bin(), extra)
}

/// As [`start_relay`], with another build of the relay (a benchmark's release build).
pub fn start_relay_bin(bin: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(bin);
    command.args(["--listen", &listen]);
    if !extra.contains(&"--metrics-listen") {
        command.args(["--metrics-listen", "off"]);
    }
    let child = command
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("start relay");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The metrics listener (admin API) binds a little after the client one.
    let metrics = extra
        .iter()
        .position(|a| *a == "--metrics-listen")
        .and_then(|i| extra.get(i + 1))
        .filter(|addr| **addr != "off");
    for addr in std::iter::once(listen.as_str()).chain(metrics.copied()) {
        while !super::accepts(addr) {
            assert!(Instant::now() < deadline, "relay did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (proc, port)
}

/// iperf3 from `client` to `server_ip` for `secs`; the receiver's Mbit/s.
pub fn iperf3_mbits(client: &Netns, server_ip: &str, secs: u32) -> f64 {
    let secs = secs.to_string();
    let out = client.exec(&["iperf3", "-c", server_ip, "-t", &secs, "-J"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
        / 1e6
}

/// `v86-relay tap` attaching `ns`'s tap0 to LAN `lan`.
pub fn attach_tap(port: u16, lan: &str, ns: &Netns) -> Proc {
    attach_tap_path(port, &format!("/lan/{lan}"), ns)
}

/// `v86-relay tap` attaching `ns`'s tap0 to the join URL path `path` (`/` is the default LAN).
pub fn attach_tap_path(port: u16, path: &str, ns: &Netns) -> Proc {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let child = Command::new(relay_bin())
        .args(["tap", "--url", &url, "--dev", "tap0", "--netns", &ns.name])
        .stdout(Stdio::null())
        .spawn()
        .expect("start v86-relay tap");
    Proc(child)
}
