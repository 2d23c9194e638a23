//! Inbound port forwards: a host listener per forward hands each connection (or datagram)
//! to its LAN's gateway task, which opens the connection into the VM from the gateway
//! address. Targets named by host name or MAC are looked up at every connection, so a
//! forward follows its VM across lease changes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::lan::LanName;
use crate::nat::{Forward, ForwardProtocol, ForwardTarget};

/// What other tasks ask of a LAN's gateway task.
#[derive(Debug)]
pub enum GatewayCommand {
    /// A host connection for `target:port` in this LAN.
    InboundTcp {
        target: ForwardTarget,
        port: u16,
        stream: TcpStream,
    },
    /// A datagram from `client` to a UDP forward; answers go back through `socket`.
    InboundUdp {
        target: ForwardTarget,
        port: u16,
        client: SocketAddrV4,
        payload: Bytes,
        socket: Arc<UdpSocket>,
    },
    /// The LAN's leases and flows, for the admin API.
    Describe(oneshot::Sender<serde_json::Value>),
}

/// Each live gateway task's command channel, by LAN.
#[derive(Debug, Default)]
pub struct GatewayDirectory {
    gateways: Mutex<BTreeMap<LanName, mpsc::Sender<GatewayCommand>>>,
}

impl GatewayDirectory {
    pub fn register(&self, lan: &LanName, commands: mpsc::Sender<GatewayCommand>) {
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.insert(lan.clone(), commands);
        }
    }

    pub fn unregister(&self, lan: &LanName) {
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.remove(lan);
        }
    }

    pub fn get(&self, lan: &LanName) -> Option<mpsc::Sender<GatewayCommand>> {
        self.gateways.lock().ok()?.get(lan).cloned()
    }

    pub fn all(&self) -> Vec<(LanName, mpsc::Sender<GatewayCommand>)> {
        self.gateways
            .lock()
            .map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// Resolves a forward's target in a LAN: an address as is, a host name or MAC through
/// the DHCP leases (and, for a MAC, the neighbour cache).
pub fn resolve_target(gateway: &gateway::Gateway, target: &ForwardTarget) -> Option<Ipv4Addr> {
    match target {
        ForwardTarget::Ip(ip) => Some(*ip),
        ForwardTarget::Host(host) => gateway
            .dhcp()
            .leases()
            .filter(|lease| {
                lease
                    .host_name
                    .as_deref()
                    .is_some_and(|name| name.eq_ignore_ascii_case(host))
            })
            // The newest lease wins when a renamed VM left an older one.
            .max_by_key(|lease| lease.expires)
            .map(|lease| lease.ip),
        ForwardTarget::Mac(mac) => gateway.dhcp().lease_by_mac(*mac).map(|lease| lease.ip),
    }
}

struct Running {
    forward: Forward,
    bound: SocketAddr,
    task: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The forwards in effect; changed at start-up and through the admin API.
#[derive(Default)]
pub struct Forwards {
    running: Mutex<BTreeMap<u64, Running>>,
    next_id: AtomicU64,
    pub connections: AtomicU64,
}

impl std::fmt::Debug for Forwards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwards").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Parse(String),
    #[error(
        "cannot listen on {addr} for forward `{forward}`: {source}. Pick a free port or stop the program using it."
    )]
    Bind {
        addr: SocketAddr,
        forward: String,
        source: std::io::Error,
    },
}

impl Forwards {
    /// Binds the forward's listener and starts serving it. Returns its id.
    pub async fn add(
        self: &Arc<Self>,
        forward: Forward,
        directory: &Arc<GatewayDirectory>,
    ) -> Result<u64, ForwardError> {
        let bind_error = |source| ForwardError::Bind {
            addr: forward.listen,
            forward: forward.to_string(),
            source,
        };
        let directory = directory.clone();
        let (task, bound) = match forward.protocol {
            ForwardProtocol::Tcp => {
                let listener = TcpListener::bind(forward.listen)
                    .await
                    .map_err(bind_error)?;
                let bound = listener.local_addr().unwrap_or(forward.listen);
                let forward = forward.clone();
                let forwards = self.clone();
                let task = tokio::spawn(async move {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else {
                            continue;
                        };
                        forwards.connections.fetch_add(1, Relaxed);
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
                });
                (task, bound)
            }
            ForwardProtocol::Udp => {
                let socket = Arc::new(UdpSocket::bind(forward.listen).await.map_err(bind_error)?);
                let bound = socket.local_addr().unwrap_or(forward.listen);
                let forward = forward.clone();
                let task = tokio::spawn(async move {
                    let mut buffer = vec![0; 65536];
                    loop {
                        let Ok((n, SocketAddr::V4(client))) = socket.recv_from(&mut buffer).await
                        else {
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
                });
                (task, bound)
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

    pub fn remove(&self, id: u64) -> bool {
        self.running
            .lock()
            .map(|mut running| running.remove(&id).is_some())
            .unwrap_or(false)
    }

    pub fn count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn list(&self) -> serde_json::Value {
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
}
