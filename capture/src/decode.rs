//! One line per frame, as a person reads it (the demo page's "Packets" panel):
//!
//! ```text
//! vm-a -> vm-b            ICMP echo request id=3 seq=1
//! gateway -> vm-b         DHCP OFFER 10.0.2.16 to vm-b
//! vm-a:40112 -> dns:53    DNS A? www.example.test
//! vm-a -> broadcast       ARP who-has 10.0.2.16? tell 10.0.2.15
//! vm-a:51234 -> 198.18.0.2:8080  TCP SYN
//! ```
//!
//! The [`Decoder`] keeps names: those the relay gives it (leases, the gateway and DNS
//! addresses) and those it learns from the frames themselves (a DHCP client's host name
//! option names its MAC, an ACK names the address it hands out, an ARP sender's address
//! takes its MAC's name), so a line names machines even when the capture started before
//! their leases. Frames are hostile input: every read is bounds-checked, names from the wire
//! are kept only when short and plain, and the name tables are bounded.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// Names kept per table; a LAN has at most a few hundred machines, so more is abuse.
const MAX_NAMES: usize = 4096;
/// Longest name kept (DHCP host names are short; DNS names are cut here too).
const MAX_NAME: usize = 63;
/// Compression pointers followed in one DNS name before giving up (loops).
const MAX_POINTERS: usize = 16;

/// What kind of frame a line describes (the page colours lines by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Arp,
    Dhcp,
    Dns,
    Icmp,
    Tcp,
    Udp,
    Ipv6,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Arp => "arp",
            Kind::Dhcp => "dhcp",
            Kind::Dns => "dns",
            Kind::Icmp => "icmp",
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Ipv6 => "ipv6",
            Kind::Other => "other",
        }
    }
}

/// One decoded frame: who sent it, to whom, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub kind: Kind,
    pub src: String,
    pub dst: String,
    pub summary: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}  {}", self.src, self.dst, self.summary)
    }
}

/// A decoded layer: its kind, its ends when the layer names them (else the Ethernet
/// ends), and its summary.
type Part = (Kind, Option<(String, String)>, String);

/// Turns frames into [`Line`]s, naming machines as it learns who they are.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    macs: HashMap<[u8; 6], String>,
    ips: HashMap<Ipv4Addr, String>,
}

/// A bounds-checked view of a byte slice (never panics on short input).
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_be_bytes(self.0.get(at..at + 2)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }
    fn ip(&self, at: usize) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(self.u32(at)?))
    }
    fn mac(&self, at: usize) -> Option<[u8; 6]> {
        self.0.get(at..at + 6)?.try_into().ok()
    }
    fn from(&self, at: usize) -> Option<&'a [u8]> {
        self.0.get(at..)
    }
}

