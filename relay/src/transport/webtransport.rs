//! WebTransport (HTTP/3 over QUIC, wtransport) clients: one session is one port. Frames
//! travel as unreliable datagrams, fragmented by the `webtransport` crate when larger than the
//! peer's current datagram limit, which is read from the session for every frame (Chromium
//! allows 1211 bytes; QUIC path MTU discovery can change it).
//!
//! The session path picks the LAN exactly as for WebSocket: `/` is LAN `default`,
//! `/lan/NAME` is LAN NAME. Without a configured certificate the relay makes a self-signed
//! ECDSA one valid for 13 days (Chromium accepts hash-pinned certificates only when ECDSA and
//! valid under 14 days) and rotates it before expiry: the next certificate is published at
//! `/net/info` one rotation period before it is served, and live sessions keep their keys.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Deserialize;
use tokio_util::task::TaskTracker;
use webtransport::{
    DropReason as FragmentDrop, Fragmenter, Reassembler, ReassemblyLimits, Received,
};
use wtransport::endpoint::IncomingSession;
use wtransport::tls::self_signed::time::{Duration as CertDuration, OffsetDateTime};
use wtransport::tls::{Sha256DigestFmt, self_signed::SelfSignedIdentityBuilder};
use wtransport::{Connection, Endpoint, Identity, ServerConfig, VarInt};

use crate::lan::{LanName, Transport};
use crate::server::{AppState, StartError};

/// Self-signed certificates live this long: under Chromium's 14-day limit for hash pinning.
const CERT_VALIDITY_DAYS: i64 = 13;
/// Longest rotation period: a certificate is published one period before it is served and
/// served for one period, so two periods must fit in its validity.
pub const MAX_ROTATION_SECS: u64 = 6 * 24 * 3600;
/// Session close codes (application-defined).
const CLOSE_SHUTDOWN: u32 = 1001;
/// Most QUIC handshakes in progress at once; further attempts are refused, so a flood of
/// Initial packets cannot pile up tasks and TLS state.
const MAX_HANDSHAKES: usize = 256;

/// `[webtransport] listen`: absent = the same IP and port number as `server.listen`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WebTransportListen {
    #[default]
    SameAsListen,
    Off,
    Addr(SocketAddr),
}

impl FromStr for WebTransportListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(WebTransportListen::Off);
        }
        s.parse().map(WebTransportListen::Addr).map_err(|_| {
            format!("`{s}` is not a UDP address: use IP:PORT such as 0.0.0.0:8086, or `off`")
        })
    }
}

impl TryFrom<String> for WebTransportListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The `[webtransport]` section of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebTransportConfig {
    pub listen: WebTransportListen,
    /// How often the self-signed certificate is replaced (advanced; tests shorten it).
    pub cert_rotation_secs: u64,
    /// Most bytes one session may hold in incomplete fragmented frames.
    pub max_reassembly_bytes: usize,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        Self {
            listen: WebTransportListen::SameAsListen,
            cert_rotation_secs: 5 * 24 * 3600,
            max_reassembly_bytes: 256 * 1024,
        }
    }
}

