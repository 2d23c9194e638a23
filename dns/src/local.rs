//! Names the proxy answers itself: DHCP lease host names under the LAN's domain, their PTR
//! records, and reverse lookups for private addresses (which must not leak upstream).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A host may hold several leases (two VMs booted with the same host name); a few is plenty.
const MAX_ADDRS_PER_HOST: usize = 8;

/// What the local zone says about a question.
#[derive(Debug)]
pub(crate) enum LocalAnswer {
    /// The name is ours: these records (possibly none: NOERROR/NODATA).
    Records(Vec<Record>),
    /// The name is inside a zone we own and does not exist.
    NxDomain,
    /// Not ours: ask upstream.
    NotLocal,
}

#[derive(Debug)]
pub(crate) struct LocalNames {
    /// Lowercased labels of the LAN domain, e.g. `["physics-101", "lan"]`.
    domain: Vec<Vec<u8>>,
    /// `domain` as text, for building PTR targets.
    domain_text: String,
    hosts: HashMap<String, Vec<Ipv4Addr>>,
    by_ip: HashMap<Ipv4Addr, String>,
    max_names: usize,
}

impl LocalNames {
    pub(crate) fn new(domain: &str, max_names: usize) -> Self {
        let domain_text = domain.trim_end_matches('.').to_ascii_lowercase();
        let domain = domain_text
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect();
        Self {
            domain,
            domain_text,
            hosts: HashMap::new(),
            by_ip: HashMap::new(),
            max_names,
        }
    }

    /// Adds `host -> ip` (and the PTR back). Returns false when rejected (bad label, table full).
    pub(crate) fn set(&mut self, host: &str, ip: Ipv4Addr) -> bool {
        if !is_valid_label(host) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.by_ip.get(&ip) {
            Some(old) if *old == host => return true,
            // The address moved to another host (lease reused): forget the old name first.
            Some(old) => {
                let old = old.clone();
                self.remove(&old, ip);
            }
            None => {}
        }
        if self.by_ip.len() >= self.max_names {
            return false;
        }
        let addrs = self.hosts.entry(host.clone()).or_default();
        if addrs.len() >= MAX_ADDRS_PER_HOST {
            // Keep the newest leases; the oldest is the likeliest to be stale.
            let dropped = addrs.remove(0);
            self.by_ip.remove(&dropped);
        }
        addrs.push(ip);
        self.by_ip.insert(ip, host);
        true
    }

    pub(crate) fn remove(&mut self, host: &str, ip: Ipv4Addr) {
        let host = host.to_ascii_lowercase();
        if self.by_ip.get(&ip) == Some(&host) {
            self.by_ip.remove(&ip);
        }
        if let Some(addrs) = self.hosts.get_mut(&host) {
            addrs.retain(|a| *a != ip);
            if addrs.is_empty() {
                self.hosts.remove(&host);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub(crate) fn lookup(&self, qname: &Name, qtype: RecordType, ttl: u32) -> LocalAnswer {
        let labels: Vec<&[u8]> = qname.iter().collect();
        if let Some(answer) = self.reverse(&labels, qname, qtype, ttl) {
            return answer;
        }
        let d = self.domain.len();
        let in_domain = d > 0
            && labels.len() >= d
            && labels[labels.len() - d..]
                .iter()
                .zip(&self.domain)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if in_domain {
            // Our own zone is never forwarded: what we don't know does not exist.
            return match labels.len() - d {
                // The apex exists but holds nothing we serve.
                0 => LocalAnswer::Records(Vec::new()),
                1 => match self.host(labels[0]) {
                    Some(addrs) => LocalAnswer::Records(a_records(qname, qtype, addrs, ttl)),
                    None => LocalAnswer::NxDomain,
                },
                _ => LocalAnswer::NxDomain,
            };
        }
        if labels.len() == 1
            && let Some(addrs) = self.host(labels[0])
        {
            return LocalAnswer::Records(a_records(qname, qtype, addrs, ttl));
        }
        LocalAnswer::NotLocal
    }

    fn host(&self, label: &[u8]) -> Option<&Vec<Ipv4Addr>> {
        let label = std::str::from_utf8(label).ok()?.to_ascii_lowercase();
        self.hosts.get(&label)
    }

    /// `d.c.b.a.in-addr.arpa`: a lease's PTR, or NXDOMAIN for other private addresses.
    /// `None` means the name is not a reverse name we own (forward it).
    fn reverse(
        &self,
        labels: &[&[u8]],
        qname: &Name,
        qtype: RecordType,
        ttl: u32,
    ) -> Option<LocalAnswer> {
        let n = labels.len();
        if n < 3
            || !labels[n - 1].eq_ignore_ascii_case(b"arpa")
            || !labels[n - 2].eq_ignore_ascii_case(b"in-addr")
        {
            return None;
        }
        let octets: Vec<u8> = labels[..n - 2]
            .iter()
            .map(|l| parse_octet(l))
            .collect::<Option<_>>()?;
        // Written least significant first; the network prefix is at the end.
        let prefix: Vec<u8> = octets.iter().rev().copied().collect();
        if prefix.len() < 4 {
            // A partial reverse zone such as `2.0.10.in-addr.arpa`: exists, holds nothing.
            return is_private_prefix(&prefix).then(|| LocalAnswer::Records(Vec::new()));
        }
        if prefix.len() > 4 {
            // Deeper than an address: cannot exist, but keep private space local.
            let ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], prefix[3]);
            return is_private(ip).then_some(LocalAnswer::NxDomain);
        }
        let ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], prefix[3]);
        if let Some(host) = self.by_ip.get(&ip) {
            let mut records = Vec::new();
            if matches!(qtype, RecordType::PTR | RecordType::ANY)
                && let Ok(target) = Name::from_ascii(format!("{host}.{}.", self.domain_text))
            {
                records.push(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::PTR(PTR(target)),
                ));
            }
            return Some(LocalAnswer::Records(records));
        }
        is_private(ip).then_some(LocalAnswer::NxDomain)
    }
}

fn a_records(qname: &Name, qtype: RecordType, addrs: &[Ipv4Addr], ttl: u32) -> Vec<Record> {
    if !matches!(qtype, RecordType::A | RecordType::ANY) {
        // The name exists (NOERROR) but we only hold IPv4 addresses.
        return Vec::new();
    }
    addrs
        .iter()
        .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::A(A(*ip))))
        .collect()
}

/// Strict decimal octet: no sign, no leading zeros, at most 255.
fn parse_octet(label: &[u8]) -> Option<u8> {
    if label.is_empty()
        || label.len() > 3
        || (label.len() > 1 && label[0] == b'0')
        || !label.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(label).ok()?.parse().ok()
}

/// Address space that never has meaningful public reverse data.
fn is_private(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || ip.is_link_local() || (a == 100 && (64..=127).contains(&b))
}

/// True when every address starting with `prefix` (1 to 3 octets) is private.
fn is_private_prefix(prefix: &[u8]) -> bool {
    match prefix {
        [10, ..] => true,
        [172, b, ..] => (16..=31).contains(b),
        [192, 168, ..] | [169, 254, ..] => true,
        [100, b, ..] => (64..=127).contains(b),
        _ => false,
    }
}

/// A DNS label we are willing to publish (letters, digits, hyphen; 1..=63 bytes).
pub(crate) fn is_valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}
