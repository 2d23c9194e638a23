//! The session task: owns one `wisp::Session` and carries out what it asks (the crate docs'
//! "What the driver does"). Memory stays bounded on both sides:
//!
//! - towards the client, the session's transmit queue: host sockets are read only while
//!   `can_read_host` holds, one granted read at a time per stream, with the bytes of all
//!   granted reads capped below the session's margin, and in FIFO order so busy streams
//!   cannot starve the rest; the WebSocket writer takes a few messages at a time;
//! - towards the hosts, the client's DATA queued for sockets: the session caps each TCP
//!   stream by its credit, and this task stops reading the WebSocket while the total is over
//!   [`HOST_QUEUE_LIMIT`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::EgressPolicy;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wisp::{
    CloseReason, Event, PasswordAuth, Session, SessionConfig, StreamId, StreamType, Version,
};

use super::stats::{CloseLabel, StreamKind};
use super::stream::{HostEvent, Report, StreamJob, TCP_READ_SIZE, UDP_READ_SIZE};
use super::{IpSlot, Requester, TransportContext, WispShared};
use crate::admission::Admitted;
use crate::shared::LanName;

/// Largest WebSocket message a client may send: a DATA packet of 64 KiB (a full UDP
/// datagram) and its header. v86 sends one TCP segment per packet.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 + 64;
/// Bytes of client DATA waiting for host sockets, over the session, above which the
/// WebSocket is not read.
const HOST_QUEUE_LIMIT: usize = 4 << 20;
/// Messages handed to the WebSocket writer ahead of the socket.
const WRITER_QUEUE: usize = 16;
/// Reports from stream tasks waiting for the session task.
const REPORT_QUEUE: usize = 256;
/// Close code "going away" (RFC 6455): the relay is shutting down.
const CLOSE_GOING_AWAY: u16 = 1001;

/// What the upgrade decided.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) version: Version,
    pub(crate) password_auth: PasswordAuth,
    /// `None` until a v2 client's password is checked.
    pub(crate) admitted: Option<Admitted>,
    pub(crate) requester: Requester,
    /// The LAN admission judged: `wisp`, or the LAN of `/wisp/lan/NAME/`.
    pub(crate) lan: LanName,
    /// Streams go into `lan` (`/wisp/lan/NAME/`), not to the internet.
    pub(crate) lan_streams: bool,
}

/// The session's side of one stream task.
#[derive(Debug)]
struct StreamHandle {
    serial: u64,
    kind: StreamKind,
    data: mpsc::UnboundedSender<Bytes>,
    grant: Arc<Notify>,
    stop: CancellationToken,
    /// The socket is open: reads may be granted.
    open: bool,
    /// A read is granted and its bytes not yet reported.
    granted: bool,
    /// Bytes sent to the task and not yet reported written.
    queued: usize,
    _slot: IpSlot,
}

impl StreamHandle {
    fn read_size(&self) -> usize {
        match self.kind {
            StreamKind::Udp => UDP_READ_SIZE,
            StreamKind::Tcp => TCP_READ_SIZE,
        }
    }
}

struct Driver {
    session: Session,
    ctx: Arc<TransportContext>,
    shared: Arc<WispShared>,
    setup: Setup,
    policy: Arc<EgressPolicy>,
    streams: HashMap<StreamId, StreamHandle>,
    /// Streams waiting for a read grant, oldest first (stale entries are skipped).
    waiting: VecDeque<(StreamId, u64)>,
    next_serial: u64,
    reports: mpsc::Sender<Report>,
    /// Bytes of all granted reads: capped at half the transmit budget, the margin the
    /// session keeps below its hard limit, so a granted read is never refused.
    granted_bytes: usize,
    transmit_budget: usize,
    host_queued: usize,
    stop: CancellationToken,
    finished: bool,
    closes_seen: [BTreeMap<CloseReason, u64>; 2],
    streams_opened: u64,
}

