//! Headless Debian Chromium (playwright-core) against a relay on 127.0.0.1: runs
//! tests/js/transports.test.mjs, where a page joins over WebTransport through
//! web-demo/relay-client.js, a Node WebSocket client joins too, and frames of every size
//! pass both ways, counted exactly (plus a WebRTC page once the relay offers WebRTC); as
//! root, a Linux namespace attached with `v86-relay tap` answers the page's pings.
//! Skips when Chromium, node or tests/js/node_modules is missing, unless
//! V86_RELAY_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether the browser test can run; explains why not, or fails when it must run.
fn browser_or_skip(test: &str) -> bool {
    let modules = repo().join("tests/js/node_modules");
    let node = Command::new("node").arg("--version").output().is_ok();
    let missing = if !chromium().exists() {
        Some(format!(
            "{} not found (apt install chromium)",
            chromium().display()
        ))
    } else if !node {
        Some("node not found (apt install nodejs)".to_owned())
    } else if !modules.join("playwright-core").exists() || !modules.join("ws").exists() {
        Some(format!(
            "{} lacks playwright-core or ws (run scripts/setup-test-deps.sh)",
            modules.display()
        ))
    } else {
        None
    };
    let Some(missing) = missing else { return true };
    if std::env::var("V86_RELAY_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{test}: {missing}, and V86_RELAY_REQUIRE_BROWSER=1 forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {missing}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_page_over_webtransport_and_node_websocket_share_a_lan() {
    if !browser_or_skip("chromium_transports") {
        return;
    }
    let relay = start(test_config()).await;
    // A real Linux namespace on LAN t, which the page pings (needs root).
    let namespace = common::netns::root_or_skip("page_pings_namespace").then(|| {
        let ns = common::netns::Netns::with_tap("wtping", "10.0.2.77/24");
        let tap = common::netns::attach_tap(relay.listen_addr.port(), "t", &ns);
        (ns, tap)
    });
    let pinging = namespace.is_some();
    let (status, output) = run_transports_test(&relay, pinging, None).await;
    let text = scrape(&relay).await;
    drop(namespace);
    relay.shutdown().await;
    match status {
        Some(status) => assert!(status.success(), "transports.test.mjs failed:\n{output}"),
        None => panic!("transports.test.mjs did not finish in 120 s:\n{output}"),
    }
    assert!(output.contains("ok: "), "{output}");
    if pinging {
        assert!(output.contains("pinged namespace 10.0.2.77"), "{output}");
    }
    // The page's frames reached the relay over WebTransport, fragmented where needed.
    assert!(
        metric(
            &text,
            "v86_relay_frames_received_total{transport=\"webtransport\"}"
        ) >= 5
    );
    assert!(metric(&text, "v86_relay_webtransport_fragments_received_total") >= 6);
    assert_eq!(
        metric(
            &text,
            "v86_relay_webtransport_reassembly_drops_total{reason=\"timeout\"}"
        ),
        0
    );
}

/// Runs tests/js/transports.test.mjs against `relay`; its exit status (None: timed out)
/// and output.
async fn run_transports_test(
    relay: &relay::Relay,
    pinging: bool,
    token: Option<&str>,
) -> (Option<std::process::ExitStatus>, String) {
    // One folder per run: the two tests of this file run at once in one process.
    let dir = std::env::temp_dir().join(format!(
        "v86-relay-browser-{}-{}",
        std::process::id(),
        relay.listen_addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new("node");
    if pinging {
        command.env("PING_IP", "10.0.2.77");
    }
    if let Some(token) = token {
        command.env("TOKEN", token);
    }
    let mut child = command
        .arg(repo().join("tests/js/transports.test.mjs"))
        .env("RELAY_URL", format!("http://{}", relay.listen_addr))
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("node starts");
    // Poll rather than block: the relay runs on this same runtime.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            // Kills only the node process this test started (by its handle); playwright
            // closes its browser when node goes.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{output}");
    (status, output)
}

/// With join tokens on, the pages join over WebTransport and WebRTC with the token that
/// /net/info hands back on their URLs (and the Node client over WebSocket); without one,
/// /net/info's URLs are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_join_with_a_token_over_webtransport_and_webrtc() {
    if !browser_or_skip("chromium_tokens") {
        return;
    }
    let secret = "browser-secret-0123456789-abcdefghijklmnop";
    let mut config = test_config();
    config.auth.secrets = vec![secret.into()];
    let relay = start(config).await;
    let claims = admission::Claims::new("t", relay::app::unix_now(), Duration::from_secs(600));
    let token = admission::mint_hs256(secret.as_bytes(), &claims);
    let (status, output) = run_transports_test(&relay, false, Some(&token)).await;
    let text = scrape(&relay).await;
    relay.shutdown().await;
    assert!(
        matches!(status, Some(s) if s.success()),
        "transports.test.mjs with a token:\n{output}"
    );
    assert!(output.contains("ok: "), "{output}");
    for transport in ["webtransport", "webrtc", "websocket"] {
        let sample = format!("v86_relay_connections_opened_total{{transport=\"{transport}\"}}");
        assert!(metric(&text, &sample) >= 1, "{sample}: {output}");
    }
}
