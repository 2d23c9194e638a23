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

mod session;
mod stats;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use wtransport::tls::self_signed::time::{Duration as CertDuration, OffsetDateTime};
use wtransport::tls::{Sha256DigestFmt, self_signed::SelfSignedIdentityBuilder};
use wtransport::{Endpoint, Identity, ServerConfig, VarInt};

use super::TransportContext;
use crate::config::WebTransportListen;

pub(crate) use stats::{
    ConfiguredEndpoint, WebTransportInfo, WebTransportShared, WebTransportStats,
};

/// Self-signed certificates live this long: under Chromium's 14-day limit for hash pinning.
const CERT_VALIDITY_DAYS: i64 = 13;
/// Session close codes (application-defined).
const CLOSE_SHUTDOWN: u32 = 1001;
/// Most QUIC handshakes in progress at once; further attempts are refused, so a flood of
/// Initial packets cannot pile up tasks and TLS state.
const MAX_HANDSHAKES: usize = 256;

/// Why the WebTransport listener could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebTransportStartError {
    #[error(
        "cannot listen on {addr} (webtransport.listen): {source}. Pick a free address with --webtransport-listen or stop the program using it."
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificate(String),
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

/// The server config; `socket` is the bound socket for the first one, `None` for later
/// certificate reloads (they keep the socket).
fn server_config(
    app: &TransportContext,
    addr: SocketAddr,
    socket: Option<std::net::UdpSocket>,
    identity: Identity,
) -> ServerConfig {
    // QUIC expresses idle timeouts up to 2^62 ms; capped at a year, the value always fits.
    let idle = app
        .config()
        .idle_timeout()
        .min(Duration::from_secs(365 * 24 * 3600));
    let mut socket = socket;
    let mut base = || {
        let builder = match socket.take() {
            Some(socket) => ServerConfig::builder().with_bind_socket(socket),
            None => ServerConfig::builder().with_bind_address(addr),
        };
        builder
            .with_identity(identity.clone_identity())
            .keep_alive_interval(Some(app.config().ping_interval()))
    };
    // The idle timeout is capped above, so the fallback (and its unbound socket) is never
    // taken in practice.
    match base().max_idle_timeout(Some(idle)) {
        Ok(builder) => builder.build(),
        Err(_) => base().build(),
    }
}

/// Binds the UDP listener and starts serving sessions. Returns its address, or None if off.
pub(crate) async fn start(
    app: &Arc<TransportContext>,
    shared: &Arc<WebTransportShared>,
    tcp_listen: SocketAddr,
    servers: &TaskTracker,
) -> Result<Option<SocketAddr>, WebTransportStartError> {
    let addr = match app.config().webtransport.listen {
        WebTransportListen::Off => return Ok(None),
        WebTransportListen::Addr(addr) => addr,
        // Same port number as the TCP listener (an ephemeral request stays ephemeral).
        WebTransportListen::SameAsListen => {
            let mut addr = tcp_listen;
            if app.config().server.listen.port() == 0 {
                addr.set_port(0);
            }
            addr
        }
    };
    // A configured certificate is served as it is (a CA-signed one needs no pinning);
    // otherwise a self-signed one, rotated.
    let configured = match app.config().tls.paths() {
        Ok(Some((cert, key))) => Some(
            load_identity(cert, key)
                .await
                .map_err(WebTransportStartError::Certificate)?,
        ),
        _ => None,
    };
    let is_configured = configured.is_some();
    let (current, next, hashes) = match configured {
        Some(identity) => (identity, None, Vec::new()),
        None => {
            let (current, next) = (self_signed(), self_signed());
            let hashes = vec![hex_hash(&current), hex_hash(&next)];
            (current, Some(next), hashes)
        }
    };
    let bind_error = |source| WebTransportStartError::Bind { addr, source };
    let socket =
        super::bind_udp(addr, app.config().webtransport.socket_buffer_bytes).map_err(bind_error)?;
    let endpoint =
        Endpoint::server(server_config(app, addr, Some(socket), current)).map_err(bind_error)?;
    let local = endpoint.local_addr().map_err(bind_error)?;
    let _ = shared.info.set(WebTransportInfo {
        addr: local,
        hashes: RwLock::new(hashes),
    });
    let endpoint = Arc::new(endpoint);
    if is_configured {
        let _ = shared.configured.set(ConfiguredEndpoint {
            endpoint: endpoint.clone(),
            addr: local,
        });
    }
    if let Some(next) = next {
        servers.spawn(rotate_certificates(
            app.clone(),
            shared.clone(),
            endpoint.clone(),
            local,
            next,
        ));
    }
    servers.spawn(accept_loop(app.clone(), shared.stats.clone(), endpoint));
    Ok(Some(local))
}

async fn load_identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    Identity::load_pemfiles(cert, key).await.map_err(|e| {
        format!(
            "WebTransport cannot use --tls-cert {} / --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// Serves the configured certificate read again from its files (a reload after the files
/// were renewed): new handshakes get it, live sessions keep their keys. Does nothing when
/// the listener serves a self-signed certificate. Blocks: call it from a blocking thread.
pub(crate) fn reload_certificate(
    app: &TransportContext,
    shared: &WebTransportShared,
    cert: &Path,
    key: &Path,
) -> Result<(), String> {
    let Some(configured) = shared.configured.get() else {
        return Ok(());
    };
    // Reading the files is async in wtransport; the caller is on a blocking thread.
    let identity = tokio::runtime::Handle::current().block_on(load_identity(cert, key))?;
    configured
        .endpoint
        .reload_config(server_config(app, configured.addr, None, identity), false)
        .map_err(|e| format!("WebTransport could not take the new certificate: {e}"))
}

async fn rotate_certificates(
    app: Arc<TransportContext>,
    shared: Arc<WebTransportShared>,
    endpoint: Arc<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    addr: SocketAddr,
    mut next: Identity,
) {
    let period = Duration::from_secs(app.config().webtransport.cert_rotation_secs);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let after = self_signed();
        let serve = std::mem::replace(&mut next, after.clone_identity());
        let hashes = vec![hex_hash(&serve), hex_hash(&after)];
        // New handshakes use the new certificate; live sessions keep their keys.
        match endpoint.reload_config(server_config(&app, addr, None, serve), false) {
            Ok(()) => {
                if let Some(info) = shared.info.get()
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
    app: Arc<TransportContext>,
    stats: Arc<WebTransportStats>,
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
                tracker.spawn(session::run(app.clone(), stats.clone(), incoming, permit));
            }
            Err(_) => {
                tracing::debug!("webtransport handshake refused: {MAX_HANDSHAKES} in progress");
                incoming.refuse();
            }
        }
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"relay shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebTransportListen;

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
