//! The smoltcp device of the NAT: one borrowed IP packet in, IP packets out into a queue.
//! No copy on the way in; packets out keep room in front for the Ethernet header.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::emit::HEADROOM;

pub(crate) struct OneShotDevice<'a> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) tx: &'a mut VecDeque<Vec<u8>>,
    pub(crate) mtu: usize,
}

impl phy::Device for OneShotDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((RxToken(packet), TxToken(self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // The gateway has verified the IPv4 header checksum already.
        caps.checksum = ChecksumCapabilities::default();
        caps.checksum.ipv4 = phy::Checksum::Tx;
        caps
    }
}

pub(crate) struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0; HEADROOM + len];
        let result = f(&mut buffer[HEADROOM..]);
        self.0.push_back(buffer);
        result
    }
}
