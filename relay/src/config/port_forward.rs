//! Inbound port-forward rules as `--forward` and `[nat] forwards` spell them:
//! `tcp:0.0.0.0:8080=default/10.0.2.15:80`. The listeners that carry them out live in
//! `crate::forward`; the gateway task resolves the target at every connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use smoltcp::wire::EthernetAddress;

use crate::shared::LanName;

/// `tcp:0.0.0.0:8080=default/10.0.2.15:80`: where the host listens and which VM gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortForwardRule {
    pub(crate) protocol: ForwardProtocol,
    pub(crate) listen: SocketAddr,
    pub(crate) lan: LanName,
    pub(crate) target: ForwardTarget,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ForwardProtocol {
    Tcp,
    Udp,
}

/// A VM named by address, DHCP host name or MAC; names and MACs follow lease changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForwardTarget {
    Ip(Ipv4Addr),
    Host(String),
    Mac(EthernetAddress),
}

impl std::fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardTarget::Ip(ip) => write!(f, "{ip}"),
            ForwardTarget::Host(host) => f.write_str(host),
            ForwardTarget::Mac(mac) => write!(f, "{mac}"),
        }
    }
}

/// An IPv4 address, a MAC, or a DHCP host name (one label, as VMs send it).
impl FromStr for ForwardTarget {
    type Err = ();

    fn from_str(target: &str) -> Result<Self, ()> {
        if let Ok(ip) = target.parse::<Ipv4Addr>() {
            Ok(ForwardTarget::Ip(ip))
        } else if let Ok(mac) = EthernetAddress::from_str(target) {
            Ok(ForwardTarget::Mac(mac))
        } else if !target.is_empty()
            && target.len() <= 63
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            Ok(ForwardTarget::Host(target.to_ascii_lowercase()))
        } else {
            Err(())
        }
    }
}

impl std::fmt::Display for PortForwardRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = match self.protocol {
            ForwardProtocol::Tcp => "tcp",
            ForwardProtocol::Udp => "udp",
        };
        write!(
            f,
            "{protocol}:{}={}/{}:{}",
            self.listen, self.lan, self.target, self.port
        )
    }
}

impl FromStr for PortForwardRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |problem: &str| {
            format!(
                "forward `{text}`: {problem}; write PROTO:LISTEN_IP:PORT=LAN/TARGET:PORT, e.g. tcp:0.0.0.0:8080=default/10.0.2.15:80 (TARGET: an IP, a DHCP host name or a MAC)"
            )
        };
        let (listen, target) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (protocol, listen) = listen.split_once(':').ok_or_else(|| bad("no protocol"))?;
        let protocol = match protocol {
            "tcp" => ForwardProtocol::Tcp,
            "udp" => ForwardProtocol::Udp,
            _ => return Err(bad("the protocol must be tcp or udp")),
        };
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| bad("the listen address is not IP:PORT"))?;
        let (lan, target) = target
            .split_once('/')
            .ok_or_else(|| bad("no LAN before `/`"))?;
        let lan = LanName::new(lan).map_err(|e| bad(&e.to_string()))?;
        let (target, port) = target
            .rsplit_once(':')
            .ok_or_else(|| bad("no target port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the target port is not 1-65535"))?;
        let target: ForwardTarget = target
            .parse()
            .map_err(|()| bad("the target is not an IPv4 address, a MAC or a host name"))?;
        Ok(PortForwardRule {
            protocol,
            listen,
            lan,
            target,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_print() {
        let forward: PortForwardRule = "tcp:0.0.0.0:8080=default/10.0.2.15:80".parse().unwrap();
        assert_eq!(forward.protocol, ForwardProtocol::Tcp);
        assert_eq!(
            forward.target,
            ForwardTarget::Ip(Ipv4Addr::new(10, 0, 2, 15))
        );
        assert_eq!(forward.to_string(), "tcp:0.0.0.0:8080=default/10.0.2.15:80");
        let by_mac: PortForwardRule = "udp:127.0.0.1:5353=lab/52:54:00:aa:bb:cc:53"
            .parse()
            .unwrap();
        assert_eq!(
            by_mac.target,
            ForwardTarget::Mac(EthernetAddress([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]))
        );
        let by_host: PortForwardRule = "tcp:127.0.0.1:2222=lab/Web-1:22".parse().unwrap();
        assert_eq!(by_host.target, ForwardTarget::Host("web-1".into()));
        for bad in [
            "tcp:0.0.0.0:8080",
            "sctp:0.0.0.0:1=default/10.0.2.15:80",
            "tcp:0.0.0.0:8080=default/10.0.2.15:0",
            "tcp:0.0.0.0:8080=bad name/10.0.2.15:80",
            "tcp:0.0.0.0:8080=default/a_b:80",
        ] {
            let err = bad.parse::<PortForwardRule>().unwrap_err();
            assert!(err.contains("PROTO:LISTEN_IP:PORT"), "{err}");
        }
    }
}
