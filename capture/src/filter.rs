//! A small capture filter in the spirit of tcpdump's, enough for a classroom:
//!
//! ```text
//! expr    := term ("or" term)*
//! term    := factor ("and" factor)*
//! factor  := "not" factor | "(" expr ")" | primitive
//! primitive := "arp" | "ip" | "ipv4" | "ip6" | "ipv6" | "icmp"
//!            | ["tcp" | "udp"] "port" N          (either end)
//!            | "tcp" | "udp"
//!            | "ether proto" N                    (decimal or 0x hex)
//!            | "ether host" MAC                   (either end)
//! ```
//!
//! Words are case-insensitive; `&&`, `||` and `!` are accepted for `and`, `or`, `not`. An
//! empty filter matches everything. Matching reads the Ethernet header, one 802.1Q tag, and
//! the IPv4 header; ports are read only from a datagram's first fragment.

use std::fmt;

/// Longest filter text accepted, and deepest nesting: a filter is typed by a person.
const MAX_LEN: usize = 512;
const MAX_DEPTH: usize = 16;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// A parsed filter; [`Filter::matches`] decides for one Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Option<Expr>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    EtherType(u16),
    EtherHost([u8; 6]),
    /// An IPv4 datagram of this protocol.
    IpProto(u8),
    /// TCP or UDP (`None`: either) with this port at either end.
    Port(Option<u8>, u16),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Why a filter was refused; Display is one line for an HTTP 400 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter: {} (use e.g. `arp`, `icmp`, `tcp port 80`, `udp port 53 or arp`)",
            self.0
        )
    }
}

impl std::error::Error for FilterError {}

fn error<T>(message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(message.into()))
}

impl Filter {
    /// Everything passes.
    pub fn all() -> Self {
        Filter(None)
    }

    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_LEN {
            return error(format!("longer than {MAX_LEN} characters"));
        }
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Ok(Filter(None));
        }
        let mut parser = Parser { tokens, at: 0 };
        let expr = parser.expr(0)?;
        match parser.peek() {
            None => Ok(Filter(Some(expr))),
            Some(word) => error(format!("unexpected `{word}`")),
        }
    }

    /// Whether `frame` (starting at the Ethernet header) passes.
    pub fn matches(&self, frame: &[u8]) -> bool {
        match &self.0 {
            None => true,
            Some(expr) => Headers::of(frame).is_some_and(|h| expr.matches(&h)),
        }
    }
}

fn tokenize(text: &str) -> Vec<String> {
    let spaced = text
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace("&&", " and ")
        .replace("||", " or ")
        .replace('!', " not ");
    spaced
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn eat(&mut self, word: &str) -> bool {
        let found = self.peek() == Some(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth > MAX_DEPTH {
            return error(format!("nested deeper than {MAX_DEPTH}"));
        }
        let mut left = self.term(depth)?;
        while self.eat("or") {
            left = Expr::Or(Box::new(left), Box::new(self.term(depth)?));
        }
        Ok(left)
    }

    fn term(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.factor(depth)?;
        while self.eat("and") {
            left = Expr::And(Box::new(left), Box::new(self.factor(depth)?));
        }
        Ok(left)
    }

    fn factor(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth > MAX_DEPTH {
            return error(format!("nested deeper than {MAX_DEPTH}"));
        }
        if self.eat("not") {
            return Ok(Expr::Not(Box::new(self.factor(depth + 1)?)));
        }
        if self.eat("(") {
            let inner = self.expr(depth + 1)?;
            if !self.eat(")") {
                return error("missing `)`");
            }
            return Ok(inner);
        }
        self.primitive()
    }

    fn primitive(&mut self) -> Result<Expr, FilterError> {
        let Some(word) = self.next() else {
            return error("ends where a protocol was expected");
        };
        Ok(match word.as_str() {
            "arp" => Expr::EtherType(ETHERTYPE_ARP),
            "ip" | "ipv4" => Expr::EtherType(ETHERTYPE_IPV4),
            "ip6" | "ipv6" => Expr::EtherType(ETHERTYPE_IPV6),
            "icmp" => Expr::IpProto(PROTO_ICMP),
            "tcp" | "udp" => {
                let proto = if word == "tcp" { PROTO_TCP } else { PROTO_UDP };
                if self.eat("port") {
                    Expr::Port(Some(proto), self.number("port")?)
                } else {
                    Expr::IpProto(proto)
                }
            }
            "port" => Expr::Port(None, self.number("port")?),
            "ether" => match self.next().as_deref() {
                Some("proto") => Expr::EtherType(self.number("EtherType")?),
                Some("host") => Expr::EtherHost(self.mac()?),
                _ => return error("`ether` is followed by `proto N` or `host MAC`"),
            },
            other => return error(format!("unknown word `{other}`")),
        })
    }

    fn number(&mut self, what: &str) -> Result<u16, FilterError> {
        let word = self.next().unwrap_or_default();
        let parsed = match word.strip_prefix("0x") {
            Some(hex) => u16::from_str_radix(hex, 16),
            None => word.parse(),
        };
        parsed.or_else(|_| error(format!("`{word}` is not a {what} (0..=65535)")))
    }

    fn mac(&mut self) -> Result<[u8; 6], FilterError> {
        let word = self.next().unwrap_or_default();
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = word.split([':', '-']).collect();
        if parts.len() != 6 {
            return error(format!("`{word}` is not a MAC address"));
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16)
                .or_else(|_| error(format!("`{word}` is not a MAC address")))?;
        }
        Ok(mac)
    }
}

/// What a filter reads of a frame.
struct Headers {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
    /// IPv4 protocol, and the ports when this is the first fragment of TCP or UDP.
    ip_proto: Option<u8>,
    ports: Option<(u16, u16)>,
}

