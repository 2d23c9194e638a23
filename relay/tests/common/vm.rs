//! VM-like namespaces: a bare TAP device that gets its address from the relay's DHCP with
//! busybox udhcpc, and a scratch directory for their files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::time::Duration;

use super::netns::{Netns, Proc, free_port, run};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("v86t-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with a bare TAP device (no address: DHCP gives it one).
pub fn vm(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
    ns.ip(&["link", "set", "tap0", "up"]);
    ns
}

/// Writes the udhcpc hook: configures tap0 and records what the server sent.
pub fn udhcpc_script(dir: &Path) -> PathBuf {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    env | grep -E '^(ip|mask|router|dns|domain|mtu|lease|serverid|hostname)=' > "$UDHCPC_OUT"
    ;;
esac
exit 0
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

pub fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs busybox udhcpc once in `ns` (optionally with a host name); returns its variables.
pub fn udhcpc(
    ns: &Netns,
    dir: &Path,
    host: Option<&str>,
    extra: &[&str],
) -> HashMap<String, String> {
    let script = udhcpc_script(dir);
    let out = dir.join(format!("{}.env", ns.name));
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["ip", "netns", "exec", &ns.name, "env"];
    let out_var = format!("UDHCPC_OUT={}", out.display());
    args.push(&out_var);
    args.extend([
        "busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5", "-T", "1",
    ]);
    args.extend(["-s", script.to_str().unwrap()]);
    let host_opt;
    if let Some(host) = host {
        host_opt = format!("hostname:{host}");
        args.extend(["-x", &host_opt]);
    }
    args.extend_from_slice(extra);
    let result = run(&args);
    assert!(
        result.status.success(),
        "udhcpc failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    read_env(&out)
}

pub fn dig(ns: &Netns, name: &str) -> String {
    dig_with(ns, name, &[])
}

/// `dig` with extra options, e.g. `+tcp`.
pub fn dig_with(ns: &Netns, name: &str, options: &[&str]) -> String {
    let mut args = vec!["dig", "@10.0.2.3", "+short", "+time=3", "+tries=1"];
    args.extend_from_slice(options);
    args.push(name);
    let out = ns.exec(&args);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// dnsmasq on loopback as the "internet" DNS: knows only the given names.
pub fn upstream_dns(dir: &Path, names: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args(["--listen-address=127.0.0.1", &format!("--port={port}")])
        .args(
            names
                .iter()
                .map(|(name, ip)| format!("--address=/{name}/{ip}")),
        )
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg("--user=root")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (apt package dnsmasq-base)");
    std::thread::sleep(Duration::from_millis(300));
    (Proc(child), port)
}
