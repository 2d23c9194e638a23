//! NAT at scale against real Linux stacks (namespaces, TAP attached with `v86-relay tap`,
//! an "internet" namespace on 198.18.0.0/15): datagrams larger than the LAN's MTU go
//! through fragmented both ways, DF packets over the MTU get "fragmentation needed", and
//! the first packet of a new flow is answered. Needs root; skips without it.

mod common;

use std::process::Output;
use std::time::Duration;

use common::internet::*;
use common::netns::*;
use common::vm::*;

/// A UDP echo server for the internet namespace: answers every datagram with itself.
fn udp_echo(addr: &str, port: u16) -> String {
    format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{addr}',{port}))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(d,a)\n"
    )
}

/// A VM-side client: `count` datagrams of `size` bytes, each sent once (no retry) from a
/// fresh socket (a new NAT flow) when `fresh`, each echo awaited for 3 s and compared.
/// Prints "ok" per intact echo, "lost" or "bad" otherwise.
fn udp_client(addr: &str, port: u16, size: usize, count: usize, fresh: bool) -> String {
    let fresh = if fresh { "True" } else { "False" };
    [
        "import socket".to_owned(),
        "s=None".to_owned(),
        format!("for i in range({count}):"),
        format!(" if s is None or {fresh}:"),
        "  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)".to_owned(),
        "  s.settimeout(3)".to_owned(),
        format!(" d=bytes((i*31+j*7)%251 for j in range({size}))"),
        format!(" s.sendto(d,('{addr}',{port}))"),
        " try:".to_owned(),
        "  r,a=s.recvfrom(65535)".to_owned(),
        "  print('ok' if r==d else 'bad %d'%len(r))".to_owned(),
        " except socket.timeout:".to_owned(),
        "  print('lost')".to_owned(),
    ]
    .join("\n")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts the echo server and waits until a datagram from the internet side comes back.
fn start_echo(internet: &Internet, port: u16) -> Proc {
    let echo = internet.spawn(&["python3", "-c", &udp_echo(&internet.addr(), port)]);
    let probe = udp_client(&internet.addr(), port, 10, 1, false);
    let mut said = String::new();
    for _ in 0..50 {
        said = text(&internet.ns.exec(&["python3", "-c", &probe]));
        if said.contains("ok") {
            return echo;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the UDP echo server did not start: {said}");
}

#[test]
fn udp_datagrams_over_the_mtu_round_trip_in_fragments() {
    if !root_or_skip("udp_datagrams_over_the_mtu_round_trip_in_fragments") {
        return;
    }
    let scratch = Scratch::new("frag");
    let internet = Internet::new("finet", 45);
    let _echo = start_echo(&internet, 7009);
    let (_relay, _port, metrics_port, vm_ns, _tap) = relay_and_vm("fragvm", &scratch, &[]);

    // 4,000 bytes at MTU 1500: the VM sends three fragments, the reply comes in three.
    let out = vm_ns.exec(&[
        "python3",
        "-c",
        &udp_client(&internet.addr(), 7009, 4000, 5, false),
    ]);
    let got = text(&out);
    assert_eq!(got.matches("ok").count(), 5, "4000-byte echoes: {got}");
    // The largest UDP payload, 65507 bytes, in 45 fragments each way.
    let out = vm_ns.exec(&[
        "python3",
        "-c",
        &udp_client(&internet.addr(), 7009, 65507, 1, false),
    ]);
    assert!(text(&out).contains("ok"), "65507-byte echo: {}", text(&out));

    let metrics = metrics(metrics_port);
    assert!(sample(&metrics, "v86_relay_ip_fragments_reassembled_total") >= 6);
    assert!(sample(&metrics, "v86_relay_ip_datagrams_fragmented_total") >= 6);
    assert!(sample(&metrics, "v86_relay_ip_fragments_received_total") >= 5 * 3 + 45);
    assert_eq!(sample(&metrics, "v86_relay_ip_fragment_bytes"), 0);
    for reason in ["timeout", "overlap", "oversized", "too_many", "malformed"] {
        let name = format!("v86_relay_ip_fragment_drops_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &name), 0, "{reason}");
    }
}

#[test]
fn pings_over_the_mtu_fragment_and_df_ones_get_fragmentation_needed() {
    if !root_or_skip("pings_over_the_mtu_fragment_and_df_ones_get_fragmentation_needed") {
        return;
    }
    let scratch = Scratch::new("fneed");
    let internet = Internet::new("fninet", 46);
    let (_relay, _port, metrics_port, vm_ns, _tap) = relay_and_vm("fneedvm", &scratch, &[]);
    let addr = internet.addr();

    // Without DF a 2,000-byte ping is fragmented both ways and answered.
    let out = vm_ns.exec(&[
        "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", "2000", &addr,
    ]);
    assert!(text(&out).contains(" 3 received"), "{}", text(&out));

    // With DF and the VM's MTU at 1500, its own kernel refuses: "message too long".
    let out = vm_ns.exec(&[
        "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "2000", &addr,
    ]);
    assert!(text(&out).contains("message too long"), "{}", text(&out));

    // A VM whose MTU is larger than the LAN's sends the 2,028-byte packet: the gateway
    // answers "fragmentation needed" with the LAN's MTU, and the VM's kernel learns it.
    vm_ns.ip(&["link", "set", "tap0", "mtu", "9000"]);
    let out = vm_ns.exec(&[
        "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "2000", &addr,
    ]);
    let said = text(&out);
    assert!(
        said.contains("Frag needed and DF set (mtu = 1500)"),
        "no fragmentation needed from the gateway: {said}"
    );
    assert!(
        said.contains("mtu=1500"),
        "the VM did not learn the path MTU: {said}"
    );
    let metrics = metrics(metrics_port);
    assert!(sample(&metrics, "v86_relay_icmp_frag_needed_total") >= 1);
}

#[test]
fn the_first_packet_of_a_new_flow_is_answered() {
    if !root_or_skip("the_first_packet_of_a_new_flow_is_answered") {
        return;
    }
    let scratch = Scratch::new("first");
    let internet = Internet::new("fpinet", 47);
    let _echo = start_echo(&internet, 7010);
    let (_relay, _port, _metrics, vm_ns, _tap) = relay_and_vm("firstvm", &scratch, &[]);
    let addr = internet.addr();

    // A fresh ping flow (and the LAN's first ping socket): every echo answered.
    let out = vm_ns.exec(&["ping", "-c", "5", "-i", "0.2", "-W", "2", &addr]);
    assert!(text(&out).contains("5 received"), "{}", text(&out));
    // A second ping run is a new flow (new identifier) on the open ping socket.
    let out = vm_ns.exec(&["ping", "-c", "5", "-i", "0.2", "-W", "2", &addr]);
    assert!(text(&out).contains("5 received"), "{}", text(&out));

    // Ten new UDP flows, each sending one datagram once: every one is echoed.
    let out = vm_ns.exec(&["python3", "-c", &udp_client(&addr, 7010, 100, 10, true)]);
    let got = text(&out);
    assert_eq!(got.matches("ok").count(), 10, "first datagrams: {got}");
}
