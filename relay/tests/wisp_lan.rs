//! `/wisp/lan/NAME/`: Wisp streams into a LAN. A namespace VM on LAN `nat` (a TAP attached
//! with `v86-relay tap`, its lease and host name from the relay's DHCP) serves a page with
//! busybox httpd; a third-party client (wisp-js, tests/js/wisp-lan.mjs) fetches it by host
//! name, bare and in the LAN's domain, and the server logs the gateway address as the
//! peer, as for an inbound port forward. Admission: a token for that LAN, not another.
//! Needs root and node with tests/js/node_modules; skips without them unless
//! V86_RELAY_REQUIRE_ROOT=1 / V86_RELAY_REQUIRE_BROWSER=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::internet::{relay_and_vm, wait_listening};
use common::netns::{Proc, root_or_skip};
use common::vm::Scratch;
use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn node_or_skip(test: &str) -> bool {
    let ok = Command::new("node").arg("--version").output().is_ok()
        && repo()
            .join("tests/js/node_modules/@mercuryworkshop/wisp-js")
            .exists();
    if !ok {
        if std::env::var("V86_RELAY_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("{test}: needs node and tests/js/node_modules (scripts/setup-test-deps.sh)");
        }
        eprintln!(
            "SKIPPED {test}: needs node and tests/js/node_modules (scripts/setup-test-deps.sh)"
        );
    }
    ok
}

fn wisp_get(url: &str, host: &str) -> String {
    let out = Command::new("node")
        .arg(repo().join("tests/js/wisp-lan.mjs"))
        .args([url, host, "80"])
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn wisp_streams_reach_a_vm_by_host_name() {
    let test = "wisp_streams_reach_a_vm_by_host_name";
    if !root_or_skip(test) || !node_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("wlan");
    let (_relay, port, _metrics, ns, _tap) = relay_and_vm("wlanvm", &scratch, &[]);
    let www = scratch.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let page = format!("served-inside-the-lan-{}", std::process::id());
    std::fs::write(www.join("index.html"), format!("{page}\n")).unwrap();
    // A CGI would show the peer; busybox httpd's -v log line does, on stderr.
    let log = scratch.0.join("httpd.log");
    let httpd = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "busybox", "httpd", "-f", "-v", "-p", "80", "-h",
        ])
        .arg(&www)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("busybox httpd");
    let _httpd = Proc(httpd);
    wait_listening(&ns, "127.0.0.1", 80);
    let url = format!("ws://127.0.0.1:{port}/wisp/lan/nat/");
    for host in ["wlanvm", "wlanvm.nat.lan"] {
        let answer = wisp_get(&url, host);
        assert!(answer.contains(&page), "{host}: {answer}");
    }
    // An unknown machine: the gateway has nobody to open the connection to.
    let answer = wisp_get(&url, "nobody");
    assert!(
        !answer.contains(&page) && answer.contains("CLOSE"),
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.contains("10.0.2.2"),
        "the gateway address opens the connection: {seen}"
    );
}

#[tokio::test]
async fn wisp_lan_needs_a_token_for_that_lan() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let mut config = test_config();
    config.auth.secrets = vec![SECRET.to_owned()];
    let relay = start(config).await;
    let token = |lan: &str| {
        let claims = admission::Claims::new(lan, relay::app::unix_now(), Duration::from_secs(600));
        admission::mint_hs256(SECRET.as_bytes(), &claims)
    };
    let base = format!("ws://{}/wisp/lan/class-a/", relay.listen_addr);
    let cases = [
        (base.clone(), false),
        (format!("{base}?token={}", token("wisp")), false),
        (format!("{base}?token={}", token("class-b")), false),
        (format!("{base}?token={}", token("class-a")), true),
        (format!("{base}?token={}", token("class-*")), true),
    ];
    for (url, accepted) in cases {
        let result = tokio_tungstenite::connect_async(url.as_str()).await;
        assert_eq!(result.is_ok(), accepted, "{url}");
    }
    let private = format!("ws://{}/wisp/lan/private-x/", relay.listen_addr);
    assert!(
        tokio_tungstenite::connect_async(private.as_str())
            .await
            .is_err()
    );
    relay.shutdown().await;
}
