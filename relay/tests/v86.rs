//! The real v86 emulator against the relay: the guest from vendor/v86/build-guest.sh booted
//! in Node (tests/js/guest-node.mjs), the same guest on v86's in-page backends (Wisp, and
//! fetch through the relay's CORS proxy: tests/js/guest-wisp.mjs), and the demo page in
//! headless Chromium (tests/js/demo-chromium.mjs, with the Packets panel). Without node, the guest build or the npm packages these
//! tests skip with a message, unless V86_RELAY_REQUIRE_BROWSER=1 (set by .ci/run).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Netns, Proc, must, root_or_skip, start_relay};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("relay/ has a parent")
        .to_owned()
}

/// Missing pieces for the v86 tests, each with the command that provides it.
fn missing(browser: bool) -> Vec<String> {
    let r = repo();
    let mut gaps = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        gaps.push("node (scripts/setup-test-deps.sh installs it)".to_owned());
    }
    for f in ["bzImage", "initrd", "bios.bin", "vgabios.bin"] {
        if !r.join("vendor/v86/out").join(f).exists() {
            gaps.push(format!(
                "vendor/v86/out/{f} (run vendor/v86/build-guest.sh)"
            ));
        }
    }
    if !r
        .join("vendor/v86/node_modules/v86/build/libv86.mjs")
        .exists()
    {
        gaps.push("vendor/v86/node_modules (run npm ci in vendor/v86)".to_owned());
    }
    if !r.join("tests/js/node_modules/ws").exists() {
        gaps.push("tests/js/node_modules (run npm ci in tests/js)".to_owned());
    }
    if browser {
        if !Path::new("/usr/bin/chromium").exists() {
            gaps.push("/usr/bin/chromium (apt-get install chromium)".to_owned());
        }
        if !r.join("tests/js/node_modules/playwright-core").exists() {
            gaps.push("tests/js/node_modules/playwright-core (run npm ci in tests/js)".to_owned());
        }
    }
    gaps
}

/// True when the test can run; otherwise skips with a message, or fails when
/// V86_RELAY_REQUIRE_BROWSER=1 says these tests must run.
fn ready_or_skip(test: &str, browser: bool) -> bool {
    let gaps = missing(browser);
    if gaps.is_empty() {
        return true;
    }
    if std::env::var("V86_RELAY_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "{test} needs {} and V86_RELAY_REQUIRE_BROWSER=1 forbids skipping it",
            gaps.join(", ")
        );
    }
    eprintln!(
        "SKIPPED {test}: needs {} (scripts/setup-test-deps.sh provides all of them)",
        gaps.join(", ")
    );
    false
}

