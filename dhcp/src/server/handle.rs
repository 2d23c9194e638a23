//! One handler per DHCP message type.

use std::time::Instant;

use dhcproto::v4::{Message, MessageType};
use smoltcp::wire::EthernetAddress;

use super::message::{Client, client_of, parse, requested_ip, server_identifier};
use super::pool::Availability;
use super::reply::Answer;
use super::slot::Slot;
use super::{DhcpError, DhcpServer, Reply};
use crate::lease::LeaseEvent;

impl DhcpServer {
    pub(super) fn dispatch(
        &mut self,
        now: Instant,
        frame_src: EthernetAddress,
        payload: &[u8],
    ) -> Result<Option<Reply>, DhcpError> {
        let message = parse(payload)?;
        let message_type = message
            .opts()
            .msg_type()
            .ok_or(DhcpError::MissingMessageType)?;
        let client = client_of(&message, frame_src)?;
        match message_type {
            MessageType::Discover => {
                self.stats.received_discover += 1;
                self.handle_discover(now, &message, &client)
            }
            MessageType::Request => {
                self.stats.received_request += 1;
                self.handle_request(now, &message, &client)
            }
            MessageType::Release => {
                self.stats.received_release += 1;
                self.handle_release(&message, &client);
                Ok(None)
            }
            MessageType::Decline => {
                self.stats.received_decline += 1;
                self.handle_decline(now, &message, &client)
            }
            MessageType::Inform => {
                self.stats.received_inform += 1;
                self.answer(&message, &client, Answer::InformAck).map(Some)
            }
            _ => {
                self.stats.received_other += 1;
                Ok(None)
            }
        }
    }

    fn handle_discover(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        let Some(ip) = self.choose_offer(client, requested_ip(message)) else {
            self.stats.pool_exhausted += 1;
            self.push_event(LeaseEvent::PoolExhausted { mac: client.mac });
            return Ok(None);
        };
        let current = self.slots.get(&ip);
        let host_name = self
            .static_host_name(client.chaddr)
            .or_else(|| client.host_name.clone())
            .or_else(|| {
                current
                    .and_then(Slot::lease)
                    .and_then(|l| l.host_name.clone())
            });
        // A bound lease or a static address needs no reservation; anything else is held
        // for the client until it requests it (a repeated DISCOVER extends the hold).
        let needs_reservation =
            !matches!(current, Some(Slot::Bound(_))) && !self.statics_by_ip.contains_key(&ip);
        if needs_reservation {
            let expires = now + self.config.offer_timeout;
            self.insert_slot(
                ip,
                Slot::Offered {
                    key: client.key.clone(),
                    expires,
                },
            );
        }
        self.answer(message, client, Answer::Offer { ip, host_name })
            .map(Some)
    }

    /// RFC 2131 4.3.2. The state is told apart by option 54 (SELECTING), then ciaddr
    /// (RENEWING/REBINDING; which of the two makes no difference to a single server), else
    /// option 50 (INIT-REBOOT).
    ///
    /// An address that is in the pool but that we hold no record of is ACKed in every state,
    /// not ignored as RFC 2131 suggests for INIT-REBOOT: we are the only server on the LAN,
    /// and after a relay restart without a state file clients must keep their addresses.
    /// Addresses outside the pool, reserved, quarantined or held by another client get a NAK
    /// so the client restarts with DISCOVER instead of waiting.
    fn handle_request(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        let server_id = server_identifier(message);
        if let Some(chosen) = server_id
            && chosen != self.server_id
        {
            // The client took another server's offer: release ours, say nothing.
            if let Some(&ip) = self.by_key.get(&client.key)
                && matches!(self.slots.get(&ip), Some(Slot::Offered { .. }))
            {
                self.remove_slot(ip);
            }
            return Ok(None);
        }
        let ciaddr = Some(message.ciaddr()).filter(|ip| !ip.is_unspecified());
        let requested = requested_ip(message);
        let wanted = if server_id.is_some() {
            requested.or(ciaddr)
        } else {
            ciaddr.or(requested)
        };
        let ip = wanted.ok_or(DhcpError::NoAddress(MessageType::Request))?;

        if let Some(lease) = self.statics_by_mac.get(&client.chaddr)
            && lease.ip != ip
        {
            return self
                .answer(
                    message,
                    client,
                    Answer::Nak("address is reserved for another"),
                )
                .map(Some);
        }
        match self.availability(ip, &client.key, client.chaddr) {
            Availability::Unavailable => self
                .answer(
                    message,
                    client,
                    Answer::Nak("requested address not available"),
                )
                .map(Some),
            Availability::Mine | Availability::Free => {
                let host_name = self.bind(now, client, ip);
                self.answer(message, client, Answer::Ack { ip, host_name })
                    .map(Some)
            }
        }
    }

    fn handle_release(&mut self, message: &Message, client: &Client) {
        if server_identifier(message).is_some_and(|id| id != self.server_id) {
            return;
        }
        let ip = message.ciaddr();
        let owned = self
            .slots
            .get(&ip)
            .is_some_and(|slot| matches!(slot, Slot::Bound(_)) && slot.is_owned_by(&client.key));
        if owned && let Some(Slot::Bound(lease)) = self.remove_slot(ip) {
            // The address stays remembered, so the client gets it back if it returns.
            self.push_event(LeaseEvent::Released {
                mac: lease.mac,
                ip,
                host_name: lease.host_name,
            });
        }
    }

    fn handle_decline(
        &mut self,
        now: Instant,
        message: &Message,
        client: &Client,
    ) -> Result<Option<Reply>, DhcpError> {
        if server_identifier(message).is_some_and(|id| id != self.server_id) {
            return Ok(None);
        }
        let ip = requested_ip(message).ok_or(DhcpError::NoAddress(MessageType::Decline))?;
        let owned = self
            .slots
            .get(&ip)
            .is_some_and(|slot| slot.is_owned_by(&client.key));
        if !owned {
            return Ok(None);
        }
        self.remove_slot(ip);
        self.forget(&client.key);
        // A static address belongs to its MAC whatever happens; anything else sits out
        // the quarantine so the next client does not hit the same conflict.
        if !self.statics_by_ip.contains_key(&ip) && !self.config.decline_quarantine.is_zero() {
            let until = now + self.config.decline_quarantine;
            self.insert_slot(ip, Slot::Quarantined { until });
        }
        self.push_event(LeaseEvent::Declined {
            mac: client.mac,
            ip,
        });
        Ok(None)
    }
}
