//! The gateway against real clients: busybox udhcpc and ISC dhclient in network namespaces
//! attached with `v86-relay tap`, `ping`, and `dig` through the DNS proxy to a dnsmasq
//! upstream on loopback. Needs root; skips without it (fails under V86_RELAY_REQUIRE_ROOT=1).

mod common;

use std::time::Duration;

use common::netns::*;
use common::vm::*;

#[test]
fn udhcpc_and_dhclient_get_leases_ping_the_gateway_and_resolve_names() {
    if !root_or_skip("udhcpc_and_dhclient_get_leases") {
        return;
    }
    let dir = Scratch::new("gw");
    let (_dns, dns_port) = upstream_dns(&dir.0, &[("www.example.test", "198.18.0.7")]);
    let upstream = format!("127.0.0.1:{dns_port}");
    let (_relay, port) = start_relay(&["--dns-upstream", &upstream]);
    let alice = vm("alice");
    let bob = vm("bob");
    let eve = vm("eve");
    let _taps = [
        attach_tap(port, "t", &alice),
        attach_tap(port, "t", &bob),
        attach_tap(port, "u", &eve),
    ];

    // busybox udhcpc: every option the gateway hands out.
    let lease = udhcpc(&alice, &dir.0, Some("alice"), &[]);
    assert_eq!(
        lease.get("ip").map(String::as_str),
        Some("10.0.2.15"),
        "{lease:?}"
    );
    assert_eq!(lease.get("router").map(String::as_str), Some("10.0.2.2"));
    assert_eq!(lease.get("dns").map(String::as_str), Some("10.0.2.3"));
    assert_eq!(lease.get("domain").map(String::as_str), Some("t.lan"));
    assert_eq!(lease.get("mtu").map(String::as_str), Some("1500"));
    assert_eq!(lease.get("mask").map(String::as_str), Some("24"));
    assert!(
        alice.ping_ok("10.0.2.2", Duration::from_secs(5)),
        "ping gateway"
    );
    assert!(
        alice.ping_ok("10.0.2.3", Duration::from_secs(5)),
        "ping DNS address"
    );

    // ISC dhclient on another machine of the same LAN.
    let script = dir.0.join("dhclient.sh");
    let out = dir.0.join("dhclient.env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND|RENEW|REBOOT)\n ip addr add \"$new_ip_address/24\" dev \"$interface\"\n env | grep '^new_' > {}\n;; esac\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let leases_file = dir.0.join("dhclient.leases");
    let pid_file = dir.0.join("dhclient.pid");
    let result = bob.exec(&[
        "dhclient",
        "-1",
        "-4",
        "-sf",
        script.to_str().unwrap(),
        "-lf",
        leases_file.to_str().unwrap(),
        "-pf",
        pid_file.to_str().unwrap(),
        "tap0",
    ]);
    assert!(
        result.status.success(),
        "dhclient: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let _ = bob.exec(&["dhclient", "-x", "-pf", pid_file.to_str().unwrap()]);
    let env = read_env(&out);
    assert_eq!(
        env.get("new_ip_address").map(String::as_str),
        Some("10.0.2.16"),
        "{env:?}"
    );
    assert_eq!(env.get("new_routers").map(String::as_str), Some("10.0.2.2"));
    assert_eq!(
        env.get("new_domain_name_servers").map(String::as_str),
        Some("10.0.2.3")
    );
    assert_eq!(
        env.get("new_domain_name").map(String::as_str),
        Some("t.lan")
    );
    assert_eq!(
        env.get("new_interface_mtu").map(String::as_str),
        Some("1500")
    );
    assert!(bob.ping_ok("10.0.2.2", Duration::from_secs(5)));
    assert!(
        bob.ping_ok("10.0.2.15", Duration::from_secs(5)),
        "bob pings alice"
    );

    // DNS: upstream names, classmates by name (full and bare), never another LAN's.
    assert_eq!(dig(&bob, "www.example.test"), "198.18.0.7");
    assert_eq!(dig(&bob, "alice.t.lan"), "10.0.2.15");
    assert_eq!(dig(&bob, "alice"), "10.0.2.15");
    // DNS over TCP: the same answers, upstream and local (smoltcp terminates the TCP).
    assert_eq!(dig_with(&bob, "www.example.test", &["+tcp"]), "198.18.0.7");
    assert_eq!(dig_with(&bob, "alice", &["+tcp"]), "10.0.2.15");
    // Two queries on one connection; answers may come out of order (RFC 7766 6.2.1.1).
    let mut both: Vec<String> = dig_with(
        &bob,
        "www.example.test",
        &["+tcp", "+keepopen", "alice.t.lan"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    both.sort();
    assert_eq!(both, ["10.0.2.15", "198.18.0.7"]);
    let eve_lease = udhcpc(&eve, &dir.0, Some("eve"), &[]);
    assert_eq!(eve_lease.get("domain").map(String::as_str), Some("u.lan"));
    assert_eq!(
        dig(&eve, "alice.t.lan"),
        "",
        "LAN u must not resolve LAN t's names"
    );
    assert_eq!(dig(&eve, "alice"), "");
    assert_eq!(dig(&eve, "eve.u.lan"), eve_lease["ip"]);

    // Renew (a new DHCP exchange) and release-then-rebind keep the address.
    let again = udhcpc(&alice, &dir.0, Some("alice"), &[]);
    assert_eq!(again["ip"], "10.0.2.15");
    let _ = udhcpc(&alice, &dir.0, Some("alice"), &["-R"]);
    let after_release = udhcpc(&alice, &dir.0, Some("alice"), &[]);
    assert_eq!(after_release["ip"], "10.0.2.15");
}

#[test]
fn reconnects_and_relay_restarts_keep_addresses() {
    if !root_or_skip("reconnects_and_relay_restarts_keep_addresses") {
        return;
    }
    let dir = Scratch::new("restart");
    let state = dir.0.join("leases.json");
    let state_arg = state.to_str().unwrap().to_owned();
    let (relay, port) = start_relay(&["--dhcp-state-file", &state_arg]);
    let a = vm("ra");
    let tap = attach_tap(port, "r", &a);
    let lease = udhcpc(&a, &dir.0, Some("ra"), &[]);
    assert_eq!(lease["ip"], "10.0.2.15");

    // The VM's socket drops and comes back as a new one (as v86 reconnects): same address,
    // no DHCP needed.
    drop(tap);
    let tap = attach_tap(port, "r", &a);
    assert!(
        a.ping_ok("10.0.2.2", Duration::from_secs(10)),
        "works after reconnect"
    );

    // The relay restarts with its state file: a newcomer must not get a's address.
    drop(tap);
    let mut relay = relay;
    let pid = relay.0.id().to_string();
    must(&["kill", "-TERM", &pid]);
    let status = relay.0.wait().expect("relay exits");
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert!(state.exists(), "state file written on shutdown");
    let (_relay, port) = start_relay(&["--dhcp-state-file", &state_arg]);
    let _tap_a = attach_tap(port, "r", &a);
    let b = vm("rb");
    let _tap_b = attach_tap(port, "r", &b);
    let lease_b = udhcpc(&b, &dir.0, Some("rb"), &[]);
    assert_ne!(lease_b["ip"], "10.0.2.15", "a's address stays a's");
    assert!(
        a.ping_ok("10.0.2.2", Duration::from_secs(10)),
        "a keeps working without DHCP"
    );
    let lease_a = udhcpc(&a, &dir.0, Some("ra"), &[]);
    assert_eq!(lease_a["ip"], "10.0.2.15", "and renews the same address");
}

#[test]
fn two_machines_with_one_mac_both_get_leases_and_talk() {
    if !root_or_skip("two_machines_with_one_mac") {
        return;
    }
    let dir = Scratch::new("dupmac");
    let (_relay, port) = start_relay(&[]);
    // Tabs restored from one saved v86 state share their MAC.
    let first = vm("d1");
    let second = vm("d2");
    for ns in [&first, &second] {
        ns.ip(&["link", "set", "tap0", "address", "00:22:15:aa:bb:cc"]);
    }
    let _t1 = attach_tap(port, "dup", &first);
    let lease1 = udhcpc(&first, &dir.0, Some("d1"), &[]);
    let _t2 = attach_tap(port, "dup", &second);
    let lease2 = udhcpc(&second, &dir.0, Some("d2"), &[]);
    assert_ne!(lease1["ip"], lease2["ip"], "each machine has its own lease");
    assert!(first.ping_ok("10.0.2.2", Duration::from_secs(5)));
    assert!(second.ping_ok("10.0.2.2", Duration::from_secs(5)));
    assert!(
        first.ping_ok(&lease2["ip"], Duration::from_secs(5)),
        "first pings second"
    );
    assert!(
        second.ping_ok(&lease1["ip"], Duration::from_secs(5)),
        "second pings first"
    );
}
