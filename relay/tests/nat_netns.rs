//! NAT against real Linux stacks: a VM namespace attached with `v86-relay tap` gets DHCP,
//! then reaches servers in an "internet" namespace behind a veth pair on 198.18.0.0/15
//! (curl, iperf3, UDP echo, ping), is refused by the egress policy where it must be, and
//! leaves no flow or task behind when either side dies. Needs root; skips without it
//! (fails under V86_RELAY_REQUIRE_ROOT=1).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::internet::*;
use common::netns::*;
use common::vm::*;

#[test]
fn vm_reaches_the_internet_through_nat() {
    if !root_or_skip("vm_reaches_the_internet_through_nat") {
        return;
    }
    let scratch = Scratch::new("nat");
    let internet = Internet::new("inet", 41);
    let (_relay, _port, metrics_port, vm_ns, _tap) = relay_and_vm("natvm", &scratch, &[]);

    // 100 MB over HTTP, checked end to end.
    let www = scratch.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let expected = random_file(&www.join("big"), 100, 0x9e37_79b9);
    let www_dir = www.to_str().unwrap().to_owned();
    let _httpd = internet.spawn(&["busybox", "httpd", "-f", "-p", "8080", "-h", &www_dir]);
    wait_listening(&internet.ns, &internet.addr(), 8080);
    let started = Instant::now();
    let out = vm_ns.exec(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --max-time 120 http://{}:8080/big | sha256sum",
            internet.addr()
        ),
    ]);
    let elapsed = started.elapsed();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.starts_with(&expected),
        "sha256 of the download: {got} (want {expected}); curl said {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "curl: 100 MiB in {:.2} s ({:.0} Mbit/s)",
        elapsed.as_secs_f64(),
        100.0 * 8.0 * 1.048_576 / elapsed.as_secs_f64()
    );

    // iperf3 both ways.
    let _iperf = internet.spawn(&["iperf3", "-s", "-p", "5201"]);
    wait_listening(&internet.ns, &internet.addr(), 5201);
    for reverse in [false, true] {
        let addr = internet.addr();
        let mut args = vec!["iperf3", "-c", &addr, "-p", "5201", "-t", "2", "-J"];
        if reverse {
            args.push("-R");
        }
        let out = vm_ns.exec(&args);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "iperf3 (reverse: {reverse}) failed: {report}"
        );
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        eprintln!("iperf3 reverse={reverse}: {:.2} Gbit/s", bps / 1e9);
        assert!(bps > 0.0);
    }

    // UDP echo.
    let echo = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',7007))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(d,a)\n",
        internet.addr()
    );
    let _echo = internet.spawn(&["python3", "-c", &echo]);
    std::thread::sleep(Duration::from_millis(300));
    let client = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor i in range(5):\n s.sendto(b'hello-%d'%i,('{}',7007))\n try:\n  d,a=s.recvfrom(100)\n  print(d.decode()); break\n except socket.timeout:\n  pass\n",
        internet.addr()
    );
    let out = vm_ns.exec(&["python3", "-c", &client]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-"),
        "no UDP echo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ping (raw sockets as root, or ICMP datagram sockets).
    assert!(
        vm_ns.ping_ok(&internet.addr(), Duration::from_secs(5)),
        "ping {} through NAT failed",
        internet.addr()
    );

    let text = metrics(metrics_port);
    assert!(sample(&text, "v86_relay_nat_flows_total{protocol=\"tcp\"}") >= 3);
    assert!(sample(&text, "v86_relay_nat_flows_total{protocol=\"udp\"}") >= 1);
    assert!(sample(&text, "v86_relay_nat_flows_total{protocol=\"icmp\"}") >= 1);
    assert!(sample(&text, "v86_relay_nat_bytes_total{direction=\"in\"}") >= 100 << 20);
}