/// `02:00:00:00:00:0a`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// A name from the wire, if it is short and plain (letters, digits, `-`, `_`, `.`).
fn plain(name: &[u8]) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    ok.then(|| String::from_utf8_lossy(name).into_owned())
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names a MAC (a lease's host name, `gateway`); later names replace earlier ones.
    pub fn name_mac(&mut self, mac: [u8; 6], name: &str) {
        if self.macs.len() < MAX_NAMES || self.macs.contains_key(&mac) {
            self.macs.insert(mac, name.to_owned());
        }
    }

    /// Names an address (a lease's host name, `gateway`, `dns`).
    pub fn name_ip(&mut self, ip: Ipv4Addr, name: &str) {
        if self.ips.len() < MAX_NAMES || self.ips.contains_key(&ip) {
            self.ips.insert(ip, name.to_owned());
        }
    }

    fn mac_name(&self, mac: &[u8; 6]) -> String {
        if let Some(name) = self.macs.get(mac) {
            name.clone()
        } else if *mac == [0xff; 6] {
            "broadcast".to_owned()
        } else if mac[0] & 1 == 1 {
            "multicast".to_owned()
        } else {
            mac_text(mac)
        }
    }

    /// An address's name; for 0.0.0.0 and broadcasts (DHCP), the Ethernet end's name.
    fn ip_name(&self, ip: Ipv4Addr, mac: &[u8; 6]) -> String {
        if let Some(name) = self.ips.get(&ip) {
            name.clone()
        } else if ip.is_unspecified() || ip.is_broadcast() {
            self.mac_name(mac)
        } else {
            ip.to_string()
        }
    }

    /// Names the address after the MAC, when the MAC has a name and the address has none.
    fn learn_ip(&mut self, ip: Ipv4Addr, mac: &[u8; 6]) {
        if ip.is_unspecified() || ip.is_broadcast() || self.ips.contains_key(&ip) {
            return;
        }
        if let Some(name) = self.macs.get(mac).cloned() {
            self.name_ip(ip, &name);
        }
    }

    /// One line for one Ethernet frame (malformed frames get a line saying so).
    pub fn decode(&mut self, frame: &[u8]) -> Line {
        let f = Bytes(frame);
        let (Some(dst), Some(src), Some(mut ethertype)) = (f.mac(0), f.mac(6), f.u16(12)) else {
            return Line {
                kind: Kind::Other,
                src: "?".into(),
                dst: "?".into(),
                summary: format!("runt frame, {} bytes", frame.len()),
            };
        };
        let mut payload = f.from(14).unwrap_or_default();
        if ethertype == ETHERTYPE_VLAN {
            let tag = Bytes(payload);
            ethertype = tag.u16(2).unwrap_or(0);
            payload = tag.from(4).unwrap_or_default();
        }
        let decoded = match ethertype {
            ETHERTYPE_ARP => self.arp(payload),
            ETHERTYPE_IPV4 => self.ipv4(payload, &src, &dst),
            ETHERTYPE_IPV6 => Some(ipv6(payload)),
            _ => None,
        };
        let (kind, ends, summary) = decoded.unwrap_or_else(|| {
            let what = match ethertype {
                ETHERTYPE_ARP => "malformed ARP".to_owned(),
                ETHERTYPE_IPV4 => "malformed IPv4".to_owned(),
                n if n <= 1500 => "802.3 frame".to_owned(),
                n => format!("EtherType 0x{n:04x}"),
            };
            (Kind::Other, None, format!("{what}, {} bytes", frame.len()))
        });
        let (src, dst) = ends.unwrap_or_else(|| (self.mac_name(&src), self.mac_name(&dst)));
        Line {
            kind,
            src,
            dst,
            summary,
        }
    }

    fn arp(&mut self, arp: &[u8]) -> Option<Part> {
        let a = Bytes(arp);
        // Ethernet and IPv4 only (htype 1, ptype 0x0800, hlen 6, plen 4).
        if a.u16(0)? != 1 || a.u16(2)? != ETHERTYPE_IPV4 || a.u8(4)? != 6 || a.u8(5)? != 4 {
            return None;
        }
        let (op, sha, spa, tpa) = (a.u16(6)?, a.mac(8)?, a.ip(14)?, a.ip(24)?);
        self.learn_ip(spa, &sha);
        let summary = match op {
            1 if spa == tpa => format!("ARP announce {spa}"),
            1 if spa.is_unspecified() => format!("ARP probe {tpa}?"),
            1 => format!("ARP who-has {tpa}? tell {spa}"),
            2 => format!("ARP {spa} is-at {}", mac_text(&sha)),
            op => format!("ARP op {op}"),
        };
        Some((Kind::Arp, None, summary))
    }

    fn ipv4(&mut self, ip: &[u8], src_mac: &[u8; 6], dst_mac: &[u8; 6]) -> Option<Part> {
        let h = Bytes(ip);
        let version_ihl = h.u8(0)?;
        let header = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header < 20 || ip.len() < header {
            return None;
        }
        let total = usize::from(h.u16(2)?).clamp(header, ip.len());
        let (fragment, proto, src, dst) = (h.u16(6)? & 0x1fff, h.u8(9)?, h.ip(12)?, h.ip(16)?);
        let body = ip.get(header..total)?;
        let (from, to) = (self.ip_name(src, src_mac), self.ip_name(dst, dst_mac));
        if fragment != 0 {
            let summary = format!("IPv4 fragment at {} of proto {proto}", fragment * 8);
            return Some((Kind::Other, Some((from, to)), summary));
        }
        let at = |name: &str, port: u16| format!("{name}:{port}");
        let b = Bytes(body);
        match proto {
            1 => Some((Kind::Icmp, Some((from, to)), icmp(body))),
            6 => {
                let (sport, dport, flags) = (b.u16(0)?, b.u16(2)?, b.u8(13)?);
                let offset = usize::from(b.u8(12)? >> 4) * 4;
                let len = body.len().saturating_sub(offset);
                let ends = (at(&from, sport), at(&to, dport));
                Some((Kind::Tcp, Some(ends), tcp(flags, len)))
            }
            17 => {
                let (sport, dport) = (b.u16(0)?, b.u16(2)?);
                let data = b.from(8)?;
                if matches!((sport, dport), (67, 68) | (68, 67)) {
                    let summary = self
                        .dhcp(data, src_mac)
                        .unwrap_or_else(|| format!("DHCP (malformed), {} bytes", data.len()));
                    // Names learnt from this message name its ends too.
                    let ends = (self.ip_name(src, src_mac), self.ip_name(dst, dst_mac));
                    return Some((Kind::Dhcp, Some(ends), summary));
                }
                let ends = (at(&from, sport), at(&to, dport));
                if sport == 53 || dport == 53 {
                    let summary = dns(data)
                        .unwrap_or_else(|| format!("DNS (malformed), {} bytes", data.len()));
                    return Some((Kind::Dns, Some(ends), summary));
                }
                Some((Kind::Udp, Some(ends), format!("UDP {} bytes", data.len())))
            }
            proto => Some((
                Kind::Other,
                Some((from, to)),
                format!("IPv4 proto {proto}, {} bytes", body.len()),
            )),
        }
    }

    /// A DHCP message: learns the client's name (option 12) and its address (ACK).
    fn dhcp(&mut self, bootp: &[u8], src_mac: &[u8; 6]) -> Option<String> {
        let b = Bytes(bootp);
        let (yiaddr, chaddr) = (b.ip(16)?, b.mac(28)?);
        if b.u32(236)? != 0x6382_5363 {
            return None;
        }
        let (mut kind, mut requested, mut host) = (0u8, None, None);
        let mut at = 240;
        while let Some(code) = b.u8(at) {
            match code {
                0 => at += 1,
                255 => break,
                _ => {
                    let len = usize::from(b.u8(at + 1)?);
                    let value = bootp.get(at + 2..at + 2 + len)?;
                    match (code, value) {
                        (53, [k]) => kind = *k,
                        (50, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                        (12, name) => host = plain(name),
                        _ => {}
                    }
                    at += 2 + len;
                }
            }
        }
        // A client's host name names its MAC (and the frame's sender, the same machine).
        if let Some(host) = &host
            && matches!(kind, 1 | 3 | 8)
        {
            self.name_mac(chaddr, host);
            if chaddr != *src_mac {
                self.name_mac(*src_mac, host);
            }
        }
        let client = self.mac_name(&chaddr);
        let line = match kind {
            1 => format!("DHCP DISCOVER from {client}"),
            2 => format!("DHCP OFFER {yiaddr} to {client}"),
            3 => match requested {
                Some(ip) => format!("DHCP REQUEST {ip} for {client}"),
                None => format!("DHCP REQUEST (renew) from {client}"),
            },
            4 => format!("DHCP DECLINE from {client}"),
            5 => {
                self.learn_ip(yiaddr, &chaddr);
                format!("DHCP ACK {yiaddr} to {client}")
            }
            6 => format!("DHCP NAK to {client}"),
            7 => format!("DHCP RELEASE from {client}"),
            8 => format!("DHCP INFORM from {client}"),
            k => format!("DHCP message type {k}"),
        };
        Some(line)
    }
}

fn icmp(body: &[u8]) -> String {
    let b = Bytes(body);
    let (Some(kind), Some(code)) = (b.u8(0), b.u8(1)) else {
        return "ICMP (truncated)".to_owned();
    };
    let echo = |what: &str| match (b.u16(4), b.u16(6)) {
        (Some(id), Some(seq)) => format!("ICMP echo {what} id={id} seq={seq}"),
        _ => format!("ICMP echo {what}"),
    };
    match (kind, code) {
        (8, _) => echo("request"),
        (0, _) => echo("reply"),
        (3, code) => {
            let why = match code {
                0 => "net unreachable",
                1 => "host unreachable",
                3 => "port unreachable",
                4 => "fragmentation needed",
                13 => "administratively prohibited",
                _ => "unreachable",
            };
            format!("ICMP destination unreachable ({why})")
        }
        (11, _) => "ICMP time exceeded".to_owned(),
        (kind, code) => format!("ICMP type {kind} code {code}"),
    }
}

fn tcp(flags: u8, len: usize) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    let flags = if set.is_empty() {
        "(no flags)".to_owned()
    } else {
        set.join("-")
    };
    match len {
        0 => format!("TCP {flags}"),
        len => format!("TCP {flags} {len} bytes"),
    }
}

