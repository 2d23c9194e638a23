//! MAC translation for ports whose machine shares its MAC with another live port (tabs
//! restored from one saved v86 state). Such a port gets a locally administered address;
//! every place a MAC travels in what v86 guests send (Ethernet source and destination, ARP
//! sender and target hardware addresses, DHCP `chaddr` and a hardware-type client
//! identifier) is rewritten both ways, so each machine gets its own traffic and its own lease.

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket,
};

use crate::MacAddr;

/// BOOTP `chaddr` offset in a DHCP message, and where options start (after the cookie).
const CHADDR: usize = 28;
const OPTIONS: usize = 240;
const OPTION_CLIENT_ID: u8 = 61;

/// One port's translation: `original` on the client's side, `local` on the LAN's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacTranslation {
    pub original: MacAddr,
    pub local: MacAddr,
}

impl MacTranslation {
    /// A locally administered unicast address derived from a port number.
    pub fn for_port(original: MacAddr, port: u64) -> Self {
        let id = port.to_be_bytes();
        Self {
            original,
            local: MacAddr([0x02, 0x76, 0x38, id[5], id[6], id[7]]),
        }
    }

    /// A frame from the client into the LAN: the client's own addresses (source side)
    /// become the local one. A destination equal to `original` is the other machine with
    /// the same MAC, so it is left alone.
    pub fn outbound(&self, frame: &mut [u8]) {
        rewrite(frame, self.original, self.local, Side::Source);
    }

    /// A frame from the LAN to the client: the local address (destination side) becomes
    /// the client's own again.
    pub fn inbound(&self, frame: &mut [u8]) {
        rewrite(frame, self.local, self.original, Side::Destination);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Replaces `from` with `to` where the client's MAC travels on `side`; DHCP's `chaddr`
/// always names the client. Leaves anything it cannot parse alone.
fn rewrite(frame: &mut [u8], from: MacAddr, to: MacAddr, side: Side) {
    let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    match side {
        Side::Source if eth.src_addr() == from => eth.set_src_addr(to),
        Side::Destination if eth.dst_addr() == from => eth.set_dst_addr(to),
        _ => {}
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            if let Ok(mut arp) = ArpPacket::new_checked(eth.payload_mut())
                && arp.hardware_len() == 6
            {
                {
                    if side == Side::Source && arp.source_hardware_addr() == from.as_bytes() {
                        arp.set_source_hardware_addr(to.as_bytes());
                    }
                    if side == Side::Destination && arp.target_hardware_addr() == from.as_bytes() {
                        arp.set_target_hardware_addr(to.as_bytes());
                    }
                }
            }
        }
        EthernetProtocol::Ipv4 => rewrite_dhcp(eth.payload_mut(), from, to),
        _ => {}
    }
}

fn rewrite_dhcp(packet: &mut [u8], from: MacAddr, to: MacAddr) {
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else {
        return;
    };
    if ip.next_header() != IpProtocol::Udp || ip.more_frags() || ip.frag_offset() != 0 {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) else {
        return;
    };
    let ports = (udp.src_port(), udp.dst_port());
    if !matches!(ports, (68, 67) | (67, 68)) {
        return;
    }
    let dhcp = udp.payload_mut();
    let mut changed = false;
    if let Some(chaddr) = dhcp.get_mut(CHADDR..CHADDR + 6)
        && chaddr == from.as_bytes()
    {
        chaddr.copy_from_slice(to.as_bytes());
        changed = true;
    }
    // Options: code, length, value ... until END (255); PAD (0) has no length.
    let mut at = OPTIONS;
    while let Some(&code) = dhcp.get(at) {
        match code {
            0 => at += 1,
            255 => break,
            _ => {
                let Some(&len) = dhcp.get(at + 1) else { break };
                let value = at + 2..at + 2 + len as usize;
                if code == OPTION_CLIENT_ID
                    && len == 7
                    && let Some(id) = dhcp.get_mut(value.clone())
                    && id[0] == 1
                    && &id[1..] == from.as_bytes()
                {
                    id[1..].copy_from_slice(to.as_bytes());
                    changed = true;
                }
                at = value.end;
            }
        }
    }
    if changed {
        udp.fill_checksum(&src.into(), &dst.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V86: MacAddr = MacAddr([0x00, 0x22, 0x15, 0x12, 0x34, 0x56]);

    /// A udhcpc DHCPDISCOVER from 00:22:15:12:34:56 with client id 01:00:22:15:12:34:56.
    fn discover() -> Vec<u8> {
        let mut dhcp = vec![0u8; 240];
        dhcp[0] = 1; // BOOTREQUEST
        dhcp[1] = 1;
        dhcp[2] = 6;
        dhcp[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        dhcp[CHADDR..CHADDR + 6].copy_from_slice(V86.as_bytes());
        dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        dhcp.extend_from_slice(&[53, 1, 1]);
        dhcp.extend_from_slice(&[61, 7, 1, 0x00, 0x22, 0x15, 0x12, 0x34, 0x56]);
        dhcp.push(255);
        let udp_len = 8 + dhcp.len();
        let ip_len = 20 + udp_len;
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(V86.as_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        f.extend_from_slice(&[0, 68, 0, 67, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
        f.extend_from_slice(&dhcp);
        f
    }

    #[test]
    fn dhcp_chaddr_client_id_and_ethernet_are_translated_and_back() {
        let t = MacTranslation::for_port(V86, 7);
        assert!(t.local.is_local() && t.local.is_unicast());
        let original = discover();
        let mut f = original.clone();
        t.outbound(&mut f);
        assert_eq!(&f[6..12], t.local.as_bytes());
        let dhcp = &f[14 + 20 + 8..];
        assert_eq!(&dhcp[CHADDR..CHADDR + 6], t.local.as_bytes());
        assert_eq!(&dhcp[246..252], t.local.as_bytes(), "client id follows");
        let udp = UdpPacket::new_checked(&f[34..]).unwrap();
        assert!(udp.verify_checksum(
            &smoltcp::wire::Ipv4Address::new(0, 0, 0, 0).into(),
            &smoltcp::wire::Ipv4Address::new(255, 255, 255, 255).into()
        ));
        // The server's reply carries the local MAC in chaddr; the client gets its own back.
        f[0..6].copy_from_slice(t.local.as_bytes());
        t.inbound(&mut f);
        assert_eq!(&f[0..6], V86.as_bytes());
        let dhcp = &f[14 + 20 + 8..];
        assert_eq!(&dhcp[CHADDR..CHADDR + 6], V86.as_bytes());
        assert_eq!(&f[42..], &original[42..]);
    }

    #[test]
    fn arp_hardware_addresses_are_translated() {
        let t = MacTranslation::for_port(V86, 1);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(V86.as_bytes());
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(V86.as_bytes());
        f.extend_from_slice(&[10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
        f.resize(60, 0);
        t.outbound(&mut f);
        assert_eq!(&f[6..12], t.local.as_bytes());
        assert_eq!(&f[22..28], t.local.as_bytes());
    }

    #[test]
    fn garbage_is_left_alone() {
        let t = MacTranslation::for_port(V86, 1);
        for len in 0..80 {
            let mut f = vec![0x45; len];
            t.outbound(&mut f);
            t.inbound(&mut f);
        }
    }
}