impl WebTransportConfig {
    /// Checks the section; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str, String)> {
        if !(1..=MAX_ROTATION_SECS).contains(&self.cert_rotation_secs) {
            return Err((
                "webtransport.cert_rotation_secs",
                self.cert_rotation_secs.to_string(),
                "out of range",
                format!(
                    "use 1 to {MAX_ROTATION_SECS} (6 days): self-signed certificates are valid 13 days and each is published one period before use"
                ),
            ));
        }
        if !(4096..=64 << 20).contains(&self.max_reassembly_bytes) {
            return Err((
                "webtransport.max_reassembly_bytes",
                self.max_reassembly_bytes.to_string(),
                "out of range",
                "use 4096 to 67108864; 262144 holds several full-size jumbo frames".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Relay-wide WebTransport counters, shared by every session and read by `/metrics`.
#[derive(Debug, Default)]
pub struct WebTransportStats {
    pub fragments_received: AtomicU64,
    pub fragments_sent: AtomicU64,
    /// Outgoing frames that even 64 datagrams of the peer's size could not carry, or sent
    /// while the peer refused datagrams.
    pub send_failures: AtomicU64,
    pub reassembly_drops: [AtomicU64; FragmentDrop::ALL.len()],
    /// Bytes held in incomplete frames over all sessions; back to 0 when they complete,
    /// time out, or their session ends.
    pub reassembly_bytes: AtomicI64,
}

/// What `/net/info` and `/metrics` need from the WebTransport listener.
#[derive(Debug, Default)]
pub struct WebTransportShared {
    pub stats: Arc<WebTransportStats>,
    /// Set once the listener runs.
    pub info: std::sync::OnceLock<WebTransportInfo>,
}

#[derive(Debug)]
pub struct WebTransportInfo {
    pub addr: SocketAddr,
    /// Hex SHA-256 of the served and the next certificate; empty for a configured one.
    pub hashes: RwLock<Vec<String>>,
}

impl WebTransportShared {
    pub fn certificate_hashes(&self) -> Vec<String> {
        self.info
            .get()
            .map(|i| i.hashes.read().map(|h| h.clone()).unwrap_or_default())
            .unwrap_or_default()
    }
}

fn hex_hash(identity: &Identity) -> String {
    identity
        .certificate_chain()
        .as_slice()
        .first()
        .map(|c| c.hash().fmt(Sha256DigestFmt::DottedHex).replace(':', ""))
        .unwrap_or_default()
}

fn self_signed() -> Identity {
    // A minute of slack for clocks a little behind ours.
    let not_before = OffsetDateTime::now_utc() - CertDuration::minutes(1);
    SelfSignedIdentityBuilder::new()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .not_before(not_before)
        .offset_from_not_before(CertDuration::days(CERT_VALIDITY_DAYS))
        .build()
        .expect("fixed SANs are valid")
}

fn server_config(app: &AppState, addr: SocketAddr, identity: Identity) -> ServerConfig {
    // QUIC expresses idle timeouts up to 2^62 ms; capped at a year, the value always fits.
    let idle = app
        .config
        .idle_timeout()
        .min(Duration::from_secs(365 * 24 * 3600));
    let base = || {
        ServerConfig::builder()
            .with_bind_address(addr)
            .with_identity(identity.clone_identity())
            .keep_alive_interval(Some(app.config.ping_interval()))
    };
    match base().max_idle_timeout(Some(idle)) {
        Ok(builder) => builder.build(),
        Err(_) => base().build(),
    }
}

/// Binds the UDP listener and starts serving sessions. Returns its address, or None if off.
pub async fn start(
    app: &Arc<AppState>,
    tcp_listen: SocketAddr,
    servers: &TaskTracker,
) -> Result<Option<SocketAddr>, StartError> {
    let addr = match app.config.webtransport.listen {
        WebTransportListen::Off => return Ok(None),
        WebTransportListen::Addr(addr) => addr,
        // Same port number as the TCP listener (an ephemeral request stays ephemeral).
        WebTransportListen::SameAsListen => {
            let mut addr = tcp_listen;
            if app.config.server.listen.port() == 0 {
                addr.set_port(0);
            }
            addr
        }
    };
    // A configured certificate is served as it is (a CA-signed one needs no pinning);
    // otherwise a self-signed one, rotated.
    let configured = match app.config.tls.paths() {
        Ok(Some((cert, key))) => Some(Identity::load_pemfiles(cert, key).await.map_err(|e| {
            StartError::Tls(format!(
                "WebTransport cannot use --tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?),
        _ => None,
    };
    let (current, next, hashes) = match configured {
        Some(identity) => (identity, None, Vec::new()),
        None => {
            let (current, next) = (self_signed(), self_signed());
            let hashes = vec![hex_hash(&current), hex_hash(&next)];
            (current, Some(next), hashes)
        }
    };
    let bind_error = |source| StartError::Bind {
        addr,
        key: "webtransport.listen",
        flag: "webtransport-listen",
        source,
    };
    let endpoint = Endpoint::server(server_config(app, addr, current)).map_err(bind_error)?;
    let local = endpoint.local_addr().map_err(bind_error)?;
    let _ = app.webtransport.info.set(WebTransportInfo {
        addr: local,
        hashes: RwLock::new(hashes),
    });
    let endpoint = Arc::new(endpoint);
    if let Some(next) = next {
        servers.spawn(rotate_certificates(
            app.clone(),
            endpoint.clone(),
            local,
            next,
        ));
    }
    servers.spawn(accept_loop(app.clone(), endpoint));
    Ok(Some(local))
}

async fn rotate_certificates(
    app: Arc<AppState>,
    endpoint: Arc<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    addr: SocketAddr,
    mut next: Identity,
) {
    let period = Duration::from_secs(app.config.webtransport.cert_rotation_secs);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let after = self_signed();
        let serve = std::mem::replace(&mut next, after.clone_identity());
        let hashes = vec![hex_hash(&serve), hex_hash(&after)];
        // New handshakes use the new certificate; live sessions keep their keys.
        match endpoint.reload_config(server_config(&app, addr, serve), false) {
            Ok(()) => {
                if let Some(info) = app.webtransport.info.get()
                    && let Ok(mut h) = info.hashes.write()
                {
                    *h = hashes;
                }
                tracing::info!("webtransport certificate rotated");
            }
            Err(error) => tracing::error!("webtransport certificate rotation failed: {error}"),
        }
    }
}

async fn accept_loop(
    app: Arc<AppState>,
    endpoint: Arc<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        match handshakes.clone().try_acquire_owned() {
            Ok(permit) => {
                let tracker = app.tasks.clone();
                tracker.spawn(session(app.clone(), incoming, permit));
            }
            Err(_) => {
                tracing::debug!("webtransport handshake refused: {MAX_HANDSHAKES} in progress");
                incoming.refuse();
            }
        }
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"relay shutting down");
}

/// The LAN a session path names: `/` or `/lan/NAME`, query ignored.
pub fn lan_from_path(path: &str) -> Option<Result<LanName, crate::lan::InvalidLanName>> {
    let path = path.split('?').next().unwrap_or("");
    if path == "/" || path.is_empty() {
        return Some(Ok(LanName::default_lan()));
    }
    path.strip_prefix("/lan/").map(LanName::new)
}

async fn session(
    app: Arc<AppState>,
    incoming: IncomingSession,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let handshake = Duration::from_secs(10);
    let request = match tokio::time::timeout(handshake, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            tracing::debug!("webtransport handshake failed: {error}");
            return;
        }
        Err(_) => return,
    };
    if !app
        .config
        .origin_allowed(request.origin().map(str::as_bytes))
    {
        tracing::debug!(
            origin = request.origin(),
            "webtransport session refused: origin not in --allowed-origins"
        );
        request.forbidden().await;
        return;
    }
    let lan = match lan_from_path(request.path()) {
        Some(Ok(lan)) => lan,
        Some(Err(invalid)) => {
            tracing::debug!("webtransport session refused: {invalid}");
            request.not_found().await;
            return;
        }
        None => {
            request.not_found().await;
            return;
        }
    };
    let (port, mut queue) = match app.lans.join(&lan, Transport::WebTransport) {
        Ok(joined) => joined,
        Err(refused) => {
            tracing::warn!(%lan, "webtransport session refused: {refused}");
            request.too_many_requests().await;
            return;
        }
    };
    let connection = match tokio::time::timeout(handshake, request.accept()).await {
        Ok(Ok(connection)) => connection,
        _ => return,
    };
    drop(handshake_permit);
    tracing::debug!(%lan, port = %port.id(), "webtransport client joined");
    let stats = app.webtransport.stats.clone();
    let limits = ReassemblyLimits {
        max_frame_size: app.lans.max_frame_size(),
        max_pending_bytes: app.config.webtransport.max_reassembly_bytes,
    };
    let mut reader = SessionReader::new(limits, stats.clone());
    let mut fragmenter = Fragmenter::new();
    let counters = port.counters_handle();
    let stop = app.shutdown.child_token();
    let mut datagrams = Vec::new();
    loop {
        let timeout = reader.reassembler.poll_timeout();
        tokio::select! {
            _ = stop.cancelled() => {
                connection.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"relay shutting down");
                break;
            }
            _ = sleep_until_opt(timeout) => reader.timeout(Instant::now()),
            datagram = connection.receive_datagram() => {
                let Ok(datagram) = datagram else { break };
                let now = Instant::now();
                if let Some(frame) = reader.receive(now, datagram.payload()) {
                    port.ingress(now, frame);
                }
            }
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                counters.count_out(frame.len());
                let frame = counters.to_client(frame);
                if !send_frame(&connection, &mut fragmenter, &frame, &mut datagrams, &stats) {
                    break;
                }
            }
        }
    }
    tracing::debug!(%lan, port = %port.id(), "webtransport client left");
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends one frame as one or more datagrams; false when the session is gone.
fn send_frame(
    connection: &Connection,
    fragmenter: &mut Fragmenter,
    frame: &[u8],
    datagrams: &mut Vec<Bytes>,
    stats: &WebTransportStats,
) -> bool {
    let Some(max) = connection.max_datagram_size() else {
        stats.send_failures.fetch_add(1, Relaxed);
        return true;
    };
    datagrams.clear();
    match fragmenter.encode(frame, max, datagrams) {
        Ok(1) => {}
        Ok(n) => {
            stats.fragments_sent.fetch_add(n as u64, Relaxed);
        }
        Err(_) => {
            stats.send_failures.fetch_add(1, Relaxed);
            return true;
        }
    }
    for d in datagrams.drain(..) {
        match connection.send_datagram(d) {
            Ok(()) => {}
            Err(wtransport::error::SendDatagramError::NotConnected) => return false,
            Err(_) => {
                stats.send_failures.fetch_add(1, Relaxed);
                return true;
            }
        }
    }
    true
}

/// One session's reassembly plus the bookkeeping that keeps the relay-wide metrics exact.
struct SessionReader {
    reassembler: Reassembler,
    stats: Arc<WebTransportStats>,
    reported_bytes: usize,
    reported_drops: [u64; FragmentDrop::ALL.len()],
}

impl SessionReader {
    fn new(limits: ReassemblyLimits, stats: Arc<WebTransportStats>) -> Self {
        Self {
            reassembler: Reassembler::new(limits),
            stats,
            reported_bytes: 0,
            reported_drops: [0; FragmentDrop::ALL.len()],
        }
    }

    fn receive(&mut self, now: Instant, datagram: Bytes) -> Option<Bytes> {
        if datagram.first() == Some(&webtransport::FRAGMENT) {
            self.stats.fragments_received.fetch_add(1, Relaxed);
        }
        let received = self.reassembler.receive(now, datagram);
        self.sync();
        match received {
            Received::Frame(frame) => Some(frame),
            Received::Stored | Received::Dropped(_) => None,
        }
    }

    fn timeout(&mut self, now: Instant) {
        self.reassembler.handle_timeout(now);
        self.sync();
    }

    fn sync(&mut self) {
        let bytes = self.reassembler.pending_bytes();
        if bytes != self.reported_bytes {
            let delta = bytes as i64 - self.reported_bytes as i64;
            self.stats.reassembly_bytes.fetch_add(delta, Relaxed);
            self.reported_bytes = bytes;
        }
        for reason in FragmentDrop::ALL {
            let now = self.reassembler.drops(reason);
            let before = &mut self.reported_drops[reason.index()];
            if now != *before {
                self.stats.reassembly_drops[reason.index()].fetch_add(now - *before, Relaxed);
                *before = now;
            }
        }
    }
}

impl Drop for SessionReader {
    fn drop(&mut self) {
        // An abandoned session's incomplete frames are freed with it.
        self.stats
            .reassembly_bytes
            .fetch_sub(self.reported_bytes as i64, Relaxed);
    }
}

/// `/metrics` families for WebTransport.
#[derive(Debug)]
pub struct WebTransportCollector(pub Arc<WebTransportStats>);

impl Collector for WebTransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: &AtomicU64| {
            ConstCounter::new(value.load(Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)
        };
        counter(
            &mut encoder,
            "webtransport_fragments_received",
            "WebTransport datagrams received that carried a fragment of a frame",
            &s.fragments_received,
        )?;
        counter(
            &mut encoder,
            "webtransport_fragments_sent",
            "WebTransport datagrams sent that carried a fragment of a frame",
            &s.fragments_sent,
        )?;
        counter(
            &mut encoder,
            "webtransport_send_failures",
            "Frames not sent to a WebTransport client (too large for its datagram limit, or datagrams refused)",
            &s.send_failures,
        )?;
        let mut drops = encoder.encode_descriptor(
            "webtransport_reassembly_drops",
            "WebTransport datagrams or incomplete frames dropped during reassembly, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in FragmentDrop::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(s.reassembly_drops[reason.index()].load(Relaxed))
                .encode(drops.encode_family(&labels)?)?;
        }
        ConstGauge::new(s.reassembly_bytes.load(Relaxed)).encode(encoder.encode_descriptor(
            "webtransport_reassembly_bytes",
            "Bytes held in incomplete fragmented frames over all WebTransport sessions",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_paths() {
        assert_eq!(lan_from_path("/"), Some(Ok(LanName::default_lan())));
        assert_eq!(
            lan_from_path("/lan/t?x=1"),
            Some(Ok(LanName::new("t").unwrap()))
        );
        assert!(matches!(lan_from_path("/lan/a/b"), Some(Err(_))));
        assert_eq!(lan_from_path("/other"), None);
    }

    #[test]
    fn listen_values() {
        assert_eq!("off".parse(), Ok(WebTransportListen::Off));
        assert_eq!(
            "127.0.0.1:4433".parse(),
            Ok(WebTransportListen::Addr("127.0.0.1:4433".parse().unwrap()))
        );
        assert!("nonsense".parse::<WebTransportListen>().is_err());
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let err = crate::Config::from_toml("[webtransport]\nlisten = \"nonsense\"\n").unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
        let config = crate::Config::from_toml("[webtransport]\nlisten = \"off\"\n").unwrap();
        assert_eq!(config.webtransport.listen, WebTransportListen::Off);
        let mut config = crate::Config::default();
        config.webtransport.cert_rotation_secs = 7 * 24 * 3600;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("webtransport.cert_rotation_secs"), "{err}");
    }

    #[test]
    fn self_signed_is_ecdsa() {
        let identity = self_signed();
        assert_eq!(hex_hash(&identity).len(), 64);
        // rcgen's PKCS#8 for P-256 carries the id-ecPublicKey OID 1.2.840.10045.2.1.
        let oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let key = identity.private_key().secret_der();
        assert!(key.windows(oid.len()).any(|w| w == oid));
    }
}
