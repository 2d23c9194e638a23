//! The client's address behind reverse proxies (`server.trusted_proxies`).
//!
//! [`TrustedProxies::client_ip`] believes a forwarding header only when the TCP peer is a
//! trusted proxy, and then walks the header from the right (the hop nearest to us) and takes
//! the first address that is not itself a trusted proxy. Everything left of that was written
//! by the client or by proxies we do not know, so it is never believed: a client sending
//! `X-Forwarded-For: 1.2.3.4` through nginx is seen as itself, not as 1.2.3.4.
//!
//! Only one header is read, the one the operator's proxy sets ([`ForwardedHeader`]).
//! Reading both would let a client forge whichever one the proxy passes through untouched.
//! Several header lines of the same name are one list: join them with `,` before calling.
//!
//! Parsing is bounded and never panics: at most [`MAX_HOPS`] elements are read from the
//! right, and an element that is not an address (garbage, `unknown`, an obfuscated RFC 7239
//! identifier) stops the walk at the last hop we could trust, which is then the answer.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Most header elements examined, counted from the right.
pub const MAX_HOPS: usize = 32;
/// Longest element examined; an address with a port and brackets is under 64 bytes.
const MAX_ELEMENT_LEN: usize = 100;

/// An IP network such as `10.0.0.0/8` or `fd00::/8`; a bare address is a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    #[error("{0:?} is not an IP address or network: write e.g. 10.0.0.0/8 or fd00::/8")]
    Syntax(String),
    #[error("prefix length /{prefix_len} is too long for {family}: use at most /{max}")]
    PrefixLen {
        prefix_len: u8,
        family: &'static str,
        max: u8,
    },
    #[error("{given} has host bits set for /{prefix_len}: write {network}/{prefix_len}")]
    HostBits {
        given: IpAddr,
        prefix_len: u8,
        network: IpAddr,
    },
}

impl Cidr {
    /// The network `network/prefix_len`; host bits must be clear.
    pub fn new(network: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let network = network.to_canonical();
        let (family, max) = match network {
            IpAddr::V4(_) => ("IPv4", 32),
            IpAddr::V6(_) => ("IPv6", 128),
        };
        if prefix_len > max {
            return Err(CidrError::PrefixLen {
                prefix_len,
                family,
                max,
            });
        }
        let masked = mask(network, prefix_len);
        if masked != network {
            return Err(CidrError::HostBits {
                given: network,
                prefix_len,
                network: masked,
            });
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix_len) == self.network
    }
}

/// `ip` with all but the first `prefix_len` bits cleared (`prefix_len` within range).
fn mask(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits.checked_shr(32 - u32::from(prefix_len)).unwrap_or(0);
            let masked = kept.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(masked))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits.checked_shr(128 - u32::from(prefix_len)).unwrap_or(0);
            let masked = kept.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        let syntax = || CidrError::Syntax(text.chars().take(64).collect());
        let (addr, prefix_len) = match text.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
                let len = (len.len() <= 3)
                    .then(|| len.parse::<u8>().ok())
                    .flatten()
                    .ok_or_else(syntax)?;
                (addr, len)
            }
            None => {
                let addr: IpAddr = text.parse().map_err(|_| syntax())?;
                let host = if addr.to_canonical().is_ipv4() {
                    32
                } else {
                    128
                };
                (addr, host)
            }
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Which header the trusted proxies set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, Caddy, Traefik, cloud
    /// load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts `networks`, reading `header`. With no networks, the peer is always the client.
    pub fn new(networks: Vec<Cidr>, header: ForwardedHeader) -> Self {
        Self { networks, header }
    }

    /// Parses a config list such as `["127.0.0.1/32", "10.0.0.0/8", "::1"]`, reading
    /// `X-Forwarded-For`.
    pub fn parse<S: AsRef<str>>(list: impl IntoIterator<Item = S>) -> Result<Self, CidrError> {
        let networks = list
            .into_iter()
            .map(|text| text.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self::new(networks, ForwardedHeader::default()))
    }

    /// Reads `header` instead.
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// True when `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// The client's address, given the TCP peer and the raw values of the two headers
    /// (`None` when absent). Only the configured header is read.
    pub fn client_ip(
        &self,
        peer: IpAddr,
        x_forwarded_for: Option<&str>,
        forwarded: Option<&str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let (value, parse): (_, fn(&str) -> Option<IpAddr>) = match self.header {
            ForwardedHeader::XForwardedFor => (x_forwarded_for, parse_node),
            ForwardedHeader::Forwarded => (forwarded, parse_forwarded_element),
        };
        let Some(value) = value else {
            return peer;
        };
        let mut nearest_trusted = peer;
        let elements = value.rsplit(',').map(str::trim).filter(|e| !e.is_empty());
        for element in elements.take(MAX_HOPS) {
            let Some(ip) = parse(element).map(|ip| ip.to_canonical()) else {
                return nearest_trusted;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            nearest_trusted = ip;
        }
        nearest_trusted
    }
}

