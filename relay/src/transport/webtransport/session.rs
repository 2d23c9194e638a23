//! One WebTransport session: a port of the LAN its path names, datagrams in and out.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use webtransport::{
    DropReason as FragmentDrop, Fragmenter, Reassembler, ReassemblyLimits, Received,
};
use wtransport::endpoint::IncomingSession;
use wtransport::{Connection, VarInt};

use super::{CLOSE_SHUTDOWN, WebTransportStats};
use crate::admission::{Admitted, JoinRequest, Session};
use crate::lan::{Port, PortReceiver};
use crate::shared::{DropReason, Transport, lan_from_path};
use crate::transport::{TransportContext, query_param};

pub(super) async fn run(
    app: Arc<TransportContext>,
    stats: Arc<WebTransportStats>,
    incoming: IncomingSession,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Some((port, queue, connection, admitted)) = admit(&app, incoming).await else {
        return;
    };
    drop(handshake_permit);
    let _session = Session::joined(admitted, &port);
    pump(&app, &stats, &port, queue, &connection).await;
}

/// The handshake, the Origin check, admission and the join; `None` (the browser told why)
/// when any of them fails. wtransport can answer only 403, 404 or 429, so a token refusal
/// is a 403 here; its reason is counted and logged like every transport's.
async fn admit(
    app: &TransportContext,
    incoming: IncomingSession,
) -> Option<(Port, PortReceiver, Connection, Admitted)> {
    let handshake = Duration::from_secs(10);
    let request = match tokio::time::timeout(handshake, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            tracing::debug!("webtransport handshake failed: {error}");
            return None;
        }
        Err(_) => return None,
    };
    if let Err(refused) = app
        .config()
        .check_origin(request.origin().map(str::as_bytes))
    {
        tracing::debug!("webtransport session refused: {refused}");
        request.forbidden().await;
        return None;
    }
    let lan = match lan_from_path(request.path()) {
        Some(Ok(lan)) => lan,
        Some(Err(invalid)) => {
            tracing::debug!("webtransport session refused: {invalid}");
            request.not_found().await;
            return None;
        }
        None => {
            request.not_found().await;
            return None;
        }
    };
    let token = query_param(request.path().split_once('?').map(|(_, q)| q), "token")
        .map(std::borrow::Cow::into_owned);
    let headers = request.headers();
    let join = JoinRequest {
        peer: request.remote_address().ip(),
        x_forwarded_for: headers.get("x-forwarded-for").map(String::as_str),
        forwarded: headers.get("forwarded").map(String::as_str),
        lan: &lan,
        token: token.as_deref(),
        transport: Transport::WebTransport,
    };
    let admitted = match app.admit(&join) {
        Ok(admitted) => admitted,
        Err(refused) => {
            tracing::debug!(%lan, "webtransport session refused: {}", refused.message);
            match refused.status {
                429 => request.too_many_requests().await,
                _ => request.forbidden().await,
            }
            return None;
        }
    };
    let (port, queue) = match app.lans.join_as(&lan, Transport::WebTransport, &admitted) {
        Ok(joined) => joined,
        Err(refused) => {
            tracing::warn!(%lan, "webtransport session refused: {refused}");
            request.too_many_requests().await;
            return None;
        }
    };
    match tokio::time::timeout(handshake, request.accept()).await {
        Ok(Ok(connection)) => Some((port, queue, connection, admitted)),
        _ => None,
    }
}

/// Moves frames both ways until the session or the relay ends.
async fn pump(
    app: &TransportContext,
    stats: &Arc<WebTransportStats>,
    port: &Port,
    mut queue: PortReceiver,
    connection: &Connection,
) {
    let limits = ReassemblyLimits {
        max_frame_size: app.lans.max_frame_size(),
        max_pending_bytes: app.config().webtransport.max_reassembly_bytes,
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
                let frame = counters.outgoing(frame);
                match send_frame(connection, &mut fragmenter, &frame, &mut datagrams, stats) {
                    Ok(()) => {}
                    Err(Some(reason)) => port.count_loss(reason),
                    Err(None) => break,
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a datagram costs in quinn's send buffer beyond its payload: wtransport's session
/// id prefix (a QUIC varint, at most 8 bytes).
const DATAGRAM_PREFIX: usize = 8;

/// Sends one frame as one or more datagrams. `Err(Some(reason))`: the frame was lost (and
/// must be counted); `Err(None)`: the session is gone.
fn send_frame(
    connection: &Connection,
    fragmenter: &mut Fragmenter,
    frame: &[u8],
    datagrams: &mut Vec<Bytes>,
    stats: &WebTransportStats,
) -> Result<(), Option<DropReason>> {
    let Some(max) = connection.max_datagram_size() else {
        stats.send_failures.fetch_add(1, Relaxed);
        return Err(Some(DropReason::Unsendable));
    };
    datagrams.clear();
    let n = match fragmenter.encode(frame, max, datagrams) {
        Ok(n) => n,
        Err(_) => {
            stats.send_failures.fetch_add(1, Relaxed);
            return Err(Some(DropReason::Unsendable));
        }
    };
    // quinn makes room for a datagram by silently discarding the oldest unsent ones: that
    // would lose fragments of frames already counted as sent, and nothing would say so.
    // A frame that does not fit whole is dropped here instead, and counted.
    let needed: usize = datagrams.iter().map(|d| d.len() + DATAGRAM_PREFIX).sum();
    if connection.quic_connection().datagram_send_buffer_space() < needed {
        return Err(Some(DropReason::SendBufferFull));
    }
    if n > 1 {
        stats.fragments_sent.fetch_add(n as u64, Relaxed);
    }
    for d in datagrams.drain(..) {
        match connection.send_datagram(d) {
            Ok(()) => {}
            Err(wtransport::error::SendDatagramError::NotConnected) => return Err(None),
            Err(_) => {
                stats.send_failures.fetch_add(1, Relaxed);
                return Err(Some(DropReason::Unsendable));
            }
        }
    }
    Ok(())
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
