//! Layer 5: inbound port forwards (docs/architecture.md, "Layers"): a host listener per forward hands each connection (or datagram)
//! to its LAN's gateway task, which opens the connection into the VM from the gateway
//! address. Targets named by host name or MAC are looked up at every connection, so a
//! forward follows its VM across lease changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{AbortHandle, JoinHandle};

use crate::config::{ForwardProtocol, PortForwardRule};
use crate::gateway_port::commands::{GatewayCommand, GatewayDirectory};
use crate::shared::metrics::Family;

struct Running {
    forward: PortForwardRule,
    bound: SocketAddr,
    task: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The forwards in effect, each with its listener; changed at start-up and through the
/// admin API.
#[derive(Default)]
pub(crate) struct PortForwards {
    running: Mutex<BTreeMap<u64, Running>>,
    next_id: AtomicU64,
    connections: Arc<AtomicU64>,
}

impl std::fmt::Debug for PortForwards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwards").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error(
        "cannot listen on {addr} for forward `{forward}`: {error}. Pick a free port or stop the program using it."
    )]
    Bind {
        addr: SocketAddr,
        forward: String,
        // Not `source`: the message says it already, and `{:#}` would say it twice.
        error: std::io::Error,
    },
}

impl PortForwards {
    /// Binds the forward's listener and starts serving it. Returns its id.
    pub(crate) async fn add(
        &self,
        forward: PortForwardRule,
        directory: &Arc<GatewayDirectory>,
    ) -> Result<u64, ForwardError> {
        let bind_error = |error| ForwardError::Bind {
            addr: forward.listen,
            forward: forward.to_string(),
            error,
        };
        let directory = directory.clone();
        let (task, bound) = match forward.protocol {
            ForwardProtocol::Tcp => {
                let listener = TcpListener::bind(forward.listen)
                    .await
                    .map_err(bind_error)?;
                let bound = listener.local_addr().unwrap_or(forward.listen);
                let task = serve_tcp(
                    listener,
                    forward.clone(),
                    directory,
                    self.connections.clone(),
                );
                (task, bound)
            }
            ForwardProtocol::Udp => {
                let socket = UdpSocket::bind(forward.listen).await.map_err(bind_error)?;
                let bound = socket.local_addr().unwrap_or(forward.listen);
                (serve_udp(socket, forward.clone(), directory), bound)
            }
        };
        tracing::info!("forwarding {forward} (listening on {bound})");
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                id,
                Running {
                    forward,
                    bound,
                    task: task.abort_handle(),
                },
            );
        }
        Ok(id)
    }

    pub(crate) fn remove(&self, id: u64) -> bool {
        self.running
            .lock()
            .map(|mut running| running.remove(&id).is_some())
            .unwrap_or(false)
    }

    pub(crate) fn count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub(crate) fn list(&self) -> serde_json::Value {
        let running = match self.running.lock() {
            Ok(running) => running,
            Err(_) => return serde_json::json!([]),
        };
        running
            .iter()
            .map(|(id, r)| {
                serde_json::json!({
                    "id": id,
                    "forward": r.forward.to_string(),
                    "protocol": r.forward.protocol,
                    "listening": r.bound.to_string(),
                    "lan": r.forward.lan.as_str(),
                    "target": r.forward.target.to_string(),
                    "port": r.forward.port,
                })
            })
            .collect()
    }

    /// The forwards' `/metrics` families.
    pub(crate) fn families(&self) -> Vec<Family> {
        vec![
            Family::gauge(
                "forwards_active",
                "Inbound port forwards in effect",
                self.count() as i64,
            ),
            Family::counter(
                "forward_connections",
                "Connections accepted by TCP port forwards",
                self.connections.load(Relaxed),
            ),
        ]
    }
}

/// Hands every accepted connection to the LAN's gateway task.
fn serve_tcp(
    listener: TcpListener,
    forward: PortForwardRule,
    directory: Arc<GatewayDirectory>,
    connections: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            connections.fetch_add(1, Relaxed);
            let Some(gateway) = directory.get(&forward.lan) else {
                tracing::debug!(%peer, "forward {forward}: LAN has no gateway now; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let command = GatewayCommand::InboundTcp {
                target: forward.target.clone(),
                port: forward.port,
                stream,
            };
            let _ = gateway.send(command).await;
        }
    })
}

/// Hands every datagram to the LAN's gateway task, with the socket to answer from.
fn serve_udp(
    socket: UdpSocket,
    forward: PortForwardRule,
    directory: Arc<GatewayDirectory>,
) -> JoinHandle<()> {
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let mut buffer = vec![0; 65536];
        loop {
            let Ok((n, SocketAddr::V4(client))) = socket.recv_from(&mut buffer).await else {
                continue;
            };
            let Some(gateway) = directory.get(&forward.lan) else {
                continue;
            };
            // A full gateway queue drops the datagram, as a router would.
            let _ = gateway.try_send(GatewayCommand::InboundUdp {
                target: forward.target.clone(),
                port: forward.port,
                client,
                payload: Bytes::copy_from_slice(&buffer[..n]),
                socket: socket.clone(),
            });
        }
    })
}
