//! Leases, lease events and the persisted lease snapshot.

use std::net::Ipv4Addr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use smoltcp::wire::EthernetAddress;

use crate::config::mac_string;

/// Longest client identifier (option 61) we accept; one option's worth (RFC 2132 9.14).
pub const MAX_CLIENT_ID_LEN: usize = 255;

/// What a lease is keyed by: the client identifier (option 61) when the client sends one,
/// else its hardware address (chaddr). Keying by client id lets VMs that share a MAC (tabs
/// restored from one saved state) still get distinct addresses if they send distinct ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKey {
    /// Option 61 bytes, hex in JSON.
    ClientId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// chaddr, `"52:54:00:12:34:56"` in JSON.
    Mac(#[serde(with = "mac_string")] EthernetAddress),
}

/// A bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Hardware address the client is reached at (the frame's source MAC).
    pub mac: EthernetAddress,
    /// Option 61, if the client sent one.
    pub client_id: Option<Vec<u8>>,
    /// Sanitized DNS label: the static lease's name, else the client's option 12.
    pub host_name: Option<String>,
    pub expires: Instant,
    /// From [`crate::StaticLease`]: the address stays reserved for the MAC after expiry.
    pub is_static: bool,
    /// chaddr of the message that bound the lease; the key when there is no client id.
    pub chaddr: EthernetAddress,
}

impl Lease {
    /// The key this lease is stored under.
    pub fn key(&self) -> ClientKey {
        match &self.client_id {
            Some(id) => ClientKey::ClientId(id.clone()),
            None => ClientKey::Mac(self.chaddr),
        }
    }
}

/// Something the driver may want to act on: DNS names and metrics follow leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease was created, or its address, MAC or host name changed. Not sent for plain
    /// renewals.
    Bound {
        mac: EthernetAddress,
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    /// The client released the lease, or it moved to another address.
    Released {
        mac: EthernetAddress,
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    /// The lease ran out without renewal.
    Expired {
        mac: EthernetAddress,
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    /// The client found the address in use (DHCPDECLINE); it is quarantined.
    Declined { mac: EthernetAddress, ip: Ipv4Addr },
    /// A DISCOVER found no free address; no OFFER was sent.
    PoolExhausted { mac: EthernetAddress },
}

/// Leases in a form that survives a relay restart (JSON-friendly, absolute unix times).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSnapshot {
    pub leases: Vec<LeaseRecord>,
    /// Last address per client, so returning clients get it back after a restart too.
    #[serde(default)]
    pub last_addresses: Vec<LastAddressRecord>,
}

/// One lease in a [`LeaseSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    pub ip: Ipv4Addr,
    #[serde(with = "mac_string")]
    pub mac: EthernetAddress,
    #[serde(with = "mac_string")]
    pub chaddr: EthernetAddress,
    #[serde(default, with = "opt_hex_bytes")]
    pub client_id: Option<Vec<u8>>,
    #[serde(default)]
    pub host_name: Option<String>,
    /// Expiry as seconds since the unix epoch.
    pub expires_unix_secs: u64,
}

/// One remembered client address in a [`LeaseSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastAddressRecord {
    pub key: ClientKey,
    pub ip: Ipv4Addr,
}

/// What [`crate::DhcpServer::restore`] did with a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreReport {
    pub restored: usize,
    pub expired: usize,
    /// Not valid under the current config, or conflicting with a lease already held.
    pub rejected: usize,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).ok_or_else(|| D::Error::custom("bad hex string"))
    }
}

mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_some(&super::hex_bytes::encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                super::hex_bytes::decode(&text).ok_or_else(|| D::Error::custom("bad hex string"))
            })
            .transpose()
    }
}
