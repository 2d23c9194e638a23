//! WebRTC transport: the tokio driver around the sans-IO [`webrtc_gw::Gateway`].
//!
//! A browser POSTs its SDP offer to `/net/rtc/offer?lan=NAME` and gets the answer (no
//! trickle). Every browser then talks to one UDP socket; one task owns the socket and the
//! gateway, feeds it datagrams, LAN frames and timers, and sends what it produces. Each
//! browser is a LAN port from its offer on, so a full LAN is refused in the HTTP answer and
//! a browser that never connects is removed after `webrtc.connect_timeout_secs`.

mod driver;
mod offer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use webrtc_gw::{Gateway, GatewayConfig, Stats};

use super::TransportContext;
use crate::config::{Config, WebRtcAddrs};
use crate::shared::LanName;
use crate::shared::metrics::Family;
use driver::Driver;

pub(crate) use offer::router;

pub(crate) const OFFER_PATH: &str = "/net/rtc/offer";
/// SDP offers are a few KiB; anything much larger is not one.
const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Datagrams read in one go before the other inputs get a turn.
const RECV_BATCH: usize = 64;
/// Frames sent in one go before the other inputs get a turn.
const SEND_BATCH: usize = 64;

/// The running WebRTC peer, as the HTTP side sees it.
#[derive(Debug)]
pub(crate) struct WebRtc {
    /// The bound UDP address.
    pub(crate) local_addr: SocketAddr,
    addrs: WebRtcAddrs,
    /// Used when neither a public IP nor a specific listen IP is configured and the
    /// browser reached us by host name.
    fallback_ip: IpAddr,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    peers: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
enum Command {
    Offer {
        lan: LanName,
        sdp: String,
        /// Admission granted on the HTTP side; the session's audit record.
        admitted: crate::admission::Admitted,
        candidate: SocketAddr,
        reply: oneshot::Sender<Result<String, (StatusCode, String)>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebRtcStartError {
    #[error(
        "cannot listen for WebRTC on UDP {addr} (webrtc.listen): {source}. Pick a free address with --webrtc-listen, or --webrtc-listen off."
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificate(#[from] webrtc_gw::CertificateError),
}

impl WebRtc {
    /// The offer URL for LAN `lan`, as seen by a client that reached the relay at `base`
    /// (e.g. `http://127.0.0.1:8086`). For `/net/info`.
    pub(crate) fn offer_url(base: &str, lan: &LanName) -> String {
        format!("{}{OFFER_PATH}?lan={lan}", base.trim_end_matches('/'))
    }

    /// Gateway counters, for metrics.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Browsers connecting or connected.
    pub(crate) fn peer_count(&self) -> usize {
        self.peers.load(Relaxed)
    }

    /// The address a browser must send to, given the IP it reached the HTTP side at.
    fn candidate(&self, reached: Option<IpAddr>) -> SocketAddr {
        let port = self.addrs.public_port.unwrap_or(self.local_addr.port());
        let ip = self
            .addrs
            .public_ip
            .or_else(|| Some(self.local_addr.ip()).filter(|ip| !ip.is_unspecified()))
            .or(reached.filter(|ip| !ip.is_unspecified()))
            .unwrap_or(self.fallback_ip);
        SocketAddr::new(ip, port)
    }

    /// The gateway's counters on `/metrics`.
    pub(crate) fn families(&self) -> Vec<Family> {
        let s = self.stats();
        let counter = |name, help, value: &std::sync::atomic::AtomicU64| {
            Family::counter(name, help, value.load(Relaxed))
        };
        vec![
            counter(
                "webrtc_datachannel_buffer_drops",
                "Frames to browsers dropped because the DataChannel send buffer was full",
                &s.buffer_drops,
            ),
            counter(
                "webrtc_not_open_drops",
                "Frames to browsers dropped because their DataChannel was not open yet",
                &s.not_open_drops,
            ),
            counter(
                "webrtc_unclaimed_datagrams",
                "UDP datagrams no WebRTC peer claimed",
                &s.unclaimed_datagrams,
            ),
            counter(
                "webrtc_foreign_messages",
                "DataChannel messages dropped: text, or not on the v86-relay channel",
                &s.foreign_messages,
            ),
            counter(
                "webrtc_connect_timeouts",
                "WebRTC peers removed because they never connected",
                &s.connect_timeouts,
            ),
            counter(
                "webrtc_peer_failures",
                "WebRTC peers dropped because the WebRTC stack failed on their input",
                &s.failures,
            ),
            Family::gauge(
                "webrtc_peers",
                "WebRTC peers connecting or connected",
                self.peer_count() as i64,
            ),
        ]
    }
}

/// Binds the UDP socket and starts the driver task. Returns `None` when WebRTC is off.
pub(crate) async fn start(
    app: &Arc<TransportContext>,
) -> Result<Option<Arc<WebRtc>>, WebRtcStartError> {
    // Validated at start-up already; `off` is the only other outcome.
    let Ok(Some(addrs)) = app.config().webrtc_addrs() else {
        return Ok(None);
    };
    let socket = bind(addrs.listen, app.config().webrtc.socket_buffer_bytes).map_err(|source| {
        WebRtcStartError::Bind {
            addr: addrs.listen,
            source,
        }
    })?;
    let local_addr = socket.local_addr().unwrap_or(addrs.listen);
    let gateway = Gateway::new(gateway_config(&app.config()))?;
    let stats = gateway.stats();
    let (commands, command_rx) = mpsc::channel(64);
    let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let driver = Driver::new(app.clone(), gateway, socket, command_rx, peers.clone());
    app.tasks.spawn(driver.run());
    tracing::info!("WebRTC peer on udp://{local_addr} (offers at {OFFER_PATH})");
    Ok(Some(Arc::new(WebRtc {
        local_addr,
        addrs,
        fallback_ip: outbound_ip(local_addr.is_ipv6()),
        commands,
        stats,
        peers,
    })))
}

fn gateway_config(config: &Config) -> GatewayConfig {
    GatewayConfig {
        connect_timeout: Duration::from_secs(config.webrtc.connect_timeout_secs),
        max_pending: config.webrtc.max_pending,
        sctp_send_buffer: config.webrtc.sctp_send_buffer_bytes,
        send_window: config.webrtc.send_window_bytes,
        max_message_size: u32::try_from(config.limits.max_frame_size).unwrap_or(u32::MAX),
    }
}

/// A UDP socket with large buffers: bursts of frames overflowed the default ones.
fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(super::bind_udp(addr, buffer)?)
}

/// The IP of the interface the default route leaves by. Connecting a UDP socket only picks
/// a route; no packet is sent.
fn outbound_ip(v6: bool) -> IpAddr {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        (
            "[::]:0".parse().unwrap_or(SocketAddr::from(([0u16; 8], 0))),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9)),
        )
    } else {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::from(([192, 0, 2, 1], 9)),
        )
    };
    std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};
    use offer::host_ip;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn host_header_ips() {
        assert_eq!(
            host_ip(&headers("127.0.0.1:8086")),
            Some([127, 0, 0, 1].into())
        );
        assert_eq!(host_ip(&headers("10.1.2.3")), Some([10, 1, 2, 3].into()));
        assert_eq!(
            host_ip(&headers("[::1]:8086")),
            Some("::1".parse().unwrap())
        );
        assert_eq!(host_ip(&headers("relay.example.org:8086")), None);
        assert_eq!(host_ip(&HeaderMap::new()), None);
    }

    fn rtc(listen: &str, public_ip: Option<&str>, public_port: Option<u16>) -> WebRtc {
        let (commands, _) = mpsc::channel(1);
        WebRtc {
            local_addr: listen.parse().unwrap(),
            addrs: WebRtcAddrs {
                listen: listen.parse().unwrap(),
                public_ip: public_ip.map(|ip| ip.parse().unwrap()),
                public_port,
            },
            fallback_ip: [192, 0, 2, 9].into(),
            commands,
            stats: Arc::default(),
            peers: Arc::default(),
        }
    }

    #[test]
    fn announced_candidate() {
        let reached = Some([10, 0, 0, 5].into());
        // A specific listen IP is announced as is.
        let c = rtc("127.0.0.1:8086", None, None).candidate(reached);
        assert_eq!(c, "127.0.0.1:8086".parse().unwrap());
        // On 0.0.0.0: the IP the page reached, else the default route's.
        let any = rtc("0.0.0.0:8086", None, None);
        assert_eq!(any.candidate(reached), "10.0.0.5:8086".parse().unwrap());
        assert_eq!(any.candidate(None), "192.0.2.9:8086".parse().unwrap());
        // A public address wins, with its port when given.
        let public = rtc("0.0.0.0:8086", Some("203.0.113.7"), Some(443));
        assert_eq!(
            public.candidate(reached),
            "203.0.113.7:443".parse().unwrap()
        );
    }

    #[test]
    fn offer_url_for_net_info() {
        let lan = LanName::new("physics-101").unwrap();
        assert_eq!(
            WebRtc::offer_url("http://127.0.0.1:8086/", &lan),
            "http://127.0.0.1:8086/net/rtc/offer?lan=physics-101"
        );
    }
}
