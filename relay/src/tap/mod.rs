//! `v86-relay tap`: bridges a host TAP device into a relay LAN over the same WebSocket
//! protocol v86 uses, so a real Linux stack (a namespace, a container, a QEMU guest) joins
//! the virtual LAN. Reconnects with backoff, as v86 does.

mod device;

use std::io::{self, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::TapArgs;
use crate::shared::MAX_FRAME_SIZE_LIMIT;

/// Frames read from the TAP device before one flush to the WebSocket.
const READ_BATCH: usize = 64;

pub async fn run(args: TapArgs) -> anyhow::Result<()> {
    let file = device::open(&args.dev, args.netns.as_deref())?;
    let tap = device::into_async(file)?;
    let place = args
        .netns
        .as_deref()
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    tracing::info!(
        "TAP device {}{place} attached; joining {}",
        args.dev,
        args.url
    );
    let mut backoff = Duration::from_millis(250);
    loop {
        // Nagle off, as browsers have it: with it on, a frame written while the previous
        // one waited for its ACK (the relay's kernel delays that by 40 ms) waited too, so
        // a guest's back-to-back connects each took 43 ms.
        match tokio_tungstenite::connect_async_with_config(args.url.as_str(), None, true).await {
            Ok((ws, _)) => {
                tracing::info!("connected to {}", args.url);
                backoff = Duration::from_millis(250);
                let reason = bridge(&tap, ws).await;
                tracing::warn!("connection to {} ended: {reason}; reconnecting", args.url);
            }
            Err(error) => {
                tracing::warn!(
                    "cannot connect to {}: {error}; retrying in {backoff:?}",
                    args.url
                )
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Moves frames both ways until either side fails; returns why.
async fn bridge(tap: &AsyncFd<std::fs::File>, ws: Ws) -> String {
    let (mut sink, mut stream) = ws.split();
    let upstream = async {
        let mut buf = vec![0u8; MAX_FRAME_SIZE_LIMIT];
        loop {
            let n = read_frame(tap, &mut buf).await?;
            sink.feed(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await
                .map_err(io::Error::other)?;
            // Whatever else the kernel has queued goes in the same flush.
            for _ in 1..READ_BATCH {
                match tap.get_ref().read(&mut buf) {
                    Ok(n) => sink
                        .feed(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .map_err(io::Error::other)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err::<std::convert::Infallible, io::Error>(e),
                }
            }
            sink.flush().await.map_err(io::Error::other)?;
        }
    };
    let downstream = async {
        while let Some(message) = stream.next().await {
            match message.map_err(io::Error::other)? {
                Message::Binary(frame) => write_frame(tap, &frame).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<(), io::Error>(())
    };
    tokio::select! {
        result = upstream => match result { Err(e) => format!("TAP or socket error: {e}") },
        result = downstream => match result {
            Ok(()) => "closed by the relay".to_owned(),
            Err(e) => format!("error: {e}"),
        },
    }
}

async fn read_frame(tap: &AsyncFd<std::fs::File>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = tap.readable().await?;
        match guard.try_io(|fd| fd.get_ref().read(buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_frame(tap: &AsyncFd<std::fs::File>, frame: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = tap.writable().await?;
        match guard.try_io(|fd| fd.get_ref().write(frame)) {
            // The kernel refuses malformed frames (EINVAL); one bad frame must not end the link.
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidInput => return Ok(()),
            Ok(result) => return result.map(|_| ()),
            Err(_would_block) => continue,
        }
    }
}
