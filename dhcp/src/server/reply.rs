//! Building OFFER, ACK and NAK replies.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, HType, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};

use super::message::Client;
use super::{DhcpError, DhcpServer, Reply, ReplyKind, ReplyTarget};

/// Replies are padded to this size: BOOTP relays and some old clients drop shorter ones
/// (RFC 1542 2.1; dnsmasq does the same).
const MIN_REPLY_LEN: usize = v4::MIN_PACKET_SIZE;

/// What to answer.
pub(super) enum Answer {
    Offer {
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    Ack {
        ip: Ipv4Addr,
        host_name: Option<String>,
    },
    InformAck,
    Nak(&'static str),
}

impl Answer {
    /// The reply's kind, DHCP message type and yiaddr.
    fn header(&self) -> (ReplyKind, MessageType, Ipv4Addr) {
        match self {
            Answer::Offer { ip, .. } => (ReplyKind::Offer, MessageType::Offer, *ip),
            Answer::Ack { ip, .. } => (ReplyKind::Ack, MessageType::Ack, *ip),
            Answer::InformAck => (ReplyKind::Ack, MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            Answer::Nak(_) => (ReplyKind::Nak, MessageType::Nak, Ipv4Addr::UNSPECIFIED),
        }
    }
}

impl DhcpServer {
    pub(super) fn answer(
        &mut self,
        request: &Message,
        client: &Client,
        answer: Answer,
    ) -> Result<Reply, DhcpError> {
        let (kind, message_type, yiaddr) = answer.header();
        let mut reply = reply_message(request, client, kind, yiaddr);
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(message_type));
        opts.insert(DhcpOption::ServerIdentifier(self.server_id));
        // RFC 6842: echo the client identifier.
        if let Some(id) = &client.client_id {
            opts.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        self.insert_answer_options(opts, answer);
        let payload = encode_padded(&reply)?;
        let to = reply_target(request, client, kind, yiaddr);
        match kind {
            ReplyKind::Offer => self.stats.sent_offer += 1,
            ReplyKind::Ack => self.stats.sent_ack += 1,
            ReplyKind::Nak => self.stats.sent_nak += 1,
        }
        Ok(Reply { payload, to, kind })
    }

    /// What the answer says beyond the message type, server id and client id.
    fn insert_answer_options(&self, opts: &mut v4::DhcpOptions, answer: Answer) {
        match answer {
            Answer::Nak(text) => {
                opts.insert(DhcpOption::Message(text.to_owned()));
            }
            Answer::InformAck => self.insert_network_options(opts),
            Answer::Offer { host_name, .. } | Answer::Ack { host_name, .. } => {
                // The parameter request list is honoured loosely: the core set always goes
                // out, which is everything we have.
                self.insert_network_options(opts);
                let lease_secs = self.config.lease_time.as_secs();
                let as_u32 = |secs: u64| u32::try_from(secs).unwrap_or(u32::MAX);
                opts.insert(DhcpOption::AddressLeaseTime(as_u32(lease_secs)));
                opts.insert(DhcpOption::Renewal(as_u32(lease_secs / 2)));
                opts.insert(DhcpOption::Rebinding(as_u32(lease_secs / 8 * 7)));
                if let Some(name) = host_name {
                    opts.insert(DhcpOption::Hostname(name));
                }
            }
        }
    }

    fn insert_network_options(&self, opts: &mut v4::DhcpOptions) {
        opts.insert(DhcpOption::SubnetMask(self.config.subnet_mask()));
        opts.insert(DhcpOption::Router(vec![self.config.router]));
        if !self.config.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(
                self.config.dns_servers.clone(),
            ));
        }
        if !self.config.domain_name.is_empty() {
            opts.insert(DhcpOption::DomainName(self.config.domain_name.clone()));
        }
        opts.insert(DhcpOption::InterfaceMtu(self.config.mtu));
        opts.insert(DhcpOption::BroadcastAddr(self.config.broadcast_address()));
    }
}

/// The BOOTREPLY header for `request`, without options.
fn reply_message(request: &Message, client: &Client, kind: ReplyKind, yiaddr: Ipv4Addr) -> Message {
    // RFC 2131 table 3: ciaddr is echoed only in ACKs.
    let ciaddr = match kind {
        ReplyKind::Ack => request.ciaddr(),
        ReplyKind::Offer | ReplyKind::Nak => Ipv4Addr::UNSPECIFIED,
    };
    let mut reply = Message::new_with_id(
        request.xid(),
        ciaddr,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        request.giaddr(),
        &client.chaddr.0,
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(request.flags());
    reply
}

fn encode_padded(reply: &Message) -> Result<Vec<u8>, DhcpError> {
    let mut payload = Vec::with_capacity(MIN_REPLY_LEN);
    reply.encode(&mut Encoder::new(&mut payload))?;
    if payload.len() < MIN_REPLY_LEN {
        payload.resize(MIN_REPLY_LEN, 0);
    }
    Ok(payload)
}

/// RFC 2131 4.1: NAKs broadcast; otherwise ciaddr if the client has one, else broadcast
/// when asked to (or when there is no address), else the offered address.
fn reply_target(
    request: &Message,
    client: &Client,
    kind: ReplyKind,
    yiaddr: Ipv4Addr,
) -> ReplyTarget {
    let request_ciaddr = request.ciaddr();
    if kind == ReplyKind::Nak {
        ReplyTarget::Broadcast
    } else if !request_ciaddr.is_unspecified() {
        ReplyTarget::Unicast {
            mac: client.mac,
            ip: request_ciaddr,
        }
    } else if request.flags().broadcast() || yiaddr.is_unspecified() {
        ReplyTarget::Broadcast
    } else {
        ReplyTarget::Unicast {
            mac: client.mac,
            ip: yiaddr,
        }
    }
}
