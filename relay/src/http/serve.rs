//! The client listener's HTTP/1 server, with the hygiene a public service needs: a deadline
//! for every request head (slowloris), a cap on its size (431), and a cap on connections
//! that have not yet sent a whole request head. Garbage gets 400 and is closed (hyper).
//! axum's own `serve` offers none of these knobs, so this loop drives hyper directly; the
//! router is the same.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::admission::{Admission, RefusalReason};
use crate::transport::ClientAddr;

/// The limits of `[limits]` that apply before a request is routed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub(crate) head_timeout: Duration,
    pub(crate) max_head_bytes: usize,
    pub(crate) max_pending: usize,
}

/// Serves `router` on `listener` until `stop`.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HeadLimits,
    admission: Arc<Admission>,
    stop: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let pending = Arc::new(Semaphore::new(limits.max_pending));
    loop {
        let (io, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        // Refused at once, without a task or a buffer: the flood costs a counter.
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            admission.count(RefusalReason::Handshakes);
            continue;
        };
        let connection = Connection {
            router: router.clone(),
            addr,
            limits,
            admission: admission.clone(),
        };
        tokio::spawn(connection.run(io, permit, stop.clone()));
    }
}

struct Connection {
    router: Router,
    addr: SocketAddr,
    limits: HeadLimits,
    admission: Arc<Admission>,
}

impl Connection {
    async fn run<I>(self, io: I, permit: OwnedSemaphorePermit, stop: CancellationToken)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Held until the first request head is in: only then is the client past its
        // handshake.
        let permit = Arc::new(Mutex::new(Some(permit)));
        let router = self.router;
        let client = ConnectInfo(ClientAddr(self.addr));
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Ok(mut slot) = permit.lock() {
                slot.take();
            }
            request.extensions_mut().insert(client);
            router.clone().call(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.head_timeout)
            .max_buf_size(self.limits.max_head_bytes.max(8192));
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            if error.is_timeout() {
                self.admission.count(RefusalReason::HeadTimeout);
            } else if error.is_parse_too_large() {
                self.admission.count(RefusalReason::HeadTooLarge);
            }
        }
    }
}
