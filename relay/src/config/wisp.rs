//! `[wisp]`: the Wisp server at `/wisp/` (TCP and UDP streams over one WebSocket, for
//! v86's and other clients' "wisp" network backends). Its egress policy is `[nat]`'s.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WispSection {
    /// Serve `/wisp/` on `server.listen`.
    pub enabled: bool,
    /// Whether clients may open UDP streams.
    pub udp: bool,
    /// Open streams per WebSocket; a CONNECT beyond is closed with 0x49.
    pub max_streams_per_session: usize,
    /// Open streams of every session from one client address together.
    pub max_streams_per_ip: usize,
    /// Seconds to resolve and connect one stream before it closes with 0x43.
    pub connect_timeout_secs: u64,
    /// DATA packets a TCP stream may have in flight towards the host (the CONTINUE credit).
    pub buffer_packets: u32,
}

impl Default for WispSection {
    fn default() -> Self {
        Self {
            enabled: true,
            udp: true,
            max_streams_per_session: 256,
            max_streams_per_ip: 1024,
            connect_timeout_secs: 10,
            buffer_packets: 128,
        }
    }
}

impl WispSection {
    /// Checks the section; the error names the key, the problem and the fix.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String, &'static str, String)> {
        if !(1..=65_536).contains(&self.max_streams_per_session) {
            return Err((
                "wisp.max_streams_per_session",
                self.max_streams_per_session.to_string(),
                "out of range",
                "use 1 to 65536 (default 256)".to_owned(),
            ));
        }
        if self.max_streams_per_ip < self.max_streams_per_session {
            return Err((
                "wisp.max_streams_per_ip",
                self.max_streams_per_ip.to_string(),
                "below wisp.max_streams_per_session, so one session could never use its share",
                "set it to at least max_streams_per_session (default 1024)".to_owned(),
            ));
        }
        if !(1..=300).contains(&self.connect_timeout_secs) {
            return Err((
                "wisp.connect_timeout_secs",
                self.connect_timeout_secs.to_string(),
                "out of range",
                "use 1 to 300 (default 10)".to_owned(),
            ));
        }
        if !(2..=4096).contains(&self.buffer_packets) {
            return Err((
                "wisp.buffer_packets",
                self.buffer_packets.to_string(),
                "out of range",
                "use 2 to 4096 (default 128, as the reference server)".to_owned(),
            ));
        }
        Ok(())
    }
}