impl Headers {
    fn of(frame: &[u8]) -> Option<Headers> {
        let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let mut l3 = 14;
        if ethertype == ETHERTYPE_VLAN {
            ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
            l3 = 18;
        }
        let mut headers = Headers {
            dst: frame[..6].try_into().ok()?,
            src: frame[6..12].try_into().ok()?,
            ethertype,
            ip_proto: None,
            ports: None,
        };
        if ethertype == ETHERTYPE_IPV4 {
            headers.read_ipv4(frame.get(l3..).unwrap_or_default());
        }
        Some(headers)
    }

    fn read_ipv4(&mut self, ip: &[u8]) {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return;
        }
        let proto = ip[9];
        self.ip_proto = Some(proto);
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        if fragment_offset != 0 || !matches!(proto, PROTO_TCP | PROTO_UDP) {
            return;
        }
        if let Some(l4) = ip.get(header_len..header_len + 4) {
            let src = u16::from_be_bytes([l4[0], l4[1]]);
            let dst = u16::from_be_bytes([l4[2], l4[3]]);
            self.ports = Some((src, dst));
        }
    }
}

impl Expr {
    fn matches(&self, h: &Headers) -> bool {
        match self {
            Expr::EtherType(t) => h.ethertype == *t,
            Expr::EtherHost(mac) => h.src == *mac || h.dst == *mac,
            Expr::IpProto(p) => h.ip_proto == Some(*p),
            Expr::Port(proto, port) => {
                proto.is_none_or(|p| h.ip_proto == Some(p))
                    && h.ports.is_some_and(|(s, d)| s == *port || d == *port)
            }
            Expr::Not(e) => !e.matches(h),
            Expr::And(a, b) => a.matches(h) && b.matches(h),
            Expr::Or(a, b) => a.matches(h) || b.matches(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, src_port: u16, dst_port: u16, fragment_offset: u16) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 28, 0, 0];
        ip.extend_from_slice(&fragment_offset.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0, 10, 0, 2, 15, 10, 0, 2, 3]);
        ip.extend_from_slice(&src_port.to_be_bytes());
        ip.extend_from_slice(&dst_port.to_be_bytes());
        ip.extend_from_slice(&[0; 4]);
        eth(ETHERTYPE_IPV4, &ip)
    }

    fn pass(filter: &str, frame: &[u8]) -> bool {
        Filter::parse(filter).unwrap().matches(frame)
    }

    #[test]
    fn ethertypes_and_protocols() {
        let arp = eth(ETHERTYPE_ARP, &[0; 28]);
        let dns = ipv4(PROTO_UDP, 40000, 53, 0);
        let web = ipv4(PROTO_TCP, 80, 50000, 0);
        let ping = ipv4(PROTO_ICMP, 0, 0, 0);
        assert!(pass("arp", &arp) && !pass("arp", &dns));
        assert!(pass("ipv4", &dns) && pass("ip", &web) && !pass("ip", &arp));
        assert!(pass("icmp", &ping) && !pass("icmp", &dns));
        assert!(pass("udp", &dns) && !pass("udp", &web));
        assert!(pass("tcp", &web) && !pass("tcp", &arp));
        assert!(pass("udp port 53", &dns) && !pass("udp port 54", &dns));
        assert!(pass("port 80", &web) && !pass("tcp port 53", &dns));
        assert!(pass("ether proto 0x0806", &arp) && pass("ether proto 2054", &arp));
        assert!(pass("ether host 02:00:00:00:00:01", &arp));
        assert!(pass("", &arp), "an empty filter matches everything");
    }

    #[test]
    fn combinations_and_precedence() {
        let arp = eth(ETHERTYPE_ARP, &[0; 28]);
        let dns = ipv4(PROTO_UDP, 40000, 53, 0);
        let web = ipv4(PROTO_TCP, 80, 50000, 0);
        assert!(pass("udp port 53 or arp", &arp));
        assert!(pass("not arp", &dns) && !pass("!arp", &arp));
        assert!(pass("ip and not udp", &web) && !pass("ip && !udp", &dns));
        // `and` binds tighter than `or`.
        assert!(pass("arp or tcp and port 80", &arp));
        assert!(!pass("(arp or tcp) and port 80", &arp));
        assert!(pass("ARP OR (TCP AND PORT 80)", &web));
    }

    #[test]
    fn later_fragments_have_no_ports_and_short_frames_fail() {
        let tail = ipv4(PROTO_UDP, 53, 53, 185);
        assert!(pass("udp", &tail) && !pass("udp port 53", &tail));
        assert!(!pass("arp", &[0; 10]));
        assert!(pass("", &[0; 10]));
        let mut tagged = vec![0xff; 12];
        tagged.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x06]);
        assert!(pass("arp", &tagged), "one VLAN tag is looked through");
    }

    #[test]
    fn bad_filters_say_why() {
        for (text, why) in [
            ("tcp port", "not a port"),
            ("udp port 70000", "not a port"),
            ("bogus", "unknown word `bogus`"),
            ("(arp", "missing `)`"),
            ("arp or", "ends where"),
            ("arp arp", "unexpected `arp`"),
            ("ether host 1:2:3", "not a MAC"),
            ("ether", "`ether` is followed"),
        ] {
            let message = Filter::parse(text).unwrap_err().to_string();
            assert!(message.contains(why), "{text}: {message}");
        }
        let deep = format!("{}arp{}", "(".repeat(40), ")".repeat(40));
        assert!(
            Filter::parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
        let nots = "not ".repeat(40) + "arp";
        assert!(Filter::parse(&nots).is_err());
        assert!(Filter::parse(&"arp or ".repeat(100)).is_err(), "too long");
    }
}
