//! What occupies an address of the pool.

use std::time::Instant;

use crate::lease::{ClientKey, Lease};

/// What occupies an address.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Reserved by an OFFER until the client requests it or the offer times out.
    Offered {
        key: ClientKey,
        expires: Instant,
    },
    Bound(Lease),
    /// Declined by a client (someone else uses it); kept out of the pool for a while.
    Quarantined {
        until: Instant,
    },
}

impl Slot {
    pub(super) fn deadline(&self) -> Instant {
        match self {
            Slot::Offered { expires, .. } => *expires,
            Slot::Bound(lease) => lease.expires,
            Slot::Quarantined { until } => *until,
        }
    }

    pub(super) fn key(&self) -> Option<ClientKey> {
        match self {
            Slot::Offered { key, .. } => Some(key.clone()),
            Slot::Bound(lease) => Some(lease.key()),
            Slot::Quarantined { .. } => None,
        }
    }

    pub(super) fn is_owned_by(&self, key: &ClientKey) -> bool {
        match self {
            Slot::Offered { key: owner, .. } => owner == key,
            Slot::Bound(lease) => match (key, &lease.client_id) {
                (ClientKey::ClientId(id), Some(lease_id)) => id == lease_id,
                (ClientKey::Mac(mac), None) => *mac == lease.chaddr,
                _ => false,
            },
            Slot::Quarantined { .. } => false,
        }
    }

    pub(super) fn lease(&self) -> Option<&Lease> {
        match self {
            Slot::Bound(lease) => Some(lease),
            _ => None,
        }
    }
}
