//! Wisp packets as zero-copy views over one WebSocket binary message, and their encoding.
//!
//! Every packet is `u8 type | u32 stream id (LE) | payload`; all integers are little-endian.
//! [`Frame`] is the header view (it fails only when the message is shorter than 5 bytes), and
//! [`Packet`] adds the typed payload. The session parses in those two steps so that a bad
//! CONNECT payload can still be answered with a CLOSE on the stream it names.
//!
//! Parsing is strict about what a payload needs and lenient about bytes after it (CONTINUE and
//! CLOSE may carry trailing bytes, which are ignored, as the reference server does), so a later
//! protocol minor version that appends fields does not break us.

mod info;

pub use info::{
    EXTENSION_HEADER_LEN, Extension, ExtensionId, ExtensionIter, Info, PasswordCredentials,
};

use bytes::BufMut;

/// Bytes before every payload: type (1) and stream id (4).
pub const HEADER_LEN: usize = 5;
/// Longest host name accepted in a CONNECT, in bytes. DNS names stop at 253 (254 with a
/// trailing dot) and IPv6 literals at 45, so anything longer is not a destination.
pub const MAX_HOST_LEN: usize = 255;

/// Why a message is not a Wisp packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message too short: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },
    #[error("unknown packet type {0:#04x}")]
    UnknownType(u8),
    #[error("host name is not UTF-8")]
    BadUtf8,
    #[error("host name is empty")]
    EmptyHost,
    #[error("host name of {0} bytes is longer than {MAX_HOST_LEN}")]
    HostTooLong(usize),
    #[error("extension {id:#04x} claims {claimed} bytes, {left} left")]
    ExtensionOverrun { id: u8, claimed: u32, left: usize },
}

/// A client-chosen stream id. Id 0 is reserved for the handshake (CONTINUE and INFO on
/// stream 0 are session-wide); no stream ever uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl StreamId {
    /// The session-wide id of the handshake packets.
    pub const HANDSHAKE: StreamId = StreamId(0);
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The first byte of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Data,
    Continue,
    Close,
    /// Wisp v2 only.
    Info,
}

impl PacketType {
    pub fn from_u8(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0x01 => Self::Connect,
            0x02 => Self::Data,
            0x03 => Self::Continue,
            0x04 => Self::Close,
            0x05 => Self::Info,
            other => return Err(WireError::UnknownType(other)),
        })
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Connect => 0x01,
            Self::Data => 0x02,
            Self::Continue => 0x03,
            Self::Close => 0x04,
            Self::Info => 0x05,
        }
    }
}

/// What kind of socket a CONNECT asks for. Unknown values are kept, not rejected by the
/// parser, so the session can refuse that one stream with a CLOSE instead of dropping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    Tcp,
    Udp,
    Other(u8),
}

impl StreamType {
    pub fn from_u8(b: u8) -> Self {
        match b {
            0x01 => Self::Tcp,
            0x02 => Self::Udp,
            other => Self::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Tcp => 0x01,
            Self::Udp => 0x02,
            Self::Other(b) => b,
        }
    }
}

/// A CLOSE reason (spec v2 draft 6). Reasons we do not know are preserved as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseReason {
    /// 0x01: unspecified.
    Unknown,
    /// 0x02: one side closed the stream on purpose.
    Voluntary,
    /// 0x03: the connection broke.
    NetworkError,
    /// 0x04 (v2): the handshake found no common ground; stream 0 only.
    IncompatibleExtensions,
    /// 0x41: the CONNECT was invalid (bad host, port 0, unknown stream type, reused id).
    Invalid,
    /// 0x42: the host name does not resolve or the host cannot be reached.
    Unreachable,
    /// 0x43: connecting timed out.
    Timeout,
    /// 0x44: the destination refused the connection.
    Refused,
    /// 0x47: an established TCP connection timed out.
    TcpTimeout,
    /// 0x48: the destination is blocked by policy.
    Blocked,
    /// 0x49: the server throttled the client (stream limit, credit overrun).
    Throttled,
    /// 0x81: the client hit an error of its own.
    ClientError,
    /// 0xc0 (password extension): wrong user name or password.
    AuthBadPassword,
    /// 0xc1 (key extension): bad signature.
    AuthBadSignature,
    /// 0xc2: authentication is required and the client sent no credentials.
    AuthMissingCredentials,
    Other(u8),
}

impl CloseReason {
    pub fn from_u8(b: u8) -> Self {
        match b {
            0x01 => Self::Unknown,
            0x02 => Self::Voluntary,
            0x03 => Self::NetworkError,
            0x04 => Self::IncompatibleExtensions,
            0x41 => Self::Invalid,
            0x42 => Self::Unreachable,
            0x43 => Self::Timeout,
            0x44 => Self::Refused,
            0x47 => Self::TcpTimeout,
            0x48 => Self::Blocked,
            0x49 => Self::Throttled,
            0x81 => Self::ClientError,
            0xc0 => Self::AuthBadPassword,
            0xc1 => Self::AuthBadSignature,
            0xc2 => Self::AuthMissingCredentials,
            other => Self::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Unknown => 0x01,
            Self::Voluntary => 0x02,
            Self::NetworkError => 0x03,
            Self::IncompatibleExtensions => 0x04,
            Self::Invalid => 0x41,
            Self::Unreachable => 0x42,
            Self::Timeout => 0x43,
            Self::Refused => 0x44,
            Self::TcpTimeout => 0x47,
            Self::Blocked => 0x48,
            Self::Throttled => 0x49,
            Self::ClientError => 0x81,
            Self::AuthBadPassword => 0xc0,
            Self::AuthBadSignature => 0xc1,
            Self::AuthMissingCredentials => 0xc2,
            Self::Other(b) => b,
        }
    }
}