/// The emulator tests take one core each for a minute: one at a time keeps them within
/// their time limits on a 2-core CI machine.
static ONE_EMULATOR_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `node script` with `env`, killing it after `limit`; panics with its output on failure.
fn run_node(script: &str, env: &[(&str, String)], limit: Duration) -> String {
    let _one = ONE_EMULATOR_TEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/js").join(script))
        .current_dir(repo().join("tests/js"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Proc(cmd.spawn().expect("start node"));
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut stderr = child.0.stderr.take().expect("stderr");
    // Read both pipes on threads so a chatty script never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child); // kills it when it timed out
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!("--- {script} stdout ---\n{out}--- {script} stderr ---\n{err}");
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("{script} failed ({s}):\n{out}\n{err}"),
        None => panic!("{script} did not finish within {limit:?}:\n{out}\n{err}"),
    }
}

/// An "internet" server for the NAT step: a namespace behind a veth pair holding
/// 198.18.0.2/15, serving one page with busybox httpd.
struct Internet {
    _ns: Netns,
    _httpd: Proc,
    _dir: PathBuf,
    host_if: String,
    page: String,
}

impl Internet {
    fn start() -> Internet {
        let ns = Netns::new("inet");
        let host_if = format!("v86i{}", std::process::id());
        let _ = common::netns::run(&["ip", "link", "del", &host_if]);
        must(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ]);
        must(&["ip", "addr", "add", "198.18.0.1/15", "dev", &host_if]);
        must(&["ip", "link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", "198.18.0.2/15", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", "198.18.0.1"]);
        let page = format!("v86-relay-internet-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("v86-inet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), format!("{page}\n")).unwrap();
        let httpd = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "busybox", "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(&dir)
            .spawn()
            .expect("start busybox httpd");
        Internet {
            _ns: ns,
            _httpd: Proc(httpd),
            _dir: dir,
            host_if,
            page,
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = common::netns::run(&["ip", "link", "del", &self.host_if]);
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[test]
fn guest_in_node_gets_a_lease_and_pings_by_name() {
    if !ready_or_skip("guest_in_node_gets_a_lease_and_pings_by_name", false) {
        return;
    }
    // The NAT step runs unless V86_RELAY_TEST_NAT=0 (it needs root for the namespace).
    let nat = std::env::var("V86_RELAY_TEST_NAT").as_deref() != Ok("0");
    let internet = if nat {
        if !root_or_skip("guest_in_node_gets_a_lease_and_pings_by_name (NAT step)") {
            return;
        }
        Some(Internet::start())
    } else {
        None
    };
    // The guest resolves the internet server's name through the relay's DNS proxy, whose
    // upstream is a dnsmasq on loopback.
    let dns_dir = common::vm::Scratch::new("v86dns");
    let (_dns, dns_port) =
        common::vm::upstream_dns(&dns_dir.0, &[("www.internet.test", "198.18.0.2")]);
    let upstream = format!("127.0.0.1:{dns_port}");
    let (_relay, port) = start_relay(&["--dns-upstream", &upstream]);
    let mut env = vec![
        ("V86_RELAY_ADDR", format!("127.0.0.1:{port}")),
        ("V86_RELAY_LAN", "node-test".to_owned()),
    ];
    if let Some(inet) = &internet {
        env.push(("V86_RELAY_TEST_NAT", "1".to_owned()));
        env.push(("V86_RELAY_NAT_URL", "http://www.internet.test/".to_owned()));
        env.push(("V86_RELAY_NAT_EXPECT", inet.page.clone()));
    }
    let out = run_node("guest-node.mjs", &env, Duration::from_secs(480));
    assert!(out.contains("GUEST-NODE OK"), "{out}");
}

#[test]
fn demo_page_in_chromium_two_tabs_ping_each_other() {
    if !ready_or_skip("demo_page_in_chromium_two_tabs_ping_each_other", true) {
        return;
    }
    let (_relay, port) = start_relay(&["--web-root", repo().to_str().expect("utf-8 path")]);
    let env = [
        ("V86_RELAY_ADDR", format!("127.0.0.1:{port}")),
        ("V86_RELAY_LAN", "classroom".to_owned()),
    ];
    let out = run_node("demo-chromium.mjs", &env, Duration::from_secs(600));
    assert!(out.contains("DEMO-CHROMIUM OK"), "{out}");
    assert!(repo().join("test-artifacts/demo-chromium.png").exists());
    // The Packets panel's screenshot and its pcapng download, which tshark reads.
    assert!(repo().join("test-artifacts/demo-packets.png").exists());
    let pcapng = repo().join("test-artifacts/demo-packets.pcapng");
    if let Ok(out) = Command::new("tshark")
        .args(["-r", pcapng.to_str().unwrap(), "-Y", "icmp.type == 8"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.lines().count() > 0, "{text}");
    }
}

/// The page and its files are served from the checkout; a WebSocket on / still joins
/// LAN default (tests/websocket.rs), and /net/lan answers JSON.
#[test]
fn demo_files_and_lan_endpoint_are_served() {
    let (_relay, port) = start_relay(&["--web-root", repo().to_str().expect("utf-8 path")]);
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if code == "000" {
            // No HTTP answer at all: say what curl saw.
            eprintln!(
                "curl {path}: {}, {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = get("/");
    assert_eq!(code, "200");
    if missing(false).is_empty() {
        assert!(body.contains("/demo/demo.js"), "{body}");
    } else {
        assert!(body.contains("scripts/start.sh"), "{body}");
    }
    let (code, body) = get("/demo/demo.js");
    assert_eq!(code, "200");
    assert!(body.contains("/net/lan"));
    assert_eq!(get("/guest/apt/sources.list").0, "404");
    assert_eq!(
        get("/net/lan?lan=nobody-here"),
        (
            "200".to_owned(),
            r#"{"lan":"nobody-here","machines":[]}"#.to_owned()
        )
    );
    assert_eq!(get("/net/lan?lan=../etc").0, "400");
}

/// A --web-root without the demo is a start-up error that says what to point it at.
#[test]
fn a_wrong_web_root_fails_at_start() {
    let out = Command::new(common::netns::relay_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--web-root",
            "/nonexistent",
        ])
        .output()
        .expect("run relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web-demo/index.html") && err.contains("--web-root"),
        "{err}"
    );
}

/// A web server in an "internet" namespace (198.18.N.2, busybox httpd on port 80) serving a
/// small page and a 20 MB file of deterministic bytes, for the in-page backends' tests.
struct WebServer {
    inet: common::internet::Internet,
    _httpd: Proc,
    _dir: common::vm::Scratch,
    page: String,
    big_sha256: String,
}

impl WebServer {
    fn start(tag: &str, n: u8) -> WebServer {
        use sha2::Digest;
        let inet = common::internet::Internet::new(tag, n);
        let dir = common::vm::Scratch::new(tag);
        let page = format!("v86-relay-{tag}-{}", std::process::id());
        std::fs::write(dir.0.join("index.html"), format!("{page}\n")).unwrap();
        // xorshift bytes: nothing compresses them and a swapped block changes the checksum.
        let mut big = vec![0u8; 20 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(n);
        for chunk in big.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let big_sha256 = format!("{:x}", sha2::Sha256::digest(&big));
        std::fs::write(dir.0.join("big.bin"), &big).unwrap();
        let root = dir.0.to_str().expect("utf-8 path").to_owned();
        let httpd = inet.spawn(&["busybox", "httpd", "-f", "-p", "80", "-h", &root]);
        common::internet::wait_listening(&inet.ns, &inet.addr(), 80);
        WebServer {
            inet,
            _httpd: httpd,
            _dir: dir,
            page,
            big_sha256,
        }
    }

    fn url(&self, file: &str) -> String {
        format!("http://{}/{file}", self.inet.addr())
    }
}

/// v86's Wisp backend (`relay_url: "wisp://HOST:PORT/wisp/"`): v86 answers the guest's DHCP
/// in the page and opens one Wisp stream per guest TCP connection; the guest downloads a
/// page and 20 MB whose sha256 must match.
#[test]
fn guest_over_wisp_downloads_a_page_and_20_mb() {
    if !ready_or_skip("guest_over_wisp_downloads_a_page_and_20_mb", false)
        || !root_or_skip("guest_over_wisp_downloads_a_page_and_20_mb")
    {
        return;
    }
    let web = WebServer::start("v86wisp", 61);
    let (_relay, port) = start_relay(&[]);
    let env = [
        ("V86_RELAY_URL", format!("wisp://127.0.0.1:{port}/wisp/")),
        ("V86_PAGE_URL", web.url("index.html")),
        ("V86_PAGE_EXPECT", web.page.clone()),
        ("V86_BIG_URL", web.url("big.bin")),
        ("V86_BIG_SHA256", web.big_sha256.clone()),
    ];
    let out = run_node("guest-wisp.mjs", &env, Duration::from_secs(600));
    assert!(out.contains("GUEST-WISP OK"), "{out}");
}

/// v86's fetch backend (`relay_url: "fetch"`) with the relay's CORS proxy: v86 turns the
/// guest's HTTP requests into `fetch(cors_proxy + encodeURIComponent(url))`.
#[test]
fn guest_over_fetch_uses_the_cors_proxy() {
    if !ready_or_skip("guest_over_fetch_uses_the_cors_proxy", false)
        || !root_or_skip("guest_over_fetch_uses_the_cors_proxy")
    {
        return;
    }
    let web = WebServer::start("v86fetch", 62);
    let (_relay, port) = start_relay(&["--cors-proxy"]);
    let env = [
        ("V86_RELAY_URL", "fetch".to_owned()),
        ("V86_CORS_PROXY", format!("http://127.0.0.1:{port}/cors/")),
        ("V86_PAGE_URL", web.url("index.html")),
        ("V86_PAGE_EXPECT", web.page.clone()),
        ("V86_BIG_URL", web.url("big.bin")),
        ("V86_BIG_SHA256", web.big_sha256.clone()),
    ];
    let out = run_node("guest-wisp.mjs", &env, Duration::from_secs(600));
    assert!(out.contains("GUEST-WISP OK"), "{out}");
}

/// The guest-speed figure of docs/benchmarks.md: the guest in v86 (Node, virtio) downloads
/// 32 MiB from an "internet" namespace through the relay's NAT on a LAN of MTU 1500 and on
/// one of MTU 65520 (chosen by its first join, `?mtu=65520`), three times each, in the same
/// run. A benchmark, not in CI:
/// `cargo test -p relay --test v86 guest_download_speed -- --ignored --nocapture` (root;
/// `V86_RELAY_BENCH_BIN=target/release/v86-relay` measures a release build of the relay).
#[test]
#[ignore = "benchmark: about two minutes; run by hand (see docs/benchmarks.md)"]
fn guest_download_speed_at_mtu_1500_and_65520() {
    if !ready_or_skip("guest_download_speed_at_mtu_1500_and_65520", false)
        || !root_or_skip("guest_download_speed_at_mtu_1500_and_65520")
    {
        return;
    }
    let internet = common::internet::Internet::new("gspd", 58);
    let dir = common::vm::Scratch::new("gspd");
    let mib = 32;
    common::internet::random_file(&dir.0.join("big.bin"), mib, 7);
    let _httpd = internet.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        dir.0.to_str().unwrap(),
    ]);
    common::internet::wait_listening(&internet.ns, &internet.addr(), 80);
    // V86_RELAY_BENCH_BIN: another build of the relay (e.g. target/release/v86-relay).
    let bin = std::env::var("V86_RELAY_BENCH_BIN").ok();
    let (_relay, port) =
        common::netns::start_relay_bin(bin.as_deref().unwrap_or(common::netns::relay_bin()), &[]);
    let url = format!("http://{}/big.bin", internet.addr());
    let mut figures = Vec::new();
    for mtu in ["1500", "65520"] {
        let env = [
            ("V86_RELAY_ADDR", format!("127.0.0.1:{port}")),
            ("V86_RELAY_LAN", format!("speed-{mtu}")),
            ("MTU", mtu.to_owned()),
            ("URL", url.clone()),
            ("BYTES", (mib << 20).to_string()),
            ("RUNS", "3".to_owned()),
        ];
        let out = run_node("guest-speed.mjs", &env, Duration::from_secs(400));
        let line = out
            .lines()
            .find(|l| l.starts_with("GUEST-SPEED mtu="))
            .unwrap_or_else(|| panic!("{out}"))
            .to_owned();
        figures.push(line);
    }
    eprintln!("{}", figures.join("\n"));
}
