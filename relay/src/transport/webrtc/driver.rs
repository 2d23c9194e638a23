//! The task that owns the WebRTC UDP socket and the sans-IO gateway: datagrams, LAN frames,
//! offers and timers in; datagrams, frames and events out.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::stream::{SelectAll, Stream, StreamExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_gw::{Event, Gateway, OfferError, PeerId, SendOutcome};

use super::{Command, RECV_BATCH, SEND_BATCH};
use crate::admission::Session;
use crate::lan::Port;
use crate::shared::{DropReason, Transport};
use crate::transport::TransportContext;

type FrameStream = Pin<Box<dyn Stream<Item = (PeerId, Bytes)> + Send>>;

/// A connected browser: its LAN port and its session's audit record, which ends with it.
struct Peer {
    port: Port,
    _session: Session,
}

pub(super) struct Driver {
    app: Arc<TransportContext>,
    gateway: Gateway,
    socket: UdpSocket,
    ports: HashMap<PeerId, Peer>,
    /// Every peer's LAN queue, tagged with the peer; a queue ends when its port leaves.
    outgoing: SelectAll<FrameStream>,
    commands: mpsc::Receiver<Command>,
    peers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Driver {
    pub(super) fn new(
        app: Arc<TransportContext>,
        gateway: Gateway,
        socket: UdpSocket,
        commands: mpsc::Receiver<Command>,
        peers: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Driver {
            app,
            gateway,
            socket,
            ports: HashMap::new(),
            outgoing: SelectAll::new(),
            commands,
            peers,
        }
    }

    pub(super) async fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let shutdown = self.app.shutdown.clone();
        loop {
            let timeout = self.gateway.poll_timeout();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        self.gateway.handle_receive(Instant::now(), source, &buf[..len]);
                    }
                    for _ in 1..RECV_BATCH {
                        let Ok((len, source)) = self.socket.try_recv_from(&mut buf) else { break };
                        self.gateway.handle_receive(Instant::now(), source, &buf[..len]);
                    }
                }
                Some((peer, frame)) = self.outgoing.next(), if !self.outgoing.is_empty() => {
                    self.send(peer, frame);
                    for _ in 1..SEND_BATCH {
                        let Some(Some((peer, frame))) = futures_util::FutureExt::now_or_never(self.outgoing.next()) else { break };
                        self.send(peer, frame);
                    }
                }
                _ = sleep_until(timeout), if timeout.is_some() => {
                    self.gateway.handle_timeout(Instant::now());
                }
            }
            self.flush().await;
            self.peers.store(self.gateway.peer_count(), Relaxed);
        }
        let peers: Vec<PeerId> = self.ports.keys().copied().collect();
        for peer in peers {
            self.gateway.close(peer);
        }
        self.flush().await;
    }

    fn handle_command(&mut self, command: Command) {
        let Command::Offer {
            lan,
            sdp,
            admitted,
            candidate,
            reply,
        } = command;
        // The offer is checked before the LAN is joined, so a bad one costs no port.
        let (peer, answer) = match self.gateway.accept_offer(Instant::now(), &sdp, candidate) {
            Ok(accepted) => accepted,
            Err(refused) => {
                let status = match refused {
                    OfferError::TooManyPending(_) => StatusCode::SERVICE_UNAVAILABLE,
                    OfferError::BadCandidate(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                let _ = reply.send(Err((status, refused.to_string())));
                return;
            }
        };
        let (port, mut queue) = match self.app.lans.join_as(&lan, Transport::WebRtc, &admitted) {
            Ok(joined) => joined,
            Err(refused) => {
                self.gateway.close(peer);
                let _ = reply.send(Err((StatusCode::SERVICE_UNAVAILABLE, refused.to_string())));
                return;
            }
        };
        tracing::debug!(%lan, %peer, port = %port.id(), %candidate, "WebRTC peer offered");
        let stream = futures_util::stream::poll_fn(move |cx| queue.poll_recv(cx))
            .map(move |frame| (peer, frame));
        self.outgoing.push(Box::pin(stream));
        let session = Session::joined(admitted, &port);
        self.ports.insert(
            peer,
            Peer {
                port,
                _session: session,
            },
        );
        let _ = reply.send(Ok(answer));
    }

    fn send(&mut self, peer: PeerId, frame: Bytes) {
        let Some(Peer { port, .. }) = self.ports.get(&peer) else {
            return;
        };
        let counters = port.counters();
        let frame = counters.to_client(frame);
        match self.gateway.send_frame(peer, &frame) {
            SendOutcome::Sent => counters.traffic.count_out(frame.len()),
            SendOutcome::BufferFull => port.count_loss(DropReason::SendBufferFull),
            SendOutcome::NotOpen => port.count_loss(DropReason::NotOpen),
        }
    }

    /// Sends what the gateway produced and acts on its events.
    async fn flush(&mut self) {
        while let Some(t) = self.gateway.poll_transmit() {
            if let Err(error) = self.socket.send_to(&t.contents, t.destination).await {
                tracing::trace!(destination = %t.destination, "WebRTC send failed: {error}");
            }
        }
        while let Some(event) = self.gateway.poll_event() {
            match event {
                Event::Frame(peer, frame) => {
                    if let Some(Peer { port, .. }) = self.ports.get(&peer) {
                        port.ingress(Instant::now(), Bytes::from(frame));
                    }
                }
                Event::Open(peer) => tracing::debug!(%peer, "WebRTC DataChannel open"),
                Event::Unsent(peer, frames) => {
                    if let Some(Peer { port, .. }) = self.ports.get(&peer) {
                        for _ in 0..frames {
                            port.count_loss(DropReason::NotOpen);
                        }
                    }
                }
                Event::Closed(peer, reason) => {
                    // Dropping the port leaves the LAN; its queue then ends its stream.
                    if let Some(Peer { port, .. }) = self.ports.remove(&peer) {
                        tracing::debug!(%peer, port = %port.id(), ?reason, "WebRTC peer left");
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
