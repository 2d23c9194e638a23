//! The bundled demo on the client listener: `GET /` (without a WebSocket upgrade) serves
//! web-demo/index.html, the page's files under /demo/, the v86 build under /v86/, xterm.js
//! under /xterm/, the guest image under /guest/, and `GET /net/lan?lan=NAME` lists a LAN's
//! machines for the LAN panel.
//!
//! The files live in a checkout of this repository (the web root): `--web-root DIR`, or the
//! first directory holding web-demo/index.html among the working directory, the binary's
//! directory, and their parents (so `scripts/start.sh` and `cargo run` find it untold).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tower_http::services::{ServeDir, ServeFile};

use super::AppState;
use crate::lan::LanView;
use crate::shared::{LanName, Transport};

/// The guest image files the page boots (built by vendor/v86/build-guest.sh).
pub(crate) const GUEST_FILES: [&str; 4] = ["bzImage", "initrd", "bios.bin", "vgabios.bin"];

/// Where the demo's files are, decided once at start-up.
#[derive(Clone, Debug, Default)]
pub(crate) struct DemoFiles {
    /// A directory holding web-demo/index.html; None when there is none (the page then
    /// says so).
    pub(crate) root: Option<PathBuf>,
}

impl DemoFiles {
    /// `configured` must hold the demo; without it the usual places are searched.
    pub(crate) fn locate(configured: Option<&Path>) -> Result<DemoFiles, String> {
        if let Some(dir) = configured {
            if !dir.join("web-demo/index.html").is_file() {
                return Err(format!(
                    "--web-root {}: no web-demo/index.html there. Point it at a checkout of v86-relay (the folder holding web-demo/ and vendor/v86/).",
                    dir.display()
                ));
            }
            return Ok(DemoFiles {
                root: Some(dir.to_owned()),
            });
        }
        let mut starts = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            starts.push(cwd);
        }
        if let Ok(exe) = std::env::current_exe() {
            starts.push(exe);
        }
        let root = starts.iter().find_map(|start| {
            start
                .ancestors()
                .find(|dir| dir.join("web-demo/index.html").is_file())
                .map(Path::to_owned)
        });
        Ok(DemoFiles { root })
    }

    /// What is missing before the page can boot a VM; empty when ready.
    pub(crate) fn missing(&self) -> Vec<&'static str> {
        let Some(root) = &self.root else {
            return vec!["web-demo/"];
        };
        let mut gaps = Vec::new();
        if !root
            .join("vendor/v86/node_modules/v86/build/libv86.mjs")
            .is_file()
            || !root.join("vendor/v86/node_modules/@xterm/xterm").is_dir()
        {
            gaps.push("vendor/v86/node_modules (npm ci in vendor/v86)");
        }
        if GUEST_FILES
            .iter()
            .any(|f| !root.join("vendor/v86/out").join(f).is_file())
        {
            gaps.push("vendor/v86/out (vendor/v86/build-guest.sh)");
        }
        gaps
    }
}

/// Routes of the demo; merged into the client router.
pub(crate) fn router(app: &AppState) -> Router<Arc<AppState>> {
    let mut router = Router::new().route("/net/lan", get(lan_machines));
    if let Some(root) = &app.demo.root {
        router = router
            .nest_service("/demo", ServeDir::new(root.join("web-demo")))
            .nest_service(
                "/v86",
                ServeDir::new(root.join("vendor/v86/node_modules/v86/build")),
            )
            .nest_service(
                "/xterm",
                ServeDir::new(root.join("vendor/v86/node_modules/@xterm/xterm")),
            );
        // Only the image files: vendor/v86/out also holds the build's apt cache.
        for f in GUEST_FILES {
            router = router.route_service(
                &format!("/guest/{f}"),
                ServeFile::new(root.join("vendor/v86/out").join(f)),
            );
        }
    }
    router
}

/// `GET /` without a WebSocket upgrade: the demo page, or how to get it.
pub(crate) async fn landing(app: &AppState) -> Response {
    let gaps = app.demo.missing();
    if let (Some(root), true) = (&app.demo.root, gaps.is_empty()) {
        match tokio::fs::read_to_string(root.join("web-demo/index.html")).await {
            Ok(page) => return Html(page).into_response(),
            Err(e) => tracing::warn!("cannot read web-demo/index.html: {e}"),
        }
    }
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>v86-relay</title>\
         <h1>v86-relay is running</h1>\
         <p>Point v86 at it: <code>net_device: {{ type: \"virtio\", relay_url: \"ws://THIS-HOST/lan/NAME\" }}</code>.</p>\
         <p>The bundled demo (Linux VMs in browser tabs on a shared LAN) is not built yet: missing {}.\
         Run <code>scripts/start.sh</code> in the v86-relay checkout: it installs v86 with npm, builds the guest, and starts the relay with the demo\
         (or give <code>--web-root</code> the checkout that has them).</p>",
        html_escape(&gaps.join(", "))
    );
    Html(page).into_response()
}

/// `02:86:00:00:00:01`, as `ip link` prints it.
fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Debug, Deserialize)]
struct LanQuery {
    lan: Option<String>,
}

