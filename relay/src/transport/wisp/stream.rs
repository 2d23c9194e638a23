//! One Wisp stream's host socket: a task that resolves, checks and connects, then writes the
//! client's DATA and reads the host's replies. It reports everything to its session task,
//! which owns the `wisp::Session`; it reads the host only when the session grants a read
//! (`can_read_host`), so a client that does not read its WebSocket stops the host side
//! instead of growing a queue.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway::EgressPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wisp::{CloseReason, StreamId, StreamType};

use super::LanDoor;
use super::egress::{Resolver, allowed};
use super::stats::WispStats;
use crate::shared::LanName;

/// Most bytes one TCP read hands to the session (one DATA packet).
pub(crate) const TCP_READ_SIZE: usize = 16 * 1024;
/// One UDP datagram, the largest IPv4 allows.
pub(crate) const UDP_READ_SIZE: usize = 65_535;

/// What a stream task tells its session.
#[derive(Debug)]
pub(crate) enum HostEvent {
    /// The socket is connected (TCP) or bound and connected (UDP).
    Opened,
    /// It never opened: the CLOSE reason for the client.
    Failed(CloseReason),
    /// The socket has bytes (or EOF) to read: the stream asks for a read grant. Only
    /// readable streams wait for one, so idle streams hold no share of the session's budget
    /// (one that did would starve every other stream once 32 sat idle).
    Readable,
    /// One granted read's bytes.
    Data(Bytes),
    /// One DATA packet of `bytes` was written to the host.
    Written { bytes: usize },
    /// EOF or an error after the last [`HostEvent::Data`].
    Closed(CloseReason),
}

/// A [`HostEvent`] of stream `id`; `serial` tells it apart from an earlier stream that used
/// the same id, whose late reports the session ignores.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) id: StreamId,
    pub(crate) serial: u64,
    pub(crate) event: HostEvent,
}

/// What a stream task needs.
pub(crate) struct StreamJob {
    pub(crate) id: StreamId,
    pub(crate) serial: u64,
    pub(crate) stream_type: StreamType,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) policy: Arc<EgressPolicy>,
    pub(crate) resolver: Resolver,
    /// `/wisp/lan/NAME/`: the LAN the stream goes into instead of the internet.
    pub(crate) lan: Option<(LanName, Arc<dyn LanDoor>)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) stats: Arc<WispStats>,
    pub(crate) reports: mpsc::Sender<Report>,
    /// The client's DATA, in order; the session bounds it with the stream's credit.
    pub(crate) data: mpsc::UnboundedReceiver<Bytes>,
    /// One permit is one read of the host socket.
    pub(crate) grant: Arc<Notify>,
    /// Cancelled when the session forgets the stream: the socket closes with the task.
    pub(crate) stop: CancellationToken,
}

enum Socket {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl StreamJob {
    pub(crate) async fn run(self) {
        let stop = self.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            () = self.serve() => {}
        }
    }

    /// False when the session is gone.
    async fn report(&self, event: HostEvent) -> bool {
        let report = Report {
            id: self.id,
            serial: self.serial,
            event,
        };
        self.reports.send(report).await.is_ok()
    }

    async fn serve(mut self) {
        let opened = tokio::time::timeout(self.connect_timeout, self.open()).await;
        let socket = match opened {
            Ok(Ok(socket)) => socket,
            Ok(Err(reason)) => {
                self.report(HostEvent::Failed(reason)).await;
                return;
            }
            Err(_) => {
                self.report(HostEvent::Failed(CloseReason::Timeout)).await;
                return;
            }
        };
        if !self.report(HostEvent::Opened).await {
            return;
        }
        let mut data = std::mem::replace(&mut self.data, mpsc::unbounded_channel().1);
        match socket {
            Socket::Tcp(tcp) => self.pump_tcp(tcp, &mut data).await,
            Socket::Udp(udp) => self.pump_udp(udp, &mut data).await,
        }
    }