/// Runs one Wisp session until either side ends it.
pub(crate) async fn serve(
    ctx: Arc<TransportContext>,
    shared: Arc<WispShared>,
    socket: WebSocket,
    setup: Setup,
) {
    let config = ctx.config();
    let session_config = SessionConfig {
        version: setup.version,
        buffer_packets: config.wisp.buffer_packets,
        max_streams: config.wisp.max_streams_per_session,
        udp_enabled: config.wisp.udp,
        password_auth: setup.password_auth,
        ..SessionConfig::default()
    };
    // The policy as configured now: a reload applies to sessions opened after it.
    let policy = shared.egress_policy(&config);
    let (reports, mut report_rx) = mpsc::channel(REPORT_QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    let stop = ctx.shutdown.child_token();
    let (sink, mut ws) = socket.split();
    let writer = tokio::spawn(write_loop(sink, out_rx, ctx.clone(), stop.clone()));
    shared.stats.sessions_open.fetch_add(1, Relaxed);
    shared.stats.sessions_opened.fetch_add(1, Relaxed);
    let mut driver = Driver {
        transmit_budget: session_config.transmit_budget,
        session: Session::new(session_config, Instant::now()),
        ctx,
        shared,
        setup,
        policy: Arc::new(policy),
        streams: HashMap::new(),
        waiting: VecDeque::new(),
        next_serial: 0,
        reports,
        granted_bytes: 0,
        host_queued: 0,
        stop: stop.clone(),
        finished: false,
        closes_seen: Default::default(),
        streams_opened: 0,
    };
    if driver.setup.admitted.is_some() {
        driver.audit("join");
    }
    driver.run(&mut ws, &mut report_rx, &out_tx).await;
    driver.drop_all_streams();
    if driver.setup.admitted.is_some() {
        driver.audit("leave");
    }
    driver.shared.stats.sessions_open.fetch_sub(1, Relaxed);
    // The writer sends what is queued, then closes the WebSocket.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    stop.cancel();
}

impl Driver {
    async fn run(
        &mut self,
        ws: &mut futures_util::stream::SplitStream<WebSocket>,
        reports: &mut mpsc::Receiver<Report>,
        out: &mpsc::Sender<Vec<u8>>,
    ) {
        let idle_timeout = self.ctx.config().idle_timeout();
        let mut last_heard = Instant::now();
        self.flush(out);
        loop {
            let backlog = self.session.transmit_backlog();
            let read_ws = !self.finished
                && backlog < self.transmit_budget
                && self.host_queued < HOST_QUEUE_LIMIT;
            let handshake_deadline = self.session.poll_timeout();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                message = ws.next(), if read_ws => {
                    last_heard = Instant::now();
                    if !self.on_message(message) {
                        return;
                    }
                }
                Some(report) = reports.recv() => self.on_report(report),
                permit = out.reserve(), if backlog > 0 => {
                    let Ok(permit) = permit else { return };
                    if let Some(message) = self.session.poll_transmit() {
                        permit.send(message);
                    }
                }
                _ = sleep_until(handshake_deadline), if handshake_deadline.is_some() => {
                    self.session.handle_timeout(Instant::now());
                }
                _ = tokio::time::sleep_until((last_heard + idle_timeout).into()) => {
                    tracing::info!(client_ip = %self.setup.requester.peer, "wisp client silent for {idle_timeout:?}: dropped");
                    return;
                }
            }
            self.drain_events();
            self.flush(out);
            self.grant_waiting();
            self.sync_closes();
            if self.finished && self.session.transmit_backlog() == 0 {
                return;
            }
        }
    }

    /// One WebSocket message; false when the client went away.
    fn on_message(&mut self, message: Option<Result<Message, axum::Error>>) -> bool {
        match message {
            Some(Ok(Message::Binary(data))) => {
                self.session.handle_message(Instant::now(), &data);
                true
            }
            // Text is not Wisp; pings and pongs only prove the client is there.
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => true,
            Some(Ok(Message::Close(_))) | None => false,
            Some(Err(error)) => {
                tracing::debug!("wisp websocket error: {error}");
                false
            }
        }
    }

    /// Hands the writer what it has room for without waiting.
    fn flush(&mut self, out: &mpsc::Sender<Vec<u8>>) {
        while self.session.transmit_backlog() > 0 {
            let Ok(permit) = out.try_reserve() else {
                return;
            };
            match self.session.poll_transmit() {
                Some(message) => permit.send(message),
                None => return,
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Connect {
                    id,
                    stream_type,
                    host,
                    port,
                } => self.connect(id, stream_type, host, port),
                Event::Data { id, data } => self.queue_for_host(id, data),
                Event::Close { id, .. } => self.remove(id),
                Event::Authenticate { password, .. } => self.authenticate(&password),
                Event::ProtocolError(error) => {
                    tracing::debug!(client_ip = %self.setup.requester.peer, "wisp: {error}");
                }
                Event::Finished { reason } => {
                    tracing::debug!("wisp session finished: {reason:?}");
                    self.finished = true;
                    self.drop_all_streams();
                }
            }
        }
    }

    fn connect(&mut self, id: StreamId, stream_type: StreamType, host: String, port: u16) {
        // The session forgot any earlier stream with this id before it asked again.
        self.remove(id);
        let config = self.ctx.config();
        let limit = config.wisp.max_streams_per_ip;
        let Some(slot) = self.shared.streams_by_ip.try_take(self.client_ip(), limit) else {
            self.session
                .handle_stream_failed(id, CloseReason::Throttled);
            return;
        };
        self.next_serial += 1;
        self.streams_opened += 1;
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let grant = Arc::new(Notify::new());
        let stop = self.stop.child_token();
        let kind = StreamKind::of(stream_type);
        let job = StreamJob {
            id,
            serial: self.next_serial,
            stream_type,
            host,
            port,
            policy: self.policy.clone(),
            resolver: self.shared.resolver.clone(),
            lan: self
                .setup
                .lan_streams
                .then(|| (self.setup.lan.clone(), self.shared.lan_door.clone())),
            connect_timeout: Duration::from_secs(config.wisp.connect_timeout_secs),
            stats: self.shared.stats.clone(),
            reports: self.reports.clone(),
            data: data_rx,
            grant: grant.clone(),
            stop: stop.clone(),
        };
        self.ctx.tasks.spawn(job.run());
        self.shared.stats.stream_opened(kind);
        let handle = StreamHandle {
            serial: self.next_serial,
            kind,
            data: data_tx,
            grant,
            stop,
            open: false,
            granted: false,
            queued: 0,
            _slot: slot,
        };
        self.streams.insert(id, handle);
    }

    fn queue_for_host(&mut self, id: StreamId, data: Bytes) {
        let Some(handle) = self.streams.get_mut(&id) else {
            return;
        };
        let len = data.len();
        self.shared
            .stats
            .bytes_to_host
            .fetch_add(len as u64, Relaxed);
        if handle.data.send(data).is_ok() {
            handle.queued += len;
            self.host_queued += len;
        }
    }

    fn on_report(&mut self, Report { id, serial, event }: Report) {
        let Some(handle) = self.streams.get_mut(&id) else {
            return;
        };
        if handle.serial != serial {
            // A late report of an earlier stream that used this id.
            return;
        }
        match event {
            HostEvent::Opened => {
                handle.open = true;
                self.session.handle_stream_opened(id);
            }
            HostEvent::Readable => self.waiting.push_back((id, serial)),
            HostEvent::Failed(reason) => {
                self.session.handle_stream_failed(id, reason);
                self.remove(id);
            }
            HostEvent::Data(bytes) => {
                handle.granted = false;
                self.granted_bytes -= handle.read_size();
                match self.session.handle_host_data(id, &bytes) {
                    Ok(()) => {
                        let len = bytes.len() as u64;
                        self.shared.stats.bytes_to_client.fetch_add(len, Relaxed);
                    }
                    Err(error) => tracing::debug!("wisp: host data dropped: {error}"),
                }
                // The stream asks again when it is readable again, at the back of the line,
                // so every stream gets its turn.
            }
            HostEvent::Written { bytes } => {
                handle.queued -= bytes;
                self.host_queued -= bytes;
                self.session.handle_data_sent(id, 1);
            }
            HostEvent::Closed(reason) => {
                self.session.handle_host_closed(id, reason);
                self.remove(id);
            }
        }
    }

    /// Grants reads to waiting streams, oldest first, while the session has room.
    fn grant_waiting(&mut self) {
        let cap = self.transmit_budget / 2;
        for _ in 0..self.waiting.len() {
            let Some((id, serial)) = self.waiting.pop_front() else {
                return;
            };
            let Some(handle) = self.streams.get_mut(&id) else {
                continue;
            };
            if handle.serial != serial || handle.granted || !handle.open {
                continue;
            }
            let size = handle.read_size();
            if self.granted_bytes + size > cap || !self.session.can_read_host(id) {
                // Over a budget now; a later transmit makes room.
                self.waiting.push_back((id, serial));
                continue;
            }
            handle.granted = true;
            self.granted_bytes += size;
            handle.grant.notify_one();
        }
    }

    /// Forgets stream `id` on this side: its task ends and its socket closes.
    fn remove(&mut self, id: StreamId) {
        let Some(handle) = self.streams.remove(&id) else {
            return;
        };
        handle.stop.cancel();
        if handle.granted {
            self.granted_bytes -= handle.read_size();
        }
        self.host_queued -= handle.queued;
        self.shared.stats.stream_gone(handle.kind);
    }

    fn drop_all_streams(&mut self) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
        self.waiting.clear();
    }

    /// v2 password extension: the password is a join token.
    fn authenticate(&mut self, password: &str) {
        let request = self
            .setup
            .requester
            .join_request(&self.setup.lan, Some(password));
        match self.ctx.admit(&request) {
            Ok(admitted) => {
                self.setup.admitted = Some(admitted);
                self.audit("join");
                self.session.handle_auth_result(true);
            }
            Err(refused) => {
                tracing::debug!("wisp: password refused: {}", refused.message);
                self.session.handle_auth_result(false);
            }
        }
    }

    fn client_ip(&self) -> std::net::IpAddr {
        match &self.setup.admitted {
            Some(admitted) => admitted.client_ip,
            None => self.setup.requester.peer,
        }
    }

    /// Counts the CLOSEs the session sent and received since the last call.
    fn sync_closes(&mut self) {
        let stats = self.session.stats();
        let totals = [
            (&stats.closes_sent, &self.shared.stats.closes_sent),
            (&stats.closes_received, &self.shared.stats.closes_received),
        ];
        for ((now, counters), seen) in totals.into_iter().zip(self.closes_seen.iter_mut()) {
            if now == seen {
                continue;
            }
            for (reason, &count) in now {
                let before = seen.get(reason).copied().unwrap_or(0);
                counters[CloseLabel::of(*reason).index()].fetch_add(count - before, Relaxed);
            }
            seen.clone_from(now);
        }
    }

    /// The audit record of a join or a leave (target `audit`, as every transport's).
    fn audit(&self, event: &'static str) {
        let Some(admitted) = &self.setup.admitted else {
            return;
        };
        let stats = self.session.stats();
        tracing::info!(
            target: "audit",
            event,
            client_ip = %admitted.client_ip,
            transport = admitted.transport.as_str(),
            lan = %self.setup.lan,
            sub = admitted.subject().unwrap_or(""),
            version = ?self.setup.version,
            streams = self.streams_opened,
            bytes_in = stats.data_bytes_from_client,
            bytes_out = stats.data_bytes_to_client,
            "{event}"
        );
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes the session's messages and pings; closes the WebSocket when the session ends.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Vec<u8>>,
    ctx: Arc<TransportContext>,
    stop: CancellationToken,
) {
    let interval = ctx.config().ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            message = out.recv() => {
                let Some(message) = message else { break };
                let write = async {
                    sink.feed(Message::Binary(message.into())).await?;
                    while let Ok(message) = out.try_recv() {
                        sink.feed(Message::Binary(message.into())).await?;
                    }
                    sink.flush().await
                };
                // A client that stops reading blocks this write; it must not block shutdown.
                tokio::select! {
                    result = write => result,
                    _ = stop.cancelled() => break,
                }
            }
            _ = ping.tick() => sink.send(Message::Ping(Bytes::new())).await,
        };
        if result.is_err() {
            stop.cancel();
            return;
        }
    }
    let close = ctx.shutdown.is_cancelled().then(|| CloseFrame {
        code: CLOSE_GOING_AWAY,
        reason: "relay shutting down".into(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match close {
            Some(frame) => sink.send(Message::Close(Some(frame))).await,
            None => sink.close().await,
        }
    })
    .await;
}