fn ipv6(ip: &[u8]) -> Part {
    let h = Bytes(ip);
    let summary = match (h.u8(6), ip.get(8..24), ip.get(24..40)) {
        (Some(next), Some(src), Some(dst)) => {
            let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(src).unwrap_or_default());
            let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(dst).unwrap_or_default());
            let what = match next {
                58 => match h.u8(40) {
                    Some(133) => "ICMPv6 router solicitation".to_owned(),
                    Some(134) => "ICMPv6 router advertisement".to_owned(),
                    Some(135) => "ICMPv6 neighbor solicitation".to_owned(),
                    Some(136) => "ICMPv6 neighbor advertisement".to_owned(),
                    Some(143) => "ICMPv6 multicast listener report".to_owned(),
                    Some(t) => format!("ICMPv6 type {t}"),
                    None => "ICMPv6".to_owned(),
                },
                6 => "TCP".to_owned(),
                17 => "UDP".to_owned(),
                n => format!("next header {n}"),
            };
            format!("IPv6 {src} > {dst} {what}")
        }
        _ => "IPv6 (truncated)".to_owned(),
    };
    (Kind::Ipv6, None, summary)
}

/// A DNS name at `at` (following compression pointers); the name and where the field ends.
fn dns_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let m = Bytes(msg);
    let (mut name, mut end, mut jumps) = (String::new(), None, 0);
    loop {
        let len = m.u8(at)?;
        match len {
            0 => break,
            l if l & 0xc0 == 0xc0 => {
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return None;
                }
                end.get_or_insert(at + 2);
                at = usize::from(m.u16(at)? & 0x3fff);
            }
            l if l & 0xc0 != 0 => return None,
            l => {
                let label = msg.get(at + 1..at + 1 + usize::from(l))?;
                if name.len() <= MAX_NAME {
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&plain(label).unwrap_or_else(|| "?".into()));
                }
                at += 1 + usize::from(l);
            }
        }
    }
    if name.is_empty() {
        name.push('.');
    }
    if name.len() > MAX_NAME {
        name.truncate(MAX_NAME);
        name.push_str("...");
    }
    Some((name, end.unwrap_or(at + 1)))
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        t => format!("TYPE{t}"),
    }
}

