//! Layer 0: the types every other layer speaks (docs/architecture.md, "Layers").
//!
//! Nothing here imports another module of the crate: LAN names and the paths that carry
//! them, transports and drop reasons as bounded metric labels, frame-size limits, and the
//! one table-driven metrics encoder that every collector uses.

pub(crate) mod dns_servers;
mod lan_name;
pub(crate) mod metrics;

pub(crate) use lan_name::{LanName, check_lan_pattern, lan_from_path};

/// Largest Ethernet frame v86 can produce: virtio allows a 65535-byte MTU plus the header.
pub const MAX_FRAME_SIZE_LIMIT: usize = 65535 + ETHERNET_HEADER_LEN;
/// Smallest useful frame limit: a full standard frame must always fit.
pub(crate) const MIN_FRAME_SIZE_LIMIT: usize = 1514;
/// Destination MAC, source MAC, EtherType.
pub(crate) const ETHERNET_HEADER_LEN: usize = 14;

labels::label_enum! {
    /// How a port reaches the relay; a bounded metric label.
    pub(crate) enum Transport {
        WebSocket => "websocket",
        /// WebTransport (HTTP/3) datagrams, fragmented as docs/architecture.md describes.
        WebTransport => "webtransport",
        /// A WebRTC DataChannel through the relay's ICE-lite peer.
        WebRtc => "webrtc",
        /// The LAN's own router port (ARP, DHCP, DNS); not a client connection.
        Gateway => "gateway",
        /// A Wisp session at `/wisp/`: streams to the internet, not a port of any LAN.
        Wisp => "wisp",
        /// On a LAN's owner node, the port of a client connected to another relay node:
        /// its frames come and go over the cluster bus (docs/cluster.md).
        Cluster => "cluster",
    }
}

impl Transport {
    /// Client transports, as metric labels (the gateway port is not a client).
    pub(crate) const CLIENTS: [Transport; 4] = [
        Transport::WebSocket,
        Transport::WebTransport,
        Transport::WebRtc,
        Transport::Cluster,
    ];

    /// A port of a LAN that a client connection owns (not the gateway; Wisp sessions are
    /// no LAN's port).
    pub(crate) fn is_client(self) -> bool {
        !matches!(self, Transport::Gateway | Transport::Wisp)
    }
}

labels::label_enum! {
    /// Why a frame was dropped on its way through a LAN; a bounded metric label.
    pub(crate) enum DropReason {
        /// Shorter than an Ethernet header.
        TooShort => "too_short",
        /// Longer than `limits.max_frame_size`.
        TooLarge => "too_large",
        /// A text WebSocket message: v86 never sends one.
        TextMessage => "text_message",
        /// The destination port's queue was full.
        QueueFull => "queue_full",
        /// A broadcast or multicast copy for a VM whose queue already holds its share of
        /// them (a quarter of `limits.port_queue_frames`, at least 64).
        FloodFull => "flood_full",
        /// Over the sender's, the receiver's or the LAN's bandwidth (`port_rate`, `lan_rate`).
        Shaped => "shaped",
        /// The switch refused it: a group address as source.
        InvalidSource => "invalid_source",
        /// The switch refused it: the port owns too many MACs.
        MacLimit => "mac_limit",
        /// The switch refused it: the destination lives on the sending port.
        SamePort => "same_port",
        /// The switch refused it: the port had already left.
        UnknownPort => "unknown_port",
        /// A frame of a port whose LAN another node owns: the queue to the cluster bus
        /// was full (docs/cluster.md).
        BusFull => "bus_full",
        /// The client's transport had no room for it: a WebRTC DataChannel's SCTP send
        /// buffer (`webrtc.sctp_send_buffer_bytes`) or WebTransport's datagram send buffer
        /// was full, because the client reads or acknowledges slower than the LAN sends.
        SendBufferFull => "send_buffer_full",
        /// WebRTC: the client's DataChannel was not open (not yet, or no longer), or the
        /// client went away while the frame waited for its send window.
        NotOpen => "not_open",
        /// WebTransport: the frame does not fit 64 of the client's datagrams, or the client
        /// refuses datagrams.
        Unsendable => "unsendable",
    }
}

impl DropReason {
    /// Where a frame handed to a client can be lost: its port's queue, then its transport.
    /// `frames_lost{transport, reason}` counts these per transport.
    pub(crate) const LOSSES: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::FloodFull,
        DropReason::SendBufferFull,
        DropReason::NotOpen,
        DropReason::Unsendable,
    ];
}

impl From<switch::DropReason> for DropReason {
    fn from(reason: switch::DropReason) -> Self {
        match reason {
            switch::DropReason::TooShort => DropReason::TooShort,
            switch::DropReason::InvalidSource => DropReason::InvalidSource,
            switch::DropReason::MacLimit => DropReason::MacLimit,
            switch::DropReason::SamePort => DropReason::SamePort,
            switch::DropReason::UnknownPort => DropReason::UnknownPort,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_drop_labels_are_kept() {
        for reason in switch::DropReason::ALL {
            assert_eq!(DropReason::from(reason).as_str(), reason.as_str());
        }
    }
}