/// The header of a packet and its raw payload. Parsing fails only on a short message, so the
/// stream id is known even when the payload turns out to be bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub packet_type: u8,
    pub stream_id: StreamId,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let header: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Truncated {
                needed: HEADER_LEN,
                got: buf.len(),
            })?;
        Ok(Self {
            packet_type: header[0],
            stream_id: StreamId(u32::from_le_bytes([
                header[1], header[2], header[3], header[4],
            ])),
            payload: &buf[HEADER_LEN..],
        })
    }
}

/// A CONNECT payload: `u8 stream type | u16 port (LE) | host (UTF-8, rest of the packet)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectPayload<'a> {
    pub stream_type: StreamType,
    pub port: u16,
    pub host: &'a str,
}

impl<'a> ConnectPayload<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let [kind, p0, p1, host @ ..] = payload else {
            return Err(truncated(HEADER_LEN + 3, HEADER_LEN + payload.len()));
        };
        if host.is_empty() {
            return Err(WireError::EmptyHost);
        }
        if host.len() > MAX_HOST_LEN {
            return Err(WireError::HostTooLong(host.len()));
        }
        let host = std::str::from_utf8(host).map_err(|_| WireError::BadUtf8)?;
        Ok(Self {
            stream_type: StreamType::from_u8(*kind),
            port: u16::from_le_bytes([*p0, *p1]),
            host,
        })
    }
}

/// A typed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Connect(ConnectPayload<'a>),
    Data(&'a [u8]),
    /// How many more DATA packets the server can buffer for the stream (for stream 0: the
    /// initial credit of every stream). It replaces the client's count, it does not add to it.
    Continue(u32),
    Close(CloseReason),
    Info(Info<'a>),
}

impl<'a> Payload<'a> {
    pub fn parse(packet_type: PacketType, payload: &'a [u8]) -> Result<Self, WireError> {
        Ok(match packet_type {
            PacketType::Connect => Self::Connect(ConnectPayload::parse(payload)?),
            PacketType::Data => Self::Data(payload),
            PacketType::Continue => match payload {
                [a, b, c, d, ..] => Self::Continue(u32::from_le_bytes([*a, *b, *c, *d])),
                _ => return Err(truncated(HEADER_LEN + 4, HEADER_LEN + payload.len())),
            },
            PacketType::Close => match payload {
                [r, ..] => Self::Close(CloseReason::from_u8(*r)),
                [] => return Err(truncated(HEADER_LEN + 1, HEADER_LEN)),
            },
            PacketType::Info => Self::Info(Info::parse(payload)?),
        })
    }

    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::Data(_) => PacketType::Data,
            Self::Continue(_) => PacketType::Continue,
            Self::Close(_) => PacketType::Close,
            Self::Info(_) => PacketType::Info,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Connect(c) => 3 + c.host.len(),
            Self::Data(d) => d.len(),
            Self::Continue(_) => 4,
            Self::Close(_) => 1,
            Self::Info(i) => 2 + i.extensions.len(),
        }
    }
}

fn truncated(needed: usize, got: usize) -> WireError {
    WireError::Truncated { needed, got }
}

/// One parsed packet, borrowing from the message it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub stream_id: StreamId,
    pub payload: Payload<'a>,
}

impl<'a> Packet<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let frame = Frame::parse(buf)?;
        let packet_type = PacketType::from_u8(frame.packet_type)?;
        Ok(Self {
            stream_id: frame.stream_id,
            payload: Payload::parse(packet_type, frame.payload)?,
        })
    }

    pub fn new(stream_id: StreamId, payload: Payload<'a>) -> Self {
        Self { stream_id, payload }
    }

    /// Bytes [`Packet::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the packet to `out` (a `Vec<u8>` or a `BytesMut`).
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.payload.packet_type().to_u8());
        out.put_u32_le(self.stream_id.0);
        match &self.payload {
            Payload::Connect(c) => {
                out.put_u8(c.stream_type.to_u8());
                out.put_u16_le(c.port);
                out.put_slice(c.host.as_bytes());
            }
            Payload::Data(d) => out.put_slice(d),
            Payload::Continue(n) => out.put_u32_le(*n),
            Payload::Close(r) => out.put_u8(r.to_u8()),
            Payload::Info(i) => {
                out.put_u8(i.major);
                out.put_u8(i.minor);
                out.put_slice(i.extensions);
            }
        }
    }

    /// The packet as one WebSocket message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests;
