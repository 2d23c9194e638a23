//! Streams of `/wisp/lan/NAME/`: into a LAN instead of the internet. The LAN's gateway
//! already knows how to open a TCP connection to one of its machines from the gateway
//! address for an inbound port forward, given a host `TcpStream`; a stream here hands it
//! one end of a loopback socket pair and pumps the other like any host socket, so nothing
//! of the gateway or the NAT changes for Wisp.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use wisp::{CloseReason, StreamType};

use super::LanDoor;
use crate::config::ForwardTarget;
use crate::shared::LanName;

/// Opens a TCP stream to `host:port` in `lan`.
pub(super) async fn open(
    lan: &LanName,
    door: &Arc<dyn LanDoor>,
    stream_type: StreamType,
    host: &str,
    port: u16,
) -> Result<TcpStream, CloseReason> {
    // The gateway forwards TCP only; UDP into a LAN would need a datagram door of its own.
    if stream_type != StreamType::Tcp {
        return Err(CloseReason::Blocked);
    }
    let target = target(lan, host).ok_or(CloseReason::Unreachable)?;
    let (near, far) = socket_pair().await.map_err(|_| CloseReason::NetworkError)?;
    if !door.open(lan, target, port, far) {
        return Err(CloseReason::Unreachable);
    }
    Ok(near)
}

/// A machine of `lan` as a CONNECT names it: an address, a MAC, a host name, or a host
/// name in the LAN's DHCP domain (`vm1.NAME.lan`, which is what the VMs themselves use).
fn target(lan: &LanName, host: &str) -> Option<ForwardTarget> {
    let domain = format!(".{lan}.lan");
    let name = host.strip_suffix('.').unwrap_or(host);
    let name = match name.len().checked_sub(domain.len()) {
        Some(cut) if name[cut..].eq_ignore_ascii_case(&domain) => &name[..cut],
        _ => name,
    };
    name.parse().ok()
}

/// Two connected loopback sockets. The listener lives only for this call, and only the
/// connection from our own socket is taken: another local process that races to connect
/// is refused (dropped).
async fn socket_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let ours = near.local_addr()?;
    loop {
        let (far, from) = listener.accept().await?;
        if from == ours {
            return Ok((near, far));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_lan() {
        let lan = LanName::new("class-1").unwrap();
        let host = |h: &str| target(&lan, h);
        assert_eq!(host("vm1"), Some(ForwardTarget::Host("vm1".into())));
        assert_eq!(
            host("VM1.class-1.lan."),
            Some(ForwardTarget::Host("vm1".into()))
        );
        assert_eq!(
            host("10.0.2.15"),
            Some(ForwardTarget::Ip([10, 0, 2, 15].into()))
        );
        assert_eq!(host("vm1.other.lan"), None);
        assert_eq!(host(""), None);
    }

    #[tokio::test]
    async fn socket_pairs_are_connected() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, mut b) = socket_pair().await.unwrap();
        a.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}
