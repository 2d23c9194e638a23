//! A machine coming back on a socket that has not said which LAN it is on.
//!
//! With `server.default_lan = "private"` a WebSocket is placed by the MAC of its first
//! frame. v86 reconnects a dropped WebSocket at once, but a guest that only receives (a
//! download) may send nothing for minutes, while its NAT flows' data waits for it and times
//! out. So the relay asks it to speak: the gateways of the LANs its client address left
//! broadcast ARP requests for the addresses they saw, and the guest's reply is its first
//! frame. Broadcast requests name no MAC, so another machine of the same address (a class
//! behind one NAT) learns nothing that would let it into those LANs.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use super::{Lan, LanRegistry, lock};
use crate::shared::LanName;

/// Most LANs of one client address asked at once, and most probes from each: a class
/// behind one NAT leaves many LANs, and each probe is a frame sent to a stranger's socket.
const MAX_LANS: usize = 8;
const PROBES_PER_LAN: usize = 4;
/// A gateway busy for longer than this is skipped.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

impl Lan {
    /// Marks this LAN as `client`'s private LAN; the first mark stays.
    pub(crate) fn set_origin(&self, client: IpAddr) {
        let _ = self.origin.set(client);
    }
}

impl LanRegistry {
    /// Frames for a socket from `client` that has not said which LAN it is on: ARP requests
    /// from the gateways of `client`'s private LANs that have no machine on them now.
    pub(crate) async fn returning_probes(&self, client: IpAddr) -> Vec<Bytes> {
        let Some(hooks) = lock(&self.hooks).clone() else {
            return Vec::new();
        };
        let asks = self.vacated_by(client).into_iter().map(|lan| {
            let ask = hooks.neighbor_probes(&lan, PROBES_PER_LAN);
            async move {
                tokio::time::timeout(ASK_TIMEOUT, ask)
                    .await
                    .unwrap_or_default()
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Private LANs of `client` with no machine on them now, at most [`MAX_LANS`].
    fn vacated_by(&self, client: IpAddr) -> Vec<LanName> {
        lock(&self.lans)
            .values()
            .filter(|lan| lan.origin.get() == Some(&client) && lan.client_count() == 0)
            .take(MAX_LANS)
            .map(|lan| lan.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::shared::Transport;

    #[test]
    fn only_the_clients_own_empty_lans_are_vacated() {
        let registry = LanRegistry::new(&Config::default());
        let mine: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let name = |n: &str| LanName::new(n).unwrap();
        let (left, _rx1) = registry.join(&name("a"), Transport::WebSocket).unwrap();
        let (here, _rx2) = registry.join(&name("b"), Transport::WebSocket).unwrap();
        let (theirs, _rx3) = registry.join(&name("c"), Transport::WebSocket).unwrap();
        left.lan().set_origin(mine);
        here.lan().set_origin(mine);
        theirs.lan().set_origin(other);
        // Without a service keeping it, an empty LAN goes: keep "a" and "c" as a gateway would.
        left.lan().keep_until_service_releases();
        theirs.lan().keep_until_service_releases();
        drop(left);
        drop(theirs);
        assert_eq!(registry.vacated_by(mine), [name("a")]);
        assert!(registry.vacated_by("192.0.2.3".parse().unwrap()).is_empty());
        drop(here);
    }
}