/// `DNS A? www.example.test`, or for an answer `DNS A www.example.test is 10.0.2.16`.
fn dns(msg: &[u8]) -> Option<String> {
    let m = Bytes(msg);
    let (flags, questions, answers) = (m.u16(2)?, m.u16(4)?, m.u16(6)?);
    if questions == 0 {
        return Some("DNS (no question)".into());
    }
    let (qname, at) = dns_name(msg, 12)?;
    let qtype = qtype_name(m.u16(at)?);
    if flags & 0x8000 == 0 {
        return Some(format!("DNS {qtype}? {qname}"));
    }
    let rcode = match flags & 0x000f {
        0 => None,
        1 => Some("FORMERR"),
        2 => Some("SERVFAIL"),
        3 => Some("NXDOMAIN"),
        4 => Some("NOTIMP"),
        5 => Some("REFUSED"),
        _ => Some("error"),
    };
    if let Some(rcode) = rcode {
        return Some(format!("DNS {qtype} {qname}: {rcode}"));
    }
    // The answers that say something: addresses and aliases, in order, at most four.
    let mut said = Vec::new();
    let mut at = at + 4;
    for _ in 0..answers.min(16) {
        let (_, after) = dns_name(msg, at)?;
        let (rtype, rdlen) = (m.u16(after)?, usize::from(m.u16(after + 8)?));
        let data = msg.get(after + 10..after + 10 + rdlen)?;
        match (rtype, data) {
            (1, [a, b, c, d]) => said.push(Ipv4Addr::new(*a, *b, *c, *d).to_string()),
            (28, d) if d.len() == 16 => {
                let v6 = <[u8; 16]>::try_from(d).unwrap_or_default();
                said.push(std::net::Ipv6Addr::from(v6).to_string());
            }
            (5 | 12, _) => said.push(dns_name(msg, after + 10)?.0),
            _ => {}
        }
        at = after + 10 + rdlen;
        if said.len() == 4 {
            break;
        }
    }
    Some(match said.is_empty() {
        true => format!("DNS {qtype} {qname}: no answer"),
        false => format!("DNS {qtype} {qname} is {}", said.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const VM_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const GW: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        [&dst[..], &src, &ethertype.to_be_bytes(), payload].concat()
    }

    /// An IPv4 header (no checksum: the decoder does not check it) and its payload.
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        [&h[..], &src, &dst, payload].concat()
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let len = (8 + data.len()) as u16;
        [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &len.to_be_bytes(),
            &[0, 0],
            data,
        ]
        .concat()
    }

    fn decoder() -> Decoder {
        let mut d = Decoder::new();
        d.name_mac(GW, "gateway");
        d.name_ip(Ipv4Addr::new(10, 0, 2, 2), "gateway");
        d.name_ip(Ipv4Addr::new(10, 0, 2, 3), "dns");
        d
    }

    /// A BOOTP message from `chaddr` with `options` after the magic cookie.
    fn bootp(op: u8, yiaddr: [u8; 4], chaddr: [u8; 6], options: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 240];
        m[0] = op;
        m[1] = 1;
        m[2] = 6;
        m[16..20].copy_from_slice(&yiaddr);
        m[28..34].copy_from_slice(&chaddr);
        m[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        m.extend_from_slice(options);
        m.push(255);
        m
    }

    #[test]
    fn a_dhcp_handshake_names_the_client() {
        let mut d = decoder();
        let any = [0, 0, 0, 0];
        let all = [255, 255, 255, 255];
        let host = [&[53, 1, 1, 12, 4][..], b"vm-b"].concat();
        let discover = udp(68, 67, &bootp(1, any, VM_B, &host));
        let frame = eth([0xff; 6], VM_B, 0x0800, &ipv4(17, any, all, &discover));
        assert_eq!(
            d.decode(&frame).to_string(),
            "vm-b -> broadcast  DHCP DISCOVER from vm-b"
        );
        let offer = udp(67, 68, &bootp(2, [10, 0, 2, 16], VM_B, &[53, 1, 2]));
        let frame = eth(VM_B, GW, 0x0800, &ipv4(17, [10, 0, 2, 2], all, &offer));
        let line = d.decode(&frame);
        assert_eq!(line.kind, Kind::Dhcp);
        assert_eq!(
            line.to_string(),
            "gateway -> vm-b  DHCP OFFER 10.0.2.16 to vm-b"
        );
        let request = [&[53, 1, 3, 50, 4, 10, 0, 2, 16, 12, 4][..], b"vm-b"].concat();
        let request = udp(68, 67, &bootp(1, any, VM_B, &request));
        let frame = eth([0xff; 6], VM_B, 0x0800, &ipv4(17, any, all, &request));
        assert_eq!(d.decode(&frame).summary, "DHCP REQUEST 10.0.2.16 for vm-b");
        let ack = udp(67, 68, &bootp(2, [10, 0, 2, 16], VM_B, &[53, 1, 5]));
        let frame = eth(VM_B, GW, 0x0800, &ipv4(17, [10, 0, 2, 2], all, &ack));
        assert_eq!(d.decode(&frame).summary, "DHCP ACK 10.0.2.16 to vm-b");
        // The ACK named the address: the next ping from it says vm-b.
        let ping = [8, 0, 0, 0, 0, 3, 0, 1, 0xaa, 0xbb];
        let frame = eth(
            GW,
            VM_B,
            0x0800,
            &ipv4(1, [10, 0, 2, 16], [10, 0, 2, 2], &ping),
        );
        assert_eq!(
            d.decode(&frame).to_string(),
            "vm-b -> gateway  ICMP echo request id=3 seq=1"
        );
    }

    #[test]
    fn arp_names_the_sender_address_after_its_mac() {
        let mut d = decoder();
        d.name_mac(VM_A, "vm-a");
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&VM_A);
        arp.extend_from_slice(&[10, 0, 2, 15]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 0, 2, 16]);
        let line = d.decode(&eth([0xff; 6], VM_A, 0x0806, &arp));
        assert_eq!(
            line.to_string(),
            "vm-a -> broadcast  ARP who-has 10.0.2.16? tell 10.0.2.15"
        );
        arp[7] = 2;
        assert_eq!(
            d.decode(&eth(VM_B, VM_A, 0x0806, &arp)).summary,
            "ARP 10.0.2.15 is-at 02:00:00:00:00:0a"
        );
        let reply = [0, 0, 0, 0, 0, 3, 0, 1];
        let frame = eth(
            VM_B,
            VM_A,
            0x0800,
            &ipv4(1, [10, 0, 2, 15], [10, 0, 2, 16], &reply),
        );
        assert_eq!(
            d.decode(&frame).to_string(),
            "vm-a -> 10.0.2.16  ICMP echo reply id=3 seq=1"
        );
    }

    /// `www.example.test` A query with id 0x1234, as dig sends it.
    fn dns_query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["www", "example", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn dns_questions_and_answers() {
        let mut d = decoder();
        d.name_ip(Ipv4Addr::new(10, 0, 2, 15), "vm-a");
        let q = udp(40112, 53, &dns_query());
        let frame = eth(
            GW,
            VM_A,
            0x0800,
            &ipv4(17, [10, 0, 2, 15], [10, 0, 2, 3], &q),
        );
        let line = d.decode(&frame);
        assert_eq!(line.kind, Kind::Dns);
        assert_eq!(
            line.to_string(),
            "vm-a:40112 -> dns:53  DNS A? www.example.test"
        );
        // The answer: a pointer to the question's name, then 93.184.216.34, and a CNAME.
        let mut r = dns_query();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 2;
        r.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 16]);
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 216, 34]);
        let a = udp(53, 40112, &r);
        let frame = eth(
            VM_A,
            GW,
            0x0800,
            &ipv4(17, [10, 0, 2, 3], [10, 0, 2, 15], &a),
        );
        assert_eq!(
            d.decode(&frame).summary,
            "DNS A www.example.test is example.test, 93.184.216.34"
        );
        let mut nx = dns_query();
        nx[2] = 0x81;
        nx[3] = 0x83;
        let frame = eth(
            VM_A,
            GW,
            0x0800,
            &ipv4(17, [10, 0, 2, 3], [10, 0, 2, 15], &udp(53, 1, &nx)),
        );
        assert_eq!(d.decode(&frame).summary, "DNS A www.example.test: NXDOMAIN");
        // A pointer loop is malformed, not a hang.
        let mut looped = dns_query();
        looped.truncate(12);
        looped.extend_from_slice(&[0xc0, 12]);
        let frame = eth(
            VM_A,
            GW,
            0x0800,
            &ipv4(17, [10, 0, 2, 3], [10, 0, 2, 15], &udp(53, 1, &looped)),
        );
        assert_eq!(d.decode(&frame).summary, "DNS (malformed), 14 bytes");
    }

    #[test]
    fn tcp_flags_and_lengths() {
        let mut d = decoder();
        let mut seg = vec![
            0xc8, 0x30, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        seg.extend_from_slice(&[0; 4]);
        let frame = eth(
            GW,
            VM_A,
            0x0800,
            &ipv4(6, [10, 0, 2, 15], [198, 18, 0, 2], &seg),
        );
        let line = d.decode(&frame);
        assert_eq!(line.kind, Kind::Tcp);
        assert_eq!(
            line.to_string(),
            "10.0.2.15:51248 -> 198.18.0.2:8080  TCP SYN"
        );
        seg[13] = 0x12;
        let frame = eth(
            GW,
            VM_A,
            0x0800,
            &ipv4(6, [10, 0, 2, 15], [198, 18, 0, 2], &seg),
        );
        assert_eq!(d.decode(&frame).summary, "TCP SYN-ACK");
        seg[13] = 0x18;
        seg.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let frame = eth(
            GW,
            VM_A,
            0x0800,
            &ipv4(6, [10, 0, 2, 15], [198, 18, 0, 2], &seg),
        );
        assert_eq!(d.decode(&frame).summary, "TCP PSH-ACK 16 bytes");
    }

    #[test]
    fn other_frames_say_what_they_are() {
        let mut d = decoder();
        assert_eq!(d.decode(&[1, 2, 3]).summary, "runt frame, 3 bytes");
        let lldp = eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], VM_A, 0x88cc, &[0; 46]);
        assert_eq!(
            d.decode(&lldp).to_string(),
            "02:00:00:00:00:0a -> multicast  EtherType 0x88cc, 60 bytes"
        );
        let short_ip = eth(GW, VM_A, 0x0800, &[0x45, 0]);
        assert_eq!(d.decode(&short_ip).summary, "malformed IPv4, 16 bytes");
        let mut v6 = vec![0x60, 0, 0, 0, 0, 24, 58, 255];
        v6.extend_from_slice(&[0; 32]);
        v6.push(135);
        let line = d.decode(&eth([0x33, 0x33, 0, 0, 0, 1], VM_A, 0x86dd, &v6));
        assert_eq!(line.summary, "IPv6 :: > :: ICMPv6 neighbor solicitation");
        let mut vlan = vec![0, 5, 0x08, 0x06];
        vlan.extend_from_slice(&[0; 4]);
        assert_eq!(
            d.decode(&eth([0xff; 6], VM_A, 0x8100, &vlan)).summary,
            "malformed ARP, 22 bytes"
        );
    }

    /// Every truncation and many byte flips of the fixtures decode without a panic (the
    /// fuzz target `capture_decode` does this at length).
    #[test]
    fn cut_and_flipped_frames_never_panic() {
        let mut d = decoder();
        let any = [0, 0, 0, 0];
        let fixtures = [
            eth(
                [0xff; 6],
                VM_B,
                0x0800,
                &ipv4(
                    17,
                    any,
                    [255; 4],
                    &udp(68, 67, &bootp(1, any, VM_B, &[53, 1, 1, 12, 2, b'a', b'b'])),
                ),
            ),
            eth(
                VM_A,
                GW,
                0x0800,
                &ipv4(17, [10, 0, 2, 3], [10, 0, 2, 15], &udp(53, 9, &dns_query())),
            ),
            eth(
                GW,
                VM_A,
                0x0800,
                &ipv4(6, [10, 0, 2, 15], [1, 2, 3, 4], &[0; 20]),
            ),
        ];
        let mut x = 0x2545_f491u32;
        for frame in &fixtures {
            for cut in 0..=frame.len() {
                d.decode(&frame[..cut]);
            }
            for _ in 0..2000 {
                let mut f = frame.clone();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let at = x as usize % f.len();
                    f[at] = (x >> 8) as u8;
                }
                assert!(d.decode(&f).to_string().len() < 1024);
            }
        }
    }

    #[test]
    fn names_from_the_wire_are_plain_and_bounded() {
        let mut d = decoder();
        let any = [0, 0, 0, 0];
        let all = [255, 255, 255, 255];
        let evil = [&[53, 1, 1, 12, 9][..], b"<script>x"].concat();
        let discover = udp(68, 67, &bootp(1, any, VM_B, &evil));
        let frame = eth([0xff; 6], VM_B, 0x0800, &ipv4(17, any, all, &discover));
        assert_eq!(
            d.decode(&frame).summary,
            "DHCP DISCOVER from 02:00:00:00:00:0b"
        );
        for n in 0..(MAX_NAMES as u32 + 10) {
            d.name_ip(Ipv4Addr::from(n), "x");
        }
        assert_eq!(d.ips.len(), MAX_NAMES);
    }
}
