//! The v2 handshake (spec v2 draft 6, "Handshake Steps"): the server sends its INFO, the
//! client answers with its INFO (and credentials, if it authenticates), and the server either
//! accepts with the CONTINUE on stream 0 or refuses with a CLOSE on stream 0.

use super::{Phase, Session, SessionConfig};
use crate::session::PasswordAuth;
use crate::session::types::Event;
use crate::wire::{
    CloseReason, Extension, ExtensionId, Frame, Info, Packet, PacketType, PasswordCredentials,
    Payload, StreamId,
};

/// The protocol version we advertise.
const MAJOR: u8 = 2;
const MINOR: u8 = 0;

/// The server's INFO message, listing what this config offers.
pub(super) fn server_info(config: &SessionConfig) -> Vec<u8> {
    let required = [u8::from(config.password_auth == PasswordAuth::Required)];
    let mut offered = Vec::new();
    if config.udp_enabled {
        offered.push(Extension {
            id: ExtensionId::Udp,
            payload: &[],
        });
    }
    if config.password_auth != PasswordAuth::Off {
        offered.push(Extension {
            id: ExtensionId::PasswordAuth,
            payload: &required,
        });
    }
    if let Some(motd) = &config.motd {
        offered.push(Extension {
            id: ExtensionId::Motd,
            payload: motd.as_bytes(),
        });
    }
    if config.stream_confirmation {
        offered.push(Extension {
            id: ExtensionId::StreamConfirmation,
            payload: &[],
        });
    }
    let mut extensions = Vec::with_capacity(offered.iter().map(Extension::encoded_len).sum());
    offered.iter().for_each(|e| e.encode(&mut extensions));
    let info = Info {
        major: MAJOR,
        minor: MINOR,
        extensions: &extensions,
    };
    Packet::new(StreamId::HANDSHAKE, Payload::Info(info)).to_vec()
}

/// What the client's INFO asked for.
#[derive(Default)]
struct ClientOffer<'a> {
    udp: bool,
    stream_confirmation: bool,
    /// `Some(Err)` when the password extension was present but unreadable.
    credentials: Option<Result<PasswordCredentials<'a>, ()>>,
}

fn read_offer<'a>(info: &Info<'a>) -> ClientOffer<'a> {
    let mut offer = ClientOffer::default();
    for ext in info.extensions() {
        match ext.id {
            ExtensionId::Udp => offer.udp = true,
            ExtensionId::StreamConfirmation => offer.stream_confirmation = true,
            ExtensionId::PasswordAuth => {
                offer.credentials = Some(PasswordCredentials::parse(ext.payload).map_err(|_| ()));
            }
            // Key auth is not offered, MOTD is server-only, others are unknown: a client may
            // list what it likes, only the common extensions count.
            _ => {}
        }
    }
    offer
}

impl Session {
    /// A message while our INFO waits for the client's.
    pub(super) fn handle_client_info(&mut self, frame: Frame<'_>, packet_type: PacketType) {
        if frame.stream_id != StreamId::HANDSHAKE {
            return self.refuse_handshake(frame);
        }
        let info = match Payload::parse(packet_type, frame.payload) {
            Ok(Payload::Info(info)) => info,
            // The client rejects our extensions (spec: CLOSE on stream 0, then it hangs up).
            Ok(Payload::Close(reason)) => return self.finish(reason, false),
            Ok(_) => return self.refuse_handshake(frame),
            Err(e) => {
                self.malformed(e);
                return self.finish(CloseReason::IncompatibleExtensions, true);
            }
        };
        if info.major < MAJOR {
            return self.finish(CloseReason::IncompatibleExtensions, true);
        }
        let offer = read_offer(&info);
        self.udp_allowed = self.config.udp_enabled && offer.udp;
        self.confirm_streams = self.config.stream_confirmation && offer.stream_confirmation;
        self.check_credentials(offer.credentials);
    }

    fn check_credentials(&mut self, credentials: Option<Result<PasswordCredentials<'_>, ()>>) {
        let Phase::AwaitInfo { deadline } = self.phase else {
            return;
        };
        match (self.config.password_auth, credentials) {
            // We did not offer passwords, so whatever the client sent is not ours to check.
            (PasswordAuth::Off, _) | (PasswordAuth::Optional, None) => self.open(),
            (PasswordAuth::Required, None) => {
                self.finish(CloseReason::AuthMissingCredentials, true);
            }
            (_, Some(Err(()))) => self.finish(CloseReason::AuthBadPassword, true),
            (_, Some(Ok(c))) => {
                self.phase = Phase::AwaitAuth { deadline };
                self.events.push_back(Event::Authenticate {
                    user: c.user.to_owned(),
                    password: c.password.to_owned(),
                });
            }
        }
    }

    /// Anything but INFO or CLOSE on stream 0 before the handshake ends: a client that does
    /// not speak v2 (a v1 client that sent a `Sec-WebSocket-Protocol` header anyway).
    fn refuse_handshake(&mut self, frame: Frame<'_>) {
        self.unexpected(frame);
        self.finish(CloseReason::IncompatibleExtensions, true);
    }
}