#[test]
fn policy_refuses_private_and_host_addresses_and_host_loopback_works() {
    if !root_or_skip("policy_refuses_private_and_host_addresses") {
        return;
    }
    let scratch = Scratch::new("pol");
    let internet = Internet::new("pinet", 42);
    // A server on the relay host's loopback and one on its veth address.
    let host_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        for stream in host_server.incoming().flatten() {
            let mut stream = stream;
            // Read the request before answering: closing a socket with unread
            // bytes makes the kernel send a RST, which curl reports as exit 56.
            read_request_head(&mut stream);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-host-loopback\n");
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    });
    drop(accept);
    let (_relay, _port, metrics_port, vm_ns, _tap) =
        relay_and_vm("polvm", &scratch, &["--host-loopback"]);

    let curl = |url: &str| {
        let out = vm_ns.exec(&["curl", "-sS", "--max-time", "5", url]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // curl exit 7: connection refused, at once (a RST, not a hang).
    let started = Instant::now();
    let (code, _, err) = curl("http://10.99.0.1:80/");
    assert_eq!(code, Some(7), "private address: {err}");
    let (code, _, err) = curl(&format!("http://198.18.{}.1:{host_port}/", internet.n));
    assert_eq!(code, Some(7), "host's own address: {err}");
    let (code, _, err) = curl("http://169.254.169.254/");
    assert_eq!(code, Some(7), "metadata address: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals were slow"
    );

    // Host loopback: 10.0.2.2:PORT is the host's 127.0.0.1:PORT.
    let (code, body, err) = curl(&format!("http://10.0.2.2:{host_port}/"));
    assert_eq!(code, Some(0), "host loopback: {err}");
    assert!(body.contains("from-host-loopback"), "{body}");

    let text = metrics(metrics_port);
    assert!(sample(&text, "v86_relay_nat_denied_total{reason=\"private\"}") >= 1);
    assert!(sample(&text, "v86_relay_nat_denied_total{reason=\"host_address\"}") >= 1);
    assert!(sample(&text, "v86_relay_nat_denied_total{reason=\"link_local\"}") >= 1);
}

#[test]
fn killed_remote_vm_process_or_websocket_leave_no_flow_behind() {
    if !root_or_skip("killed_sides_leave_no_flow_behind") {
        return;
    }
    let scratch = Scratch::new("kill");
    let internet = Internet::new("kinet", 43);
    let config = scratch.0.join("relay.toml");
    std::fs::write(&config, "[nat]\nvm_timeout_secs = 3\n").unwrap();
    let (_relay, _port, metrics_port, vm_ns, tap) =
        relay_and_vm("killvm", &scratch, &["--config", config.to_str().unwrap()]);
    // An endless sender and an endless sink in the internet namespace.
    let source = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',9001))\ns.listen(8)\nwhile True:\n c,a=s.accept()\n try:\n  while True: c.sendall(b'x'*65536)\n except Exception:\n  c.close()\n";
    let remote = internet.spawn(&["python3", "-c", source]);
    wait_listening(&internet.ns, &internet.addr(), 9001);
    let url = format!("{}:9001", internet.addr());

    let vm_reader = |ns: &Netns| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "sh", "-c"])
            .arg(format!(
                "exec python3 -c \"import socket,time\ns=socket.create_connection(('{}',9001))\nwhile True:\n  d=s.recv(65536)\n  time.sleep(0.001)\n  if not d: break\n\"",
                internet.addr()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Proc)
            .unwrap()
    };
    let flowing = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = metrics(metrics_port);
            if sample(&text, "v86_relay_nat_flows_active{protocol=\"tcp\"}") >= 1 {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: no flow to {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // 1. The VM-side process dies: its kernel resets the connection.
    let reader = vm_reader(&vm_ns);
    flowing("VM process");
    std::thread::sleep(Duration::from_millis(500));
    drop(reader);
    wait_no_flows(metrics_port, Duration::from_secs(10));

    // 2. The remote dies mid-transfer.
    let _reader = vm_reader(&vm_ns);
    flowing("remote");
    std::thread::sleep(Duration::from_millis(500));
    drop(remote);
    wait_no_flows(metrics_port, Duration::from_secs(10));

    // 3. The VM's WebSocket goes (tab closed): the flow times out (vm_timeout_secs = 3).
    let remote = internet.spawn(&["python3", "-c", source]);
    wait_listening(&internet.ns, &internet.addr(), 9001);
    let _reader = vm_reader(&vm_ns);
    flowing("websocket");
    std::thread::sleep(Duration::from_millis(500));
    drop(tap);
    wait_no_flows(metrics_port, Duration::from_secs(20));
    drop(remote);
}

/// An HTTP server (in a VM namespace) that answers with the client's address.
const WHO_ASKS: &str = "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n def do_GET(self):\n  b=self.client_address[0].encode()\n  self.send_response(200); self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n def log_message(self,*a): pass\nhttp.server.HTTPServer(('0.0.0.0',8000),H).serve_forever()\n";

const UDP_ECHO_ANY: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7000))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(b'vm:'+d,a)\n";

