//! A pcapng writer (draft-ietf-opsawg-pcapng): one section, one Interface Description Block
//! per port, Enhanced Packet Blocks, and Interface Statistics Blocks at the end. Blocks are
//! written little-endian (the byte-order magic tells readers so) and appended to a caller's
//! buffer, so the caller decides when bytes go out.
//!
//! Timestamps are microseconds since 1970, the format's default resolution (`if_tsresol` 6),
//! written explicitly so readers never guess.

use std::collections::HashMap;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const ISB: u32 = 0x0000_0005;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_DROPCOUNT: u16 = 4;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;

/// Longest option value written: longer names are cut (an option's length is a u16).
const MAX_OPTION: usize = 1024;

/// One capture's writer state: the snap length, the interfaces described so far (by the
/// caller's key, e.g. a port id) and what each has carried.
#[derive(Debug)]
pub struct Pcapng {
    snaplen: u32,
    interfaces: HashMap<u64, u32>,
    /// Per interface id: frames written, frames lost, first timestamp.
    counts: Vec<Counts>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    written: u64,
    dropped: u64,
    first_us: Option<u64>,
}

impl Pcapng {
    /// `snaplen`: the most bytes of a frame kept (at least 14, the Ethernet header).
    pub fn new(snaplen: u32) -> Self {
        Pcapng {
            snaplen: snaplen.max(14),
            interfaces: HashMap::new(),
            counts: Vec::new(),
        }
    }

    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// The Section Header Block that starts the file; `app` names the writer.
    pub fn section_header(&self, out: &mut Vec<u8>, app: &str) {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // Section length unknown: the file is a stream.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        option(&mut body, SHB_USERAPPL, app.as_bytes());
        end_options(&mut body);
        block(out, SHB, &body);
    }

    /// The interface id of `key`, if it was described.
    pub fn interface_id(&self, key: u64) -> Option<u32> {
        self.interfaces.get(&key).copied()
    }

    /// Describes a new interface (a port) named `name`; returns its id for
    /// [`packet`](Self::packet). A key already described keeps its id and writes nothing.
    pub fn interface(&mut self, out: &mut Vec<u8>, key: u64, name: &str) -> u32 {
        if let Some(id) = self.interfaces.get(&key) {
            return *id;
        }
        let id = self.counts.len() as u32;
        self.interfaces.insert(key, id);
        self.counts.push(Counts::default());
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&self.snaplen.to_le_bytes());
        option(&mut body, IF_NAME, name.as_bytes());
        option(&mut body, IF_TSRESOL, &[6]);
        end_options(&mut body);
        block(out, IDB, &body);
        id
    }

    /// An Enhanced Packet Block: `frame` (cut to the snap length) seen on interface `if_id`
    /// at `now_us`. `dropped_before` frames of that interface were lost since its previous
    /// packet; a non-zero count is written as `epb_dropcount`.
    pub fn packet(
        &mut self,
        out: &mut Vec<u8>,
        if_id: u32,
        now_us: u64,
        frame: &[u8],
        dropped_before: u64,
    ) {
        let kept = &frame[..frame.len().min(self.snaplen as usize)];
        let mut body = Vec::with_capacity(32 + kept.len());
        body.extend_from_slice(&if_id.to_le_bytes());
        timestamp(&mut body, now_us);
        body.extend_from_slice(&(kept.len() as u32).to_le_bytes());
        body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        body.extend_from_slice(kept);
        pad(&mut body);
        if dropped_before > 0 {
            option(&mut body, EPB_DROPCOUNT, &dropped_before.to_le_bytes());
            end_options(&mut body);
        }
        block(out, EPB, &body);
        if let Some(counts) = self.counts.get_mut(if_id as usize) {
            counts.written += 1;
            counts.dropped += dropped_before;
            counts.first_us.get_or_insert(now_us);
        }
    }

    /// The closing Interface Statistics Blocks, one per interface: frames received (written
    /// and lost) and lost. `late_drops` are (interface id, frames) lost after that
    /// interface's last packet, so no [`packet`](Self::packet) carried them.
    pub fn statistics(&mut self, out: &mut Vec<u8>, now_us: u64, late_drops: &[(u32, u64)]) {
        for &(id, dropped) in late_drops {
            if let Some(counts) = self.counts.get_mut(id as usize) {
                counts.dropped += dropped;
            }
        }
        for (id, counts) in self.counts.iter().enumerate() {
            let mut body = Vec::new();
            body.extend_from_slice(&(id as u32).to_le_bytes());
            timestamp(&mut body, now_us);
            let start = counts.first_us.unwrap_or(now_us);
            option(&mut body, ISB_STARTTIME, &split_timestamp(start));
            option(&mut body, ISB_ENDTIME, &split_timestamp(now_us));
            let received = counts.written + counts.dropped;
            option(&mut body, ISB_IFRECV, &received.to_le_bytes());
            option(&mut body, ISB_IFDROP, &counts.dropped.to_le_bytes());
            end_options(&mut body);
            block(out, ISB, &body);
        }
    }
}

