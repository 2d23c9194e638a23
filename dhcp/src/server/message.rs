//! Decoding requests and reading the options the server acts on.

use std::net::Ipv4Addr;

use dhcproto::Decodable;
use dhcproto::v4::{self, DhcpOption, HType, Message, Opcode, OptionCode};
use smoltcp::wire::EthernetAddress;

use super::DhcpError;
use crate::hostname;
use crate::lease::{ClientKey, MAX_CLIENT_ID_LEN};

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
const MIN_MESSAGE_LEN: usize = 240;

/// The sender of a message, validated.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) chaddr: EthernetAddress,
    /// Where unicast replies go and what the lease records: the frame's source MAC, which
    /// is what the gateway sees on the wire even if the driver rewrote MACs.
    pub(super) mac: EthernetAddress,
    pub(super) client_id: Option<Vec<u8>>,
    pub(super) key: ClientKey,
    /// Option 12, sanitized.
    pub(super) host_name: Option<String>,
}

/// Decode and sanity-check the fixed part; dhcproto checks neither the cookie nor hlen.
pub(super) fn parse(payload: &[u8]) -> Result<Message, DhcpError> {
    if payload.len() < MIN_MESSAGE_LEN {
        return Err(DhcpError::Truncated(payload.len()));
    }
    if payload.get(236..240) != Some(&v4::MAGIC[..]) {
        return Err(DhcpError::BadMagicCookie);
    }
    let message = Message::from_bytes(&keep_used_options(payload))?;
    if message.opcode() != Opcode::BootRequest {
        return Err(DhcpError::NotRequest);
    }
    Ok(message)
}

/// Options the server reads; everything else is dropped before decoding.
const USED_OPTIONS: [u8; 5] = [
    12, // host name
    50, // requested IP address
    53, // message type
    54, // server identifier
    61, // client identifier
];

/// Copy of `payload` whose options region holds only [`USED_OPTIONS`].
///
/// dhcproto 0.15 panics on some malformed options in debug builds (`debug_assert!` on the
/// length of options 80, 81, 94, 152-155 and `len - 1` underflow in option 151), which
/// cargo-fuzz and our random test found. Feeding it only the options we use removes those
/// paths and skips decoding what we would ignore anyway. This walks the TLV framing only;
/// values are still decoded by dhcproto. Like dhcproto, a truncated option ends the list.
fn keep_used_options(payload: &[u8]) -> Vec<u8> {
    let (fixed, mut rest) = payload.split_at(payload.len().min(MIN_MESSAGE_LEN));
    let mut kept = Vec::with_capacity(payload.len());
    kept.extend_from_slice(fixed);
    while let Some((&code, after_code)) = rest.split_first() {
        match code {
            0 => rest = after_code,
            255 => break,
            _ => {
                let Some((&len, after_len)) = after_code.split_first() else {
                    break;
                };
                let Some((value, after_value)) = after_len.split_at_checked(usize::from(len))
                else {
                    break;
                };
                if USED_OPTIONS.contains(&code) {
                    kept.extend_from_slice(&[code, len]);
                    kept.extend_from_slice(value);
                }
                rest = after_value;
            }
        }
    }
    kept.push(255);
    kept
}

pub(super) fn client_of(
    message: &Message,
    frame_src: EthernetAddress,
) -> Result<Client, DhcpError> {
    // Check hlen before `chaddr()`, which slices by it.
    let hlen = message.hlen();
    let bad_hardware = || DhcpError::HardwareAddress {
        htype: message.htype().into(),
        hlen,
    };
    if message.htype() != HType::Eth || hlen != 6 {
        return Err(bad_hardware());
    }
    let chaddr = <[u8; 6]>::try_from(message.chaddr())
        .map(EthernetAddress)
        .map_err(|_| bad_hardware())?;
    if !chaddr.is_unicast() {
        return Err(bad_hardware());
    }
    let client_id = match message.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) if id.len() > MAX_CLIENT_ID_LEN => {
            return Err(DhcpError::ClientIdTooLong);
        }
        Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => Some(id.clone()),
        _ => None,
    };
    let key = match &client_id {
        Some(id) => ClientKey::ClientId(id.clone()),
        None => ClientKey::Mac(chaddr),
    };
    let host_name = match message.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) => hostname::sanitize(name),
        _ => None,
    };
    Ok(Client {
        chaddr,
        mac: if frame_src.is_unicast() {
            frame_src
        } else {
            chaddr
        },
        client_id,
        key,
        host_name,
    })
}

pub(super) fn requested_ip(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

pub(super) fn server_identifier(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}
