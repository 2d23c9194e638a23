//! One client of a pair: the hello phase, then a sender task and a receiver.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Readiness, RxStats, SwitchCtx, ns_since};
use crate::{
    KIND_DATA, KIND_HELLO, OFF_SEQ, OFF_STAMP, Ws, client_mac, frame_template, hello_frame,
    new_histogram, parse,
};

/// A client that has not yet split its socket into sender and receiver.
struct PairClient {
    ws: Ws,
    me: u32,
    partner: u32,
    partner_mac: [u8; 6],
    ctx: Arc<SwitchCtx>,
    heard: bool,
    stats: RxStats,
}

/// One client of a pair: hello phase, then a sender task and this task as the receiver.
/// Returns (index, heard partner, receive stats).
pub(super) async fn switch_client(
    ws: Ws,
    me: u32,
    partner: u32,
    ctx: Arc<SwitchCtx>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    readiness: Arc<Readiness>,
) -> (u32, bool, RxStats) {
    let mut client = PairClient {
        ws,
        me,
        partner,
        partner_mac: client_mac(partner),
        ctx,
        heard: false,
        stats: RxStats::default(),
    };
    match client.greet(&mut start_rx, &readiness).await {
        Some(start) => client.exchange(start).await,
        None => (client.me, client.heard, client.stats),
    }
}

impl PairClient {
    /// Hello phase: broadcast a hello every 200 ms until we heard the partner; answer a hello
    /// from a partner who has not heard us yet. Returns the common start time, or None when
    /// the connection failed (the error is recorded) or the run was abandoned.
    async fn greet(
        &mut self,
        start_rx: &mut watch::Receiver<Option<Instant>>,
        readiness: &Readiness,
    ) -> Option<Instant> {
        let mut next_hello = Instant::now();
        loop {
            if let Some(start) = *start_rx.borrow_and_update() {
                return Some(start);
            }
            if !self.heard && Instant::now() >= next_hello {
                self.send_hello(false).await?;
                next_hello = Instant::now() + Duration::from_millis(200);
            }
            let wake = if self.heard {
                Instant::now() + Duration::from_secs(3600)
            } else {
                next_hello
            };
            tokio::select! {
                msg = self.ws.next() => self.on_hello_phase_message(msg, readiness).await?,
                _ = sleep_until(wake.into()) => {}
                r = start_rx.changed() => if r.is_err() { return None; },
            }
        }
    }

    /// None when the connection is gone (the error is recorded).
    async fn on_hello_phase_message(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
        readiness: &Readiness,
    ) -> Option<()> {
        let me = self.me;
        match msg {
            Some(Ok(Message::Binary(f))) => match parse(&f) {
                Some(p) if p.src == self.partner_mac && p.kind == KIND_HELLO => {
                    if !self.heard {
                        self.heard = true;
                        readiness.count.fetch_add(1, Ordering::AcqRel);
                        readiness.notify.notify_one();
                    }
                    if !p.heard {
                        self.send_hello(true).await?;
                    }
                }
                Some(p) if p.kind == KIND_HELLO => {} // another pair's hello (flooded)
                _ => self.stats.unexpected += 1,
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.ctx.errors.push(format!("client {me}: {e}"));
                return None;
            }
            None => {
                self.ctx
                    .errors
                    .push(format!("client {me}: relay closed the connection"));
                return None;
            }
        }
        Some(())
    }

    /// None when sending failed (the error is recorded).
    async fn send_hello(&mut self, heard: bool) -> Option<()> {
        match self
            .ws
            .send(Message::Binary(hello_frame(self.me, heard)))
            .await
        {
            Ok(()) => Some(()),
            Err(e) => {
                let me = self.me;
                self.ctx
                    .errors
                    .push(format!("client {me}: send hello: {e}"));
                None
            }
        }
    }