/// A timestamp as pcapng stores it: the high 32 bits, then the low 32 bits.
fn split_timestamp(us: u64) -> [u8; 8] {
    let mut bytes = [0; 8];
    bytes[..4].copy_from_slice(&((us >> 32) as u32).to_le_bytes());
    bytes[4..].copy_from_slice(&(us as u32).to_le_bytes());
    bytes
}

fn timestamp(body: &mut Vec<u8>, us: u64) {
    body.extend_from_slice(&split_timestamp(us));
}

fn pad(body: &mut Vec<u8>) {
    body.resize(body.len().next_multiple_of(4), 0);
}

fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    let value = &value[..value.len().min(MAX_OPTION)];
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    pad(body);
}

fn end_options(body: &mut Vec<u8>) {
    body.extend_from_slice(&OPT_END.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
}

/// Type, total length, body (already padded to 4), total length again.
fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let total = (12 + body.len()) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the blocks of a file: (type, body) each, checking both length fields.
    fn blocks(mut data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut found = Vec::new();
        while !data.is_empty() {
            let kind = u32::from_le_bytes(data[..4].try_into().unwrap());
            let len = u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "block lengths are multiples of 4");
            let trailer = u32::from_le_bytes(data[len - 4..len].try_into().unwrap()) as usize;
            assert_eq!(len, trailer);
            found.push((kind, data[8..len - 4].to_vec()));
            data = &data[len..];
        }
        found
    }

    #[test]
    fn a_file_has_a_section_interfaces_packets_and_statistics() {
        let mut out = Vec::new();
        let mut w = Pcapng::new(100);
        w.section_header(&mut out, "test");
        let a = w.interface(&mut out, 10, "port 10 02:00:00:00:00:0a websocket");
        let b = w.interface(&mut out, 20, "gateway");
        assert_eq!((a, b), (0, 1));
        assert_eq!(
            w.interface(&mut out, 10, "again"),
            0,
            "an interface is described once"
        );
        w.packet(&mut out, a, 0x1_0000_0002, &[0xaa; 150], 0);
        w.packet(&mut out, b, 0x1_0000_0003, &[0xbb; 61], 3);
        w.statistics(&mut out, 0x1_0000_0004, &[(a, 2)]);
        let found = blocks(&out);
        let kinds: Vec<u32> = found.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [SHB, IDB, IDB, EPB, EPB, ISB, ISB]);
        let epb = &found[3].1;
        assert_eq!(
            u32::from_le_bytes(epb[4..8].try_into().unwrap()),
            1,
            "ts high"
        );
        assert_eq!(
            u32::from_le_bytes(epb[8..12].try_into().unwrap()),
            2,
            "ts low"
        );
        assert_eq!(
            u32::from_le_bytes(epb[12..16].try_into().unwrap()),
            100,
            "snaplen cut"
        );
        assert_eq!(
            u32::from_le_bytes(epb[16..20].try_into().unwrap()),
            150,
            "orig len"
        );
        assert_eq!(epb.len(), 20 + 100, "no options without drops");
        let epb = &found[4].1;
        // 61 bytes padded to 64, then epb_dropcount (4 + 8) and the end (4).
        assert_eq!(epb.len(), 20 + 64 + 12 + 4);
        assert_eq!(&epb[84..88], &[4, 0, 8, 0]);
        assert_eq!(u64::from_le_bytes(epb[88..96].try_into().unwrap()), 3);
        let isb = &found[5].1;
        let ifdrop = &isb[isb.len() - 16..isb.len() - 4];
        assert_eq!(&ifdrop[..4], &[ISB_IFDROP as u8, 0, 8, 0]);
        assert_eq!(u64::from_le_bytes(ifdrop[4..].try_into().unwrap()), 2);
    }

    #[test]
    fn names_are_padded_and_long_ones_cut() {
        let mut out = Vec::new();
        let mut w = Pcapng::new(10);
        assert_eq!(w.snaplen(), 14, "at least the Ethernet header");
        w.interface(&mut out, 1, &"x".repeat(5000));
        let found = blocks(&out);
        assert_eq!(found.len(), 1);
        let len = u16::from_le_bytes(found[0].1[10..12].try_into().unwrap());
        assert_eq!(len as usize, MAX_OPTION);
    }
}