/// One RFC 7239 element (`for=...;proto=...;by=...`): the address of its `for` parameter.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    if element.len() > MAX_ELEMENT_LEN {
        return None;
    }
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if node.len() > MAX_ELEMENT_LEN {
        return None;
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _port) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    node.parse::<SocketAddr>().ok().map(|socket| socket.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.200.3.4")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "mapped IPv4 is IPv4");
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn cidr_errors_say_what_to_write() {
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.0.0.1 has host bits set for /8: write 10.0.0.0/8"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixLen { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixLen { .. })
        ));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/0008",
            "example.com",
            "10/8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_send() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let peer = ip("203.0.113.5");
        assert_eq!(trusted.client_ip(peer, Some("1.2.3.4"), None), peer);
        let nobody = TrustedProxies::default();
        assert_eq!(
            nobody.client_ip(ip("127.0.0.1"), Some("1.2.3.4"), None),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_gives_the_rightmost_untrusted_address() {
        let trusted = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // A client's forged entry on the left is ignored; the proxy appended the real one.
        let xff = "6.6.6.6, 198.51.100.20, 10.1.1.1";
        assert_eq!(
            trusted.client_ip(peer, Some(xff), None),
            ip("198.51.100.20")
        );
        assert_eq!(
            trusted.client_ip(peer, Some("198.51.100.20"), None),
            ip("198.51.100.20")
        );
        assert_eq!(
            trusted.client_ip(peer, None, None),
            peer,
            "no header: the peer"
        );
        assert_eq!(trusted.client_ip(peer, Some(""), None), peer);
        // Every hop trusted: the left-most one.
        assert_eq!(
            trusted.client_ip(peer, Some("10.0.0.9, 10.0.0.8"), None),
            ip("10.0.0.9")
        );
        // Ports and brackets, as some proxies write them; IPv6; mapped IPv4.
        let xff = "[2001:db8::7]:4711, 198.51.100.1:8080";
        assert_eq!(trusted.client_ip(peer, Some(xff), None), ip("198.51.100.1"));
        assert_eq!(
            trusted.client_ip(peer, Some("[2001:db8::7]:4711"), None),
            ip("2001:db8::7")
        );
        assert_eq!(
            trusted.client_ip(peer, Some("2001:db8::7"), None),
            ip("2001:db8::7")
        );
        let mapped = trusted.client_ip(ip("::ffff:127.0.0.1"), Some("::ffff:192.0.2.1"), None);
        assert_eq!(mapped, ip("192.0.2.1"));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let trusted = proxies(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        assert_eq!(
            trusted.client_ip(peer, Some("1.2.3.4, nonsense"), None),
            peer
        );
        assert_eq!(
            trusted.client_ip(peer, Some("junk, 10.0.0.3"), None),
            ip("10.0.0.3")
        );
        assert_eq!(trusted.client_ip(peer, Some(",,, ,"), None), peer);
        let long = format!("1.2.3.4, {}", "9".repeat(10_000));
        assert_eq!(trusted.client_ip(peer, Some(&long), None), peer);
        // More hops than MAX_HOPS, all trusted: stops there, at a trusted hop.
        let hops = vec!["10.0.0.1"; 1000].join(",");
        assert_eq!(trusted.client_ip(peer, Some(&hops), None), ip("10.0.0.1"));
        for odd in [
            "[", "]", "[::1", "[zz]:1", "1.2.3.4:", ":::::", "\u{0}", "é,é",
        ] {
            let _ = trusted.client_ip(peer, Some(odd), Some(odd));
        }
    }

    #[test]
    fn rfc7239_forwarded_when_configured() {
        let trusted = proxies(&["127.0.0.1", "::1"]).with_header(ForwardedHeader::Forwarded);
        let peer = ip("::1");
        let header = r#"for=6.6.6.6, for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#;
        assert_eq!(
            trusted.client_ip(peer, None, Some(header)),
            ip("2001:db8:cafe::17")
        );
        let header = "for=192.0.2.60;proto=https, for=127.0.0.1";
        assert_eq!(
            trusted.client_ip(peer, None, Some(header)),
            ip("192.0.2.60")
        );
        // `unknown`, obfuscated identifiers and elements without `for` stop the walk.
        assert_eq!(trusted.client_ip(peer, None, Some("for=unknown")), peer);
        assert_eq!(
            trusted.client_ip(peer, None, Some("for=_hidden, for=127.0.0.1")),
            ip("127.0.0.1")
        );
        assert_eq!(trusted.client_ip(peer, None, Some("proto=https")), peer);
        // The other header is not read: a forged X-Forwarded-For changes nothing.
        assert_eq!(trusted.client_ip(peer, Some("6.6.6.6"), None), peer);
    }

    #[test]
    fn x_forwarded_for_mode_ignores_forwarded() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        assert_eq!(trusted.client_ip(peer, None, Some("for=6.6.6.6")), peer);
    }
}