    /// From `start`: a sender task blasts at the partner while this task receives, then
    /// the socket is closed cleanly if both halves survived.
    async fn exchange(self, start: Instant) -> (u32, bool, RxStats) {
        let PairClient {
            ws,
            me,
            partner,
            partner_mac,
            ctx,
            heard,
            mut stats,
        } = self;
        let (sink, stream) = ws.split();
        let sender = if heard {
            Some(tokio::spawn(send_loop(
                sink,
                me,
                partner_mac,
                start,
                ctx.clone(),
            )))
        } else {
            // Not sure the switch knows our partner: sending would flood the LAN. Only receive.
            ctx.counters[me as usize]
                .done
                .store(true, Ordering::Release);
            drop(sink);
            None
        };
        let stream = receive_loop(stream, me, partner, &mut stats, &ctx).await;
        if let Some(s) = sender
            && let Ok(Some(sink)) = s.await
            && let Ok(mut ws) = sink.reunite(stream)
        {
            let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        (me, heard, stats)
    }
}

/// Sends unicast data frames to the partner from `start` until the window ends.
/// Returns the sink for a clean close, or None after an error.
async fn send_loop(
    mut sink: SplitSink<Ws, Message>,
    me: u32,
    partner_mac: [u8; 6],
    start: Instant,
    ctx: Arc<SwitchCtx>,
) -> Option<SplitSink<Ws, Message>> {
    let win_start = ctx.win_start_ns.load(Ordering::Acquire);
    let win_end = ctx.win_end_ns.load(Ordering::Acquire);
    let end = ctx.base + Duration::from_nanos(win_end);
    let hard_end = end + ctx.drain;
    let counters = &ctx.counters[me as usize];
    let template = frame_template(partner_mac, client_mac(me), KIND_DATA, me, ctx.frame_len);
    let len = template.len();
    // Frames are cut from one buffer; once tungstenite has copied a batch into its write
    // buffer the Bytes are gone and `reserve` reuses the same allocation.
    let mut buf = BytesMut::with_capacity(len * ctx.batch);
    let mut seq = 0u64;
    let mut in_window = 0u64;
    sleep_until(start.into()).await;
    let result = timeout_at(hard_end.into(), async {
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok::<(), tokio_tungstenite::tungstenite::Error>(());
            }
            let n = match ctx.rate {
                None => ctx.batch,
                Some(rate) => {
                    let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
                    let owed = due.saturating_sub(seq);
                    if owed == 0 {
                        let next = start + Duration::from_secs_f64((seq + 1) as f64 / rate);
                        sleep_until(next.min(end).into()).await;
                        continue;
                    }
                    owed.min(ctx.batch as u64) as usize
                }
            };
            for _ in 0..n {
                buf.reserve(len);
                buf.extend_from_slice(&template);
                let stamp = ns_since(ctx.base, Instant::now());
                buf[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_be_bytes());
                buf[OFF_STAMP..OFF_STAMP + 8].copy_from_slice(&stamp.to_be_bytes());
                seq += 1;
                if stamp >= win_start && stamp < win_end {
                    in_window += 1;
                }
                sink.feed(Message::Binary(buf.split().freeze())).await?;
            }
            sink.flush().await?;
            counters.window.store(in_window, Ordering::Release);
            // Let this worker's receivers run: a socket that always takes the batch would
            // otherwise keep the sender spinning and starve them.
            tokio::task::yield_now().await;
        }
    })
    .await;
    counters.window.store(in_window, Ordering::Release);
    counters.done.store(true, Ordering::Release);
    match result {
        Ok(Ok(())) => Some(sink),
        Ok(Err(e)) => {
            ctx.errors.push(format!("client {me}: send: {e}"));
            None
        }
        Err(_) => {
            ctx.errors.push(format!(
                "client {me}: send stuck past the drain time (relay not reading)"
            ));
            None
        }
    }
}

/// Reads frames until the partner's sender is done and all its window frames arrived, or the
/// drain time after the window is over.
async fn receive_loop(
    mut stream: SplitStream<Ws>,
    me: u32,
    partner: u32,
    stats: &mut RxStats,
    ctx: &SwitchCtx,
) -> SplitStream<Ws> {
    let partner_mac = client_mac(partner);
    let peer = &ctx.counters[partner as usize];
    let win_start = ctx.win_start_ns.load(Ordering::Acquire);
    let win_end = ctx.win_end_ns.load(Ordering::Acquire);
    let end = ctx.base + Duration::from_nanos(win_end);
    let hard_end = end + ctx.drain;
    let mut hist = new_histogram();
    let mut next_seq = 0u64;
    let check = tokio::time::sleep_until(end.into());
    tokio::pin!(check);
    let finished = |received: u64| {
        peer.done.load(Ordering::Acquire) && received >= peer.window.load(Ordering::Acquire)
    };
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(f))) => {
                    let now = ns_since(ctx.base, Instant::now());
                    match parse(&f) {
                        Some(p) if p.src == partner_mac && p.kind == KIND_DATA => {
                            if p.seq < next_seq {
                                stats.reordered += 1;
                            } else {
                                next_seq = p.seq + 1;
                            }
                            if p.stamp >= win_start && p.stamp < win_end {
                                stats.received += 1;
                                hist.saturating_record(now.saturating_sub(p.stamp));
                            }
                            if now >= win_end && finished(stats.received) {
                                break;
                            }
                        }
                        Some(p) if p.kind == KIND_HELLO => {}
                        _ => stats.unexpected += 1,
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ctx.errors.push(format!("client {me}: receive: {e}"));
                    break;
                }
                None => {
                    ctx.errors.push(format!("client {me}: relay closed the connection"));
                    break;
                }
            },
            _ = &mut check => {
                let now = Instant::now();
                if finished(stats.received) || now >= hard_end {
                    break;
                }
                check.as_mut().reset((now + Duration::from_millis(20)).min(hard_end).into());
            }
        }
    }
    stats.hist = Some(hist);
    stream
}
