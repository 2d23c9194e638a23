//! v86's WebSocket protocol: one binary message is one Ethernet frame, both ways, with no
//! header and no handshake. v86 sends nothing on open and reconnects as a brand-new socket
//! after a drop, so every connection is simply a new port.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::TransportContext;
use crate::admission::{Admitted, Session};
use crate::lan::{Port, PortCounters, PortReceiver};
use crate::shared::{DropReason, LanName, Transport};

mod batch;
mod handshake;

pub(crate) use handshake::{Handshake, HandshakeRefused, Socket};

/// Most queued frames written before one flush: amortises syscalls over bursts.
const WRITE_BATCH: usize = 64;

/// Which LAN a WebSocket joins.
#[derive(Debug)]
pub(crate) enum Target {
    Lan(LanName),
    /// `server.default_lan = "private"`: a LAN of this client's own, found from its first
    /// frame (see [`TransportContext::private_lan`]).
    Private,
}

/// Answers a WebSocket handshake: the client becomes a port of its LAN.
pub(crate) fn upgrade(
    app: Arc<TransportContext>,
    target: Target,
    handshake: Handshake,
    admitted: Admitted,
) -> Response {
    let config = app.config();
    let max_frame = config.limits.max_frame_size;
    let tracker = app.tasks.clone();
    let socket_config = WebSocketConfig::default()
        .read_buffer_size(config.websocket.read_buffer_bytes)
        .write_buffer_size(config.websocket.write_buffer_bytes)
        // Room above the frame limit, so an oversized frame is dropped and counted while
        // the connection stays open; beyond this the message is refused outright.
        .max_message_size(Some(max_frame + 64 * 1024))
        .max_frame_size(Some(max_frame + 64 * 1024));
    handshake.accept(socket_config, move |socket| {
        tracker.track_future(serve(app, target, socket, admitted))
    })
}

async fn serve(app: Arc<TransportContext>, target: Target, mut socket: Socket, admitted: Admitted) {
    let private = matches!(target, Target::Private);
    let (lan, first) = match target {
        Target::Lan(lan) => (lan, None),
        Target::Private => {
            let Some(frame) = first_frame(&mut socket, &app, admitted.client_ip).await else {
                flush_last(&mut socket).await;
                return;
            };
            (app.private_lan(admitted.client_ip, &frame), Some(frame))
        }
    };
    let (port, queue) = match app.lans.join_as(&lan, Transport::WebSocket, &admitted) {
        Ok(joined) => joined,
        Err(refused) => {
            tracing::warn!(%lan, "connection refused: {refused}");
            let close = CloseFrame {
                code: CloseCode::Again,
                reason: refused.to_string().into(),
            };
            let _ = socket.send(Message::Close(Some(close))).await;
            return;
        }
    };
    if private {
        port.lan().set_origin(admitted.client_ip);
    }
    let session = Session::joined(admitted, &port);
    if let Some(frame) = first {
        port.ingress(Instant::now(), frame);
    }
    let (sink, mut stream) = socket.split();
    let stop = app.shutdown.child_token();
    let base = Instant::now();
    // Milliseconds after `base` the client was last heard from; read by the idle check.
    let last_heard = AtomicU64::new(0);
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        app.clone(),
        stop.clone(),
        port.counters_handle(),
    ));
    read_loop(&mut stream, &port, &app, &stop, base, &last_heard).await;
    stop.cancel();
    // The client is gone: its port leaves the LAN now, not after the writer's goodbye, so a
    // client reconnecting at once finds its MAC free (no duplicate-MAC translation).
    drop(session);
    drop(port);
    if let Ok(sink) = writer.await
        && let Ok(mut socket) = stream.reunite(sink)
    {
        flush_last(&mut socket).await;
    }
}

/// tungstenite writes its last frame (the reply to a client's Close) into the batching
/// layer and then reports the connection closed without flushing: put it on the wire, or
/// the client sees the connection end without a closing handshake.
async fn flush_last(socket: &mut Socket) {
    let last = async {
        // tungstenite's part (a reply it has only queued), then the batch's.
        let _ = SinkExt::flush(socket).await;
        let _ = socket.get_mut().flush().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), last).await;
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<Socket>,
    port: &Port,
    app: &TransportContext,
    stop: &CancellationToken,
    base: Instant,
    last_heard: &AtomicU64,
) {
    let idle_timeout = app.config().idle_timeout();
    loop {
        let heard = base + Duration::from_millis(last_heard.load(Relaxed));
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until((heard + idle_timeout).into()) => {
                tracing::info!(port = %port.id(), "client silent for {idle_timeout:?}: dropped");
                return;
            }
            message = stream.next() => message,
        };
        let now = Instant::now();
        match message {
            Some(Ok(Message::Binary(frame))) => port.ingress(now, frame),
            Some(Ok(Message::Text(_))) => port.count_drop(DropReason::TextMessage),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(error)) => {
                tracing::debug!(port = %port.id(), "websocket error: {error}");
                return;
            }
        }
        last_heard.store(now.duration_since(base).as_millis() as u64, Relaxed);
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut queue: PortReceiver,
    app: Arc<TransportContext>,
    stop: CancellationToken,
    counters: Arc<PortCounters>,
) -> futures_util::stream::SplitSink<Socket, Message> {
    let interval = app.config().ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                let write = async {
                    sink.feed(Message::Binary(counters.outgoing(frame))).await?;
                    for _ in 1..WRITE_BATCH {
                        let Ok(frame) = queue.try_recv() else { break };
                        sink.feed(Message::Binary(counters.outgoing(frame))).await?;
                    }
                    sink.flush().await
                };
                // A client that stops reading blocks this write; it must not block shutdown.
                let result = tokio::select! {
                    result = write => result,
                    _ = stop.cancelled() => break,
                };
                if result.is_err() {
                    stop.cancel();
                    return sink;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    stop.cancel();
                    return sink;
                }
            }
        }
    }
    if app.shutdown.is_cancelled() {
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: "relay shutting down".into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(close))),
        )
        .await;
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    sink
}

/// The client's first frame with a whole Ethernet header; `None` when the client leaves or
/// stays silent. v86 opens its socket on the guest's first frame, so it comes at once, but
/// a reconnecting guest that only receives stays silent: while it waits, the machines of
/// this client's vacated private LANs are asked to speak (`lan/returning.rs`) at [`ASK_AT`]
/// (again after the first time: the old connection may take a moment to be seen gone).
async fn first_frame(
    socket: &mut Socket,
    app: &TransportContext,
    client: std::net::IpAddr,
) -> Option<bytes::Bytes> {
    let start = tokio::time::Instant::now();
    let deadline = start + app.config().idle_timeout();
    let mut asks = ASK_AT
        .into_iter()
        .map(|after| start + after)
        .filter(|at| *at < deadline);
    let mut next_ask = asks.next();
    loop {
        tokio::select! {
            message = socket.next() => match message? {
                Ok(Message::Binary(frame)) if frame.len() >= crate::shared::ETHERNET_HEADER_LEN => {
                    return Some(frame);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(next_ask.unwrap_or(deadline)) => {
                next_ask.take()?;
                next_ask = asks.next();
                for probe in app.lans.returning_probes(client).await {
                    socket.send(Message::Binary(probe)).await.ok()?;
                }
            }
        }
    }
}

/// When a silent socket's machines are asked to speak, after it opened.
const ASK_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