    /// Resolves the host, keeps the addresses the policy allows and connects to the first
    /// that answers.
    async fn open(&self) -> Result<Socket, CloseReason> {
        if let Some((lan, door)) = &self.lan {
            let tcp = super::lan::open(lan, door, self.stream_type, &self.host, self.port);
            return tcp.await.map(Socket::Tcp);
        }
        let addrs = self.resolver.resolve(&self.host, self.port).await?;
        let targets = allowed(&self.policy, self.stream_type, &addrs, self.port).map_err(|r| {
            self.stats.denied[r.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(id = %self.id, "wisp: {}:{} denied ({})", self.host, self.port, r.as_str());
            CloseReason::Blocked
        })?;
        let mut last = CloseReason::Unreachable;
        for target in targets {
            let result = match self.stream_type {
                StreamType::Udp => udp_connect(target).await.map(Socket::Udp),
                _ => TcpStream::connect(target).await.map(Socket::Tcp),
            };
            match result {
                Ok(socket) => return Ok(socket),
                Err(error) => last = connect_failure(&error),
            }
        }
        Err(last)
    }

    async fn pump_tcp(&self, tcp: TcpStream, data: &mut mpsc::UnboundedReceiver<Bytes>) {
        // Wisp DATA packets are the client's writes; batching them here would only add delay.
        let _ = tcp.set_nodelay(true);
        let (mut rd, mut wr) = tcp.into_split();
        let writer = async {
            while let Some(bytes) = data.recv().await {
                if let Err(error) = wr.write_all(&bytes).await {
                    tracing::debug!(id = %self.id, "wisp: host write failed: {error}");
                    return self
                        .report(HostEvent::Closed(CloseReason::NetworkError))
                        .await;
                }
                if !self.report(HostEvent::Written { bytes: bytes.len() }).await {
                    return false;
                }
            }
            false
        };
        let reader = async {
            loop {
                if rd.readable().await.is_err() || !self.report(HostEvent::Readable).await {
                    self.report(HostEvent::Closed(CloseReason::NetworkError))
                        .await;
                    return;
                }
                self.grant.notified().await;
                let mut buf = BytesMut::with_capacity(TCP_READ_SIZE);
                let event = match rd.read_buf(&mut buf).await {
                    Ok(0) => HostEvent::Closed(CloseReason::Voluntary),
                    Ok(_) => HostEvent::Data(buf.freeze()),
                    Err(_) => HostEvent::Closed(CloseReason::NetworkError),
                };
                let last = matches!(event, HostEvent::Closed(_));
                if !self.report(event).await || last {
                    return;
                }
            }
        };
        // Either side ending ends the stream: Wisp has no half-close.
        tokio::select! {
            _ = writer => {}
            () = reader => {}
        }
    }

    async fn pump_udp(&self, udp: UdpSocket, data: &mut mpsc::UnboundedReceiver<Bytes>) {
        let writer = async {
            while let Some(bytes) = data.recv().await {
                // A lost datagram is UDP; an ICMP error from an earlier one is not this
                // datagram's failure.
                let _ = udp.send(&bytes).await;
                if !self.report(HostEvent::Written { bytes: bytes.len() }).await {
                    return;
                }
            }
        };
        let reader = async {
            loop {
                if udp.readable().await.is_err() || !self.report(HostEvent::Readable).await {
                    self.report(HostEvent::Closed(CloseReason::NetworkError))
                        .await;
                    return;
                }
                self.grant.notified().await;
                let mut buf = vec![0u8; UDP_READ_SIZE];
                let n = loop {
                    match udp.recv(&mut buf).await {
                        Ok(n) => break n,
                        // "Port unreachable" from an earlier datagram: keep listening.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(_) => {
                            let closed = HostEvent::Closed(CloseReason::NetworkError);
                            self.report(closed).await;
                            return;
                        }
                    }
                };
                let datagram = Bytes::copy_from_slice(&buf[..n]);
                if !self.report(HostEvent::Data(datagram)).await {
                    return;
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
    }
}

async fn udp_connect(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// The CLOSE reason for a failed connect (Wisp v2: 0x44 refused, 0x42 unreachable, 0x43
/// timed out).
pub(crate) fn connect_failure(error: &std::io::Error) -> CloseReason {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => CloseReason::Refused,
        ErrorKind::TimedOut => CloseReason::Timeout,
        ErrorKind::PermissionDenied => CloseReason::Blocked,
        _ => CloseReason::Unreachable,
    }
}
