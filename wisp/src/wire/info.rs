//! The v2 INFO payload: `u8 major | u8 minor | extensions`, each extension
//! `u8 id | u32 length (LE) | payload`.
//!
//! The extension list is validated once when the INFO is parsed, so iterating it later cannot
//! fail. Extensions we do not know are kept as [`ExtensionId::Other`]: the server ignores
//! them, as the spec says a missing extension means "not supported".

use bytes::BufMut;

use super::WireError;

/// Bytes before each extension's payload: id (1) and length (4).
pub const EXTENSION_HEADER_LEN: usize = 5;

/// An INFO payload; `extensions` is the raw, already validated extension list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info<'a> {
    pub major: u8,
    pub minor: u8,
    pub extensions: &'a [u8],
}

impl<'a> Info<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let [major, minor, extensions @ ..] = payload else {
            return Err(WireError::Truncated {
                needed: super::HEADER_LEN + 2,
                got: super::HEADER_LEN + payload.len(),
            });
        };
        let mut rest = extensions;
        while !rest.is_empty() {
            rest = split_extension(rest)?.1;
        }
        Ok(Self {
            major: *major,
            minor: *minor,
            extensions,
        })
    }

    pub fn extensions(&self) -> ExtensionIter<'a> {
        ExtensionIter {
            rest: self.extensions,
        }
    }
}

/// Splits the first extension off `buf`.
fn split_extension(buf: &[u8]) -> Result<(Extension<'_>, &[u8]), WireError> {
    let [id, l0, l1, l2, l3, rest @ ..] = buf else {
        return Err(WireError::Truncated {
            needed: EXTENSION_HEADER_LEN,
            got: buf.len(),
        });
    };
    let claimed = u32::from_le_bytes([*l0, *l1, *l2, *l3]);
    let len = usize::try_from(claimed).unwrap_or(usize::MAX);
    if len > rest.len() {
        return Err(WireError::ExtensionOverrun {
            id: *id,
            claimed,
            left: rest.len(),
        });
    }
    let (payload, rest) = rest.split_at(len);
    let ext = Extension {
        id: ExtensionId::from_u8(*id),
        payload,
    };
    Ok((ext, rest))
}

/// Iterates over the extensions of a parsed [`Info`].
#[derive(Clone, Debug)]
pub struct ExtensionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ExtensionIter<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Extension<'a>> {
        // Info::parse validated the list; a failure here means the iterator was built from
        // unvalidated bytes, and stopping is the safe answer.
        let (ext, rest) = split_extension(self.rest).ok()?;
        self.rest = rest;
        Some(ext)
    }
}

/// Extension ids of spec v2 draft 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtensionId {
    /// 0x01, no payload: UDP streams are supported.
    Udp,
    /// 0x02: password authentication.
    PasswordAuth,
    /// 0x03: public-key authentication (not implemented by the session).
    KeyAuth,
    /// 0x04: server message of the day, a UTF-8 string.
    Motd,
    /// 0x05, no payload: the server confirms each opened stream with a CONTINUE.
    StreamConfirmation,
    Other(u8),
}

impl ExtensionId {
    pub fn from_u8(b: u8) -> Self {
        match b {
            0x01 => Self::Udp,
            0x02 => Self::PasswordAuth,
            0x03 => Self::KeyAuth,
            0x04 => Self::Motd,
            0x05 => Self::StreamConfirmation,
            other => Self::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Udp => 0x01,
            Self::PasswordAuth => 0x02,
            Self::KeyAuth => 0x03,
            Self::Motd => 0x04,
            Self::StreamConfirmation => 0x05,
            Self::Other(b) => b,
        }
    }
}

/// One extension entry of an INFO packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    pub id: ExtensionId,
    pub payload: &'a [u8],
}

impl Extension<'_> {
    pub fn encoded_len(&self) -> usize {
        EXTENSION_HEADER_LEN + self.payload.len()
    }

    /// Appends the entry to `out`; build an INFO's extension list by calling this per entry.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.id.to_u8());
        // An extension payload over 4 GiB cannot be built from a WebSocket message.
        out.put_u32_le(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        out.put_slice(self.payload);
    }
}

/// The client's password extension payload.
///
/// Spec v2 draft 6 describes `u8 user length | user | password`, but the reference
/// implementation (wisp-js) and the Rust one send `u8 user length | u16 password length (LE) |
/// user | password`; we follow the implementations, since that is what clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordCredentials<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

impl<'a> PasswordCredentials<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let [user_len, p0, p1, rest @ ..] = payload else {
            return Err(WireError::Truncated {
                needed: 3,
                got: payload.len(),
            });
        };
        let user_len = usize::from(*user_len);
        let pass_len = usize::from(u16::from_le_bytes([*p0, *p1]));
        if rest.len() < user_len + pass_len {
            return Err(WireError::Truncated {
                needed: 3 + user_len + pass_len,
                got: payload.len(),
            });
        }
        let (user, rest) = rest.split_at(user_len);
        let user = std::str::from_utf8(user).map_err(|_| WireError::BadUtf8)?;
        let password = std::str::from_utf8(&rest[..pass_len]).map_err(|_| WireError::BadUtf8)?;
        Ok(Self { user, password })
    }

    /// Appends the client payload (used by tests and test clients).
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        // Longer names cannot be expressed on the wire; truncating keeps encode infallible and
        // the result is simply a wrong password.
        let user = &self.user.as_bytes()[..self.user.len().min(usize::from(u8::MAX))];
        let pass = &self.password.as_bytes()[..self.password.len().min(usize::from(u16::MAX))];
        out.put_u8(user.len() as u8);
        out.put_u16_le(pass.len() as u16);
        out.put_slice(user);
        out.put_slice(pass);
    }
}