fn host_curl(url: &str) -> Option<String> {
    let out = run(&["curl", "-sS", "--max-time", "5", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_curl_json(method: &str, url: &str, body: Option<&str>) -> serde_json::Value {
    let mut args = vec!["curl", "-sS", "--max-time", "5", "-X", method, url];
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "-d", body]);
    }
    let out = run(&args);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn inbound_forwards_follow_the_vm_across_a_new_lease() {
    if !root_or_skip("inbound_forwards_follow_the_vm") {
        return;
    }
    let scratch = Scratch::new("fwd");
    let tcp_port = free_port();
    let udp_port = free_port();
    let tcp_forward = format!("tcp:127.0.0.1:{tcp_port}=nat/fwdweb:8000");
    let udp_forward = format!("udp:127.0.0.1:{udp_port}=nat/fwdweb:7000");
    let (_relay, _port, metrics_port, vm_ns, _tap) = relay_and_vm(
        "fwdweb",
        &scratch,
        &["--forward", &tcp_forward, "--forward", &udp_forward],
    );
    let spawn_in_vm = |script: &str| {
        Command::new("ip")
            .args(["netns", "exec", &vm_ns.name, "python3", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Proc)
            .unwrap()
    };
    let _web = spawn_in_vm(WHO_ASKS);
    let _echo = spawn_in_vm(UDP_ECHO_ANY);
    wait_listening(&vm_ns, "127.0.0.1", 8000);

    // The connection reaches the VM from the gateway address.
    let url = format!("http://127.0.0.1:{tcp_port}/");
    assert_eq!(host_curl(&url).as_deref(), Some("10.0.2.2"));
    let udp_echo = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buffer = [0u8; 64];
        for _ in 0..5 {
            socket.send_to(b"ping", ("127.0.0.1", udp_port)).unwrap();
            if let Ok(n) = socket.recv(&mut buffer) {
                return String::from_utf8_lossy(&buffer[..n]).into_owned();
            }
        }
        String::new()
    };
    assert_eq!(udp_echo(), "vm:ping");

    // A new MAC and a new lease with the same host name: the forward follows the name.
    vm_ns.ip(&["link", "set", "tap0", "address", "52:54:00:aa:00:99"]);
    let lease = udhcpc(&vm_ns, &scratch.0, Some("fwdweb"), &[]);
    assert_ne!(
        lease.get("ip").map(String::as_str),
        Some("10.0.2.15"),
        "{lease:?}"
    );
    assert_eq!(host_curl(&url).as_deref(), Some("10.0.2.2"));
    assert_eq!(udp_echo(), "vm:ping");

    // The admin API lists the LAN's leases and flows, and adds and removes forwards.
    let admin = format!("http://127.0.0.1:{metrics_port}/admin");
    let lans = host_curl_json("GET", &format!("{admin}/lans"), None);
    let nat_lan = lans["lans"]
        .as_array()
        .and_then(|l| l.iter().find(|lan| lan["name"] == "nat"))
        .unwrap_or_else(|| panic!("LAN nat not listed: {lans}"));
    assert!(
        nat_lan["leases"]
            .as_array()
            .is_some_and(|l| l.iter().any(|lease| lease["host_name"] == "fwdweb")),
        "{nat_lan}"
    );
    let by_mac_port = free_port();
    let added = host_curl_json(
        "POST",
        &format!("{admin}/forwards"),
        Some(&format!(
            r#"{{"forward": "tcp:127.0.0.1:{by_mac_port}=nat/52:54:00:aa:00:99:8000"}}"#
        )),
    );
    let id = added["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("add failed: {added}"));
    let by_mac = format!("http://127.0.0.1:{by_mac_port}/");
    assert_eq!(host_curl(&by_mac).as_deref(), Some("10.0.2.2"));
    let listed = host_curl_json("GET", &format!("{admin}/forwards"), None);
    assert_eq!(
        listed["forwards"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    run(&[
        "curl",
        "-sS",
        "-X",
        "DELETE",
        &format!("{admin}/forwards/{id}"),
    ]);
    assert_eq!(host_curl(&by_mac), None, "removed forward still answers");
    let bad = host_curl_json(
        "POST",
        &format!("{admin}/forwards"),
        Some(r#"{"forward": "tcp:127.0.0.1:1=nat"}"#),
    );
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("PROTO:LISTEN_IP:PORT")),
        "{bad}"
    );
    let text = metrics(metrics_port);
    assert_eq!(sample(&text, "v86_relay_forwards_active"), 2);
}

#[test]
fn private_addresses_are_reachable_only_when_allowed() {
    if !root_or_skip("private_addresses_are_reachable_only_when_allowed") {
        return;
    }
    let scratch = Scratch::new("priv");
    let internet = Internet::new("prinet", 44);
    // The internet namespace also holds a private address, routed from the host.
    let peer = format!("{}p", internet.host_if);
    must(&[
        "ip",
        "addr",
        "add",
        "10.77.44.1/24",
        "dev",
        &internet.host_if,
    ]);
    internet
        .ns
        .ip(&["addr", "add", "10.77.44.2/24", "dev", &peer]);
    let www = scratch.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "private-server\n").unwrap();
    let _httpd = internet.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        www.to_str().unwrap(),
    ]);
    wait_listening(&internet.ns, "10.77.44.2", 8080);
    let url = "http://10.77.44.2:8080/";
    let curl = |ns: &Netns| {
        let out = ns.exec(&["curl", "-sS", "--max-time", "5", url]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    // Default policy: refused at once.
    {
        let (_relay, _port, _metrics, vm_ns, _tap) = relay_and_vm("privno", &scratch, &[]);
        assert_eq!(
            curl(&vm_ns).0,
            Some(7),
            "10.x reached without --allow-private"
        );
    }
    // --allow-private: reached.
    let (_relay, _port, _metrics, vm_ns, _tap) =
        relay_and_vm("privyes", &scratch, &["--allow-private"]);
    let (code, body) = curl(&vm_ns);
    assert_eq!(code, Some(0));
    assert_eq!(body.trim(), "private-server");
}

/// Reads until the end of an HTTP request head (or EOF, or 5 s).
fn read_request_head(stream: &mut std::net::TcpStream) {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// A Python HTTP server on `addr:port` that sends `file` for any path: at once for `/fast`,
/// at 1 MiB/s otherwise.
fn paced_http_server(addr: &str, port: u16, file: &str) -> String {
    format!(
        r#"
import socket, threading, time
body = open("{file}", "rb").read()
def serve(c):
    head = b""
    while b"\r\n\r\n" not in head:
        d = c.recv(1024)
        if not d: return
        head += d
    paced = not head.startswith(b"GET /fast ")
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    step = 64 * 1024
    for i in range(0, len(body), step):
        c.sendall(body[i:i + step])
        if paced: time.sleep(1 / 16)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{addr}", {port}))
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#
    )
}

/// The local port of the one TCP connection process `pid` holds to 127.0.0.1:`port`.
fn local_port_of(pid: u32, port: u16) -> Option<u16> {
    let out = run(&[
        "ss",
        "-tnpH",
        "state",
        "established",
        "dst",
        &format!("127.0.0.1:{port}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.contains(&format!("pid={pid},")))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|local| local.rsplit(':').next()?.parse().ok())
}

#[test]
fn private_default_lans_isolate_vms_that_reach_the_internet_and_keep_a_reconnecting_vm() {
    if !root_or_skip("private_default_lans_isolate_vms") {
        return;
    }
    let scratch = Scratch::new("priv");
    let internet = Internet::new("pvinet", 70);
    let config = scratch.0.join("relay.toml");
    std::fs::write(&config, "[server]\ndefault_lan = \"private\"\n").unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_relay, port) = start_relay(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-listen",
        &metrics_addr,
    ]);
    // Two strangers join ws://HOST/: each gets a LAN of its own with its first address.
    let (a, b) = (vm("pva"), vm("pvb"));
    let tap_a = attach_tap_path(port, "/", &a);
    let _tap_b = attach_tap_path(port, "/", &b);
    let lease_a = udhcpc(&a, &scratch.0, Some("pva"), &[]);
    let lease_b = udhcpc(&b, &scratch.0, Some("pvb"), &[]);
    assert_eq!(
        lease_a.get("ip"),
        lease_b.get("ip"),
        "two LANs, each its first address"
    );
    assert_eq!(sample(&metrics(metrics_port), "v86_relay_lans"), 2);
    // b also answers on a second address of the subnet; a cannot reach it.
    b.ip(&["addr", "add", "10.0.2.200/24", "dev", "tap0"]);
    assert!(
        !a.ping_ok("10.0.2.200", Duration::from_secs(2)),
        "a reached b"
    );

    // Both reach the internet; a downloads slowly while its socket is cut and re-made. The
    // server paces the body (curl's --limit-rate lets a burst through when the machine is
    // busy, and the download must straddle the cut).
    let www = scratch.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let big = www.join("big");
    let expected = random_file(&big, 8, 0x5eed_0070);
    let _httpd = internet.spawn(&[
        "python3",
        "-c",
        &paced_http_server(&internet.addr(), 8080, big.to_str().unwrap()),
    ]);
    wait_listening(&internet.ns, &internet.addr(), 8080);
    let url = format!("http://{}:8080/", internet.addr());
    let out = b.exec(&[
        "sh",
        "-c",
        &format!("curl -sS --max-time 30 {url}fast | sha256sum"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&expected),
        "b's download"
    );
    let name = a.name.clone();
    let download = std::thread::spawn(move || {
        run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "sh",
            "-c",
            &format!("curl -sS --max-time 60 {url}paced | sha256sum"),
        ])
    });
    std::thread::sleep(Duration::from_secs(2));
    if download.is_finished() {
        let out = download.join().unwrap();
        panic!(
            "the download ended before the cut: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let local = local_port_of(tap_a.0.id(), port).expect("a's WebSocket connection");
    must(&[
        "ss",
        "-K",
        "src",
        &format!("127.0.0.1:{local}"),
        "dst",
        &format!("127.0.0.1:{port}"),
    ]);
    // The tap joins again as a new socket (new source port) and finds a's LAN by its MAC.
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_port_of(tap_a.0.id(), port).is_none_or(|now| now == local) {
        assert!(Instant::now() < deadline, "a never reconnected");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = download.join().unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.starts_with(&expected),
        "a's download across the reconnect: {got} (want {expected}); curl said {}; relay: {}",
        String::from_utf8_lossy(&out.stderr),
        metrics(metrics_port)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(a.ping_ok(&internet.addr(), Duration::from_secs(5)));
    assert_eq!(
        sample(&metrics(metrics_port), "v86_relay_lans"),
        2,
        "no third LAN"
    );
}

/// A connection that moves bytes, pauses past `QUIET_AFTER` and moves bytes again has its
/// buffers' pages given back in every pause (the release counter says so) and delivers
/// every byte both ways, round after round: a released page only ever held bytes that
/// were delivered and acknowledged.
#[test]
fn a_flow_that_pauses_gives_its_buffer_pages_back_and_keeps_every_byte() {
    if !root_or_skip("a_flow_that_pauses_gives_its_buffer_pages_back_and_keeps_every_byte") {
        return;
    }
    let scratch = Scratch::new("natquiet");
    let internet = Internet::new("inetq", 47);
    let (_relay, _port, metrics_port, vm_ns, _tap) = relay_and_vm("natq", &scratch, &[]);
    let echo = format!(
        "import socket, threading\n\
         s = socket.create_server(('{}', 7010))\n\
         def serve(c):\n    while True:\n        d = c.recv(65536)\n        if not d: break\n        c.sendall(d)\n    c.close()\n\
         while True:\n    c, _ = s.accept()\n    threading.Thread(target=serve, args=(c,), daemon=True).start()\n",
        internet.addr()
    );
    let _echo = internet.spawn(&["python3", "-c", &echo]);
    wait_listening(&internet.ns, &internet.addr(), 7010);
    // Rounds of 600 KB each way (more than both 256 KiB buffers), 1.5 s apart.
    let client = format!(
        "import socket, threading, random, time\n\
         s = socket.create_connection(('{}', 7010), timeout=30)\n\
         for r in range(5):\n    data = random.Random(r).randbytes(600_000)\n\
         \x20   t = threading.Thread(target=s.sendall, args=(data,)); t.start()\n\
         \x20   got = bytearray()\n\
         \x20   while len(got) < len(data):\n        b = s.recv(65536)\n        if not b: break\n        got += b\n\
         \x20   t.join()\n    print('round', r, 'ok' if bytes(got) == data else 'CORRUPT %d' % len(got), flush=True)\n\
         \x20   time.sleep(1.5)\n",
        internet.addr()
    );
    let out = vm_ns.exec(&["python3", "-c", &client]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches(" ok").count(),
        5,
        "every round echoes intact: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let releases = sample(
        &metrics(metrics_port),
        "v86_relay_nat_buffer_releases_total",
    );
    assert!(
        releases >= 4,
        "the flow's pages went back in each pause: {releases} releases"
    );
}
