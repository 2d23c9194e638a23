//! `--tls-cert/--tls-key`: one real certificate for every transport. WebTransport serves it
//! instead of a self-signed one, and the `--listen` port speaks `https://` and `wss://`
//! (rustls), so a page on HTTPS reaches the relay without a separate proxy. The plain
//! listener is here too: both give handlers the client's address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Most TLS handshakes in progress at once on `--listen`; a slow or silent client holds one
/// for at most [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate and key; errors name the file and what is wrong with it.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read --tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {} is not PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {} holds no CERTIFICATE block: give the PEM chain, leaf first",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from --tls-key {}: {e}. Give a PEM PKCS#8, RSA or EC key",
            key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // WebSocket upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener whose connections are TLS; handshakes run in their own tasks so a slow
/// client never holds up the others.
#[derive(Debug)]
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// The certificate in use, swapped by a reload; handshakes after the swap use the new one
/// and established sessions keep theirs.
#[derive(Clone)]
pub(crate) struct TlsCell(Arc<std::sync::RwLock<TlsAcceptor>>);

impl std::fmt::Debug for TlsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsCell")
    }
}

impl TlsCell {
    pub(crate) fn new(acceptor: TlsAcceptor) -> Self {
        TlsCell(Arc::new(std::sync::RwLock::new(acceptor)))
    }

    fn get(&self) -> TlsAcceptor {
        match self.0.read() {
            Ok(acceptor) => acceptor.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads `cert` and `key` and serves them from the next handshake on.
    pub(crate) fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let acceptor = load(cert, key)?;
        if let Ok(mut current) = self.0.write() {
            *current = acceptor;
        }
        Ok(())
    }
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, cell: TlsCell, stop: CancellationToken) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((tcp, peer)) = accepted else {
                    // Out of descriptors or similar: back off briefly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // As on the plain listener: Nagle would hold small frames back.
                let _ = tcp.set_nodelay(true);
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // dropped: too many handshakes in progress
                };
                let acceptor = cell.get();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(tls)) = handshake.await {
                        drop(slot);
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ends only at shutdown; then nothing more arrives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for crate::transport::ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        crate::transport::ClientAddr(*stream.remote_addr())
    }
}

/// The plain client listener: TCP with `TCP_NODELAY`, since frames are small and latency
/// matters more than segment count.
#[derive(Debug)]
pub(crate) struct PlainListener(pub(crate) TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
                }
                // Out of file descriptors and the like: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for crate::transport::ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        crate::transport::ClientAddr(*stream.remote_addr())
    }
}