/// One row of the LAN panel: a client port, with its DHCP lease when it has one.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Machine {
    pub(crate) host: Option<String>,
    pub(crate) ip: Option<String>,
    pub(crate) mac: Option<String>,
    pub(crate) transport: &'static str,
    pub(crate) frames_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) frames_out: u64,
    pub(crate) bytes_out: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct LanMachines {
    pub(crate) lan: String,
    pub(crate) machines: Vec<Machine>,
}

/// `GET /net/lan?lan=NAME`: the LAN's machines, from the switch and the gateway's leases.
async fn lan_machines(State(app): State<Arc<AppState>>, Query(q): Query<LanQuery>) -> Response {
    let name = q.lan.unwrap_or_else(|| "default".to_owned());
    let lan = match LanName::new(&name) {
        Ok(lan) => lan,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let leases: Vec<_> = app
        .leases
        .get(lan.as_str())
        .map(|s| s.leases)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.expires_unix_secs > now)
        .collect();
    let macs: Vec<_> = leases.iter().map(|l| l.mac).collect();
    let machines = app
        .ctx
        .lans
        .lan_view(&lan, &macs)
        .map(|view| machines(&view, &leases))
        .unwrap_or_default();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(LanMachines {
            lan: lan.as_str().to_owned(),
            machines,
        }),
    )
        .into_response()
}

/// One row per client port (not the gateway), with the newest live lease whose MAC the
/// switch last saw on that port. `view.mac_ports` lines up with `leases`.
fn machines(view: &LanView, leases: &[dhcp::LeaseRecord]) -> Vec<Machine> {
    view.ports
        .iter()
        .filter(|p| p.transport != Transport::Gateway)
        .map(|p| {
            let lease = leases
                .iter()
                .zip(&view.mac_ports)
                .filter(|(_, port)| **port == Some(p.id))
                .map(|(lease, _)| lease)
                .max_by_key(|l| l.expires_unix_secs);
            Machine {
                host: lease.and_then(|l| l.host_name.clone()),
                ip: lease.map(|l| l.ip.to_string()),
                mac: lease.map(|l| mac_string(&l.mac.0)),
                transport: p.transport.as_str(),
                frames_in: p.traffic.frames_in,
                bytes_in: p.traffic.bytes_in,
                frames_out: p.traffic.frames_out,
                bytes_out: p.traffic.bytes_out,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_web_root_without_the_demo_fails_with_the_fix() {
        let err = DemoFiles::locate(Some(Path::new("/nonexistent-v86"))).unwrap_err();
        assert!(err.contains("web-demo/index.html"), "{err}");
        assert!(err.contains("checkout"), "{err}");
    }

    #[test]
    fn without_a_root_everything_is_missing() {
        let files = DemoFiles { root: None };
        assert_eq!(files.missing(), vec!["web-demo/"]);
    }

    fn port(id: u64, transport: Transport) -> crate::lan::PortView {
        crate::lan::PortView {
            id,
            transport,
            traffic: crate::lan::TrafficSnapshot {
                frames_in: id * 10,
                bytes_in: id * 1000,
                frames_out: id,
                bytes_out: id * 100,
            },
        }
    }

    fn lease(last: u8, host: &str, expires: u64) -> dhcp::LeaseRecord {
        let mac = smoltcp::wire::EthernetAddress([2, 0x86, 0, 0, 0, last]);
        dhcp::LeaseRecord {
            ip: std::net::Ipv4Addr::new(10, 0, 2, 14 + last),
            mac,
            chaddr: mac,
            client_id: None,
            host_name: Some(host.to_owned()),
            expires_unix_secs: expires,
        }
    }

    #[test]
    fn machines_join_ports_and_leases_by_where_the_mac_lives() {
        let view = LanView {
            ports: vec![
                port(1, Transport::Gateway),
                port(2, Transport::WebSocket),
                port(3, Transport::WebRtc),
                port(4, Transport::WebSocket),
            ],
            // vm1 on port 2; vm2's old lease and its newer one (after a MAC change) both on
            // port 3; a lease whose machine is gone; port 4 has no lease yet.
            mac_ports: vec![Some(2), Some(3), Some(3), None],
        };
        let leases = [
            lease(1, "vm1", 100),
            lease(2, "vm2-old", 50),
            lease(3, "vm2", 200),
            lease(4, "gone", 300),
        ];
        let rows = machines(&view, &leases);
        assert_eq!(rows.len(), 3, "the gateway is not a machine: {rows:?}");
        assert_eq!(rows[0].host.as_deref(), Some("vm1"));
        assert_eq!(rows[0].ip.as_deref(), Some("10.0.2.15"));
        assert_eq!(rows[0].mac.as_deref(), Some("02:86:00:00:00:01"));
        assert_eq!((rows[0].transport, rows[0].frames_in), ("websocket", 20));
        assert_eq!(rows[1].host.as_deref(), Some("vm2"));
        assert_eq!(rows[1].transport, "webrtc");
        assert_eq!(rows[2].host, None);
        assert_eq!(rows[2].ip, None);
    }

    #[test]
    fn macs_print_with_colons() {
        assert_eq!(mac_string(&[2, 0x86, 0, 0, 0, 0xab]), "02:86:00:00:00:ab");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(html_escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
