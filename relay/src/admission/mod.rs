//! Layer 3: admission control, between a transport's accept and `LanRegistry::join`, one
//! place for every transport (docs/architecture.md, "Layers"). A join is checked for its
//! client address's limits first (so a storm of refused joins costs no more than a counter)
//! and then for its token; what is refused gets 401 or 429 with a one-line reason before
//! any upgrade, and a count under its reason in `/metrics`.
//!
//! The checks themselves are the sans-IO `admission` crate's; this file holds their shared
//! state: the reloadable policy (keys, trusted proxies, limits), the per-address table, and
//! the refusal counters. An [`Admitted`] join holds its address's slot until it is dropped,
//! and writes the audit record of the session's end.

mod audit;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use admission::{Claims, IpLimiter, LanPermit, Permit, TokenError, TrustedProxies, Verifier};

use crate::config::Config;
use crate::lan::{LanCreator, LanPermitBox};
use crate::shared::metrics::Family;
use crate::shared::{LanName, Transport};

pub(crate) use audit::{Session, refused as audit_refused};

/// Most client addresses tracked at once; beyond, new addresses are refused
/// (`ip_table_full`) rather than the table growing.
const MAX_TRACKED_IPS: usize = 1 << 18;

labels::label_enum! {
    /// Why a join (or a connection before it became one) was refused.
    pub(crate) enum RefusalReason {
        AuthMissing => "auth_missing",
        AuthInvalid => "auth_invalid",
        AuthExpired => "auth_expired",
        AuthLan => "auth_lan",
        IpConnections => "ip_connections",
        IpRate => "ip_rate",
        IpLans => "ip_lans",
        IpTableFull => "ip_table_full",
        /// The token's `max_ports` claim: that many sessions hold it already.
        TokenPorts => "token_ports",
        /// A request head that did not arrive in time (slowloris).
        HeadTimeout => "head_timeout",
        /// A request head over the size limit (431).
        HeadTooLarge => "head_too_large",
        /// Too many connections still in their handshake.
        Handshakes => "handshakes",
    }
}

impl RefusalReason {
    fn of_token(error: &TokenError) -> Self {
        match error.reason() {
            "auth_missing" => RefusalReason::AuthMissing,
            "auth_expired" => RefusalReason::AuthExpired,
            "auth_lan" => RefusalReason::AuthLan,
            _ => RefusalReason::AuthInvalid,
        }
    }

    fn of_limit(refusal: &admission::Refusal) -> Self {
        match refusal.reason() {
            "ip_connections" => RefusalReason::IpConnections,
            "ip_rate" => RefusalReason::IpRate,
            "ip_lans" => RefusalReason::IpLans,
            _ => RefusalReason::IpTableFull,
        }
    }
}

/// A refused join: the HTTP status (401 or 429), the reason label and a one-line message
/// for the person (never the token).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) reason: RefusalReason,
    pub(crate) message: String,
}

/// What a join says about itself, as the transport read it.
#[derive(Debug)]
pub(crate) struct JoinRequest<'a> {
    /// The TCP or UDP peer.
    pub(crate) peer: IpAddr,
    /// `X-Forwarded-For` / `Forwarded`, believed only from `server.trusted_proxies`.
    pub(crate) x_forwarded_for: Option<&'a str>,
    pub(crate) forwarded: Option<&'a str>,
    pub(crate) lan: &'a LanName,
    /// `?token=` of the join URL.
    pub(crate) token: Option<&'a str>,
    pub(crate) transport: Transport,
}

/// The parts of the config admission reads; swapped whole on reload.
#[derive(Debug)]
struct Policy {
    verifier: Option<Verifier>,
    proxies: TrustedProxies,
}

/// Admission state shared by every transport.
#[derive(Debug)]
pub(crate) struct Admission {
    policy: RwLock<Arc<Policy>>,
    limiter: Mutex<IpLimiter>,
    /// Open sessions per token that carries `max_ports`, keyed by a keyed hash of its
    /// signature; an entry lives only while such a session does, so the table is bounded by
    /// the connection limits.
    token_ports: Mutex<HashMap<u64, u32>>,
    token_hasher: RandomState,
    refusals: [AtomicU64; RefusalReason::COUNT],
}

fn policy(config: &Config) -> Result<Policy, String> {
    Ok(Policy {
        verifier: config.auth.verifier()?,
        proxies: TrustedProxies::parse(&config.server.trusted_proxies)
            .map_err(|e| format!("server.trusted_proxies: {e}"))?,
    })
}

fn limiter(config: &Config) -> IpLimiter {
    let l = &config.limits;
    IpLimiter::new(
        l.max_connections_per_ip,
        l.new_connections_per_ip_per_sec,
        l.new_connections_per_ip_burst,
        MAX_TRACKED_IPS,
    )
    .with_max_lans_per_ip(l.max_lans_per_ip)
}

/// Seconds since 1970, for token validity.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Admission {
    /// The config was validated, so building the policy cannot fail here; if it does, the
    /// error says why.
    pub(crate) fn new(config: &Config) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            policy: RwLock::new(Arc::new(policy(config)?)),
            limiter: Mutex::new(limiter(config)),
            token_ports: Mutex::new(HashMap::new()),
            token_hasher: RandomState::new(),
            refusals: Default::default(),
        }))
    }

    /// Takes keys, trusted proxies and limits from a new config; live sessions stay.
    pub(crate) fn reload(&self, config: &Config) -> Result<(), String> {
        let policy = Arc::new(policy(config)?);
        if let Ok(mut current) = self.policy.write() {
            *current = policy;
        }
        if let Ok(mut table) = self.limiter.lock() {
            table.set_limits(
                config.limits.max_connections_per_ip,
                config.limits.new_connections_per_ip_per_sec,
                config.limits.new_connections_per_ip_burst,
                config.limits.max_lans_per_ip,
                Instant::now(),
            );
        }
        Ok(())
    }

    fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether joins need a token.
    pub(crate) fn auth_enabled(&self) -> bool {
        self.policy().verifier.is_some()
    }

    /// Counts a refusal that happened outside [`Admission::admit`] (a slow request head).
    pub(crate) fn count(&self, reason: RefusalReason) {
        self.refusals[reason.index()].fetch_add(1, Relaxed);
    }

    fn refuse(&self, status: u16, reason: RefusalReason, message: String) -> Refused {
        self.count(reason);
        Refused {
            status,
            reason,
            message,
        }
    }

    /// The client address a request stands for: the peer, or what a trusted proxy says.
    pub(crate) fn client_ip(&self, request: &JoinRequest<'_>) -> IpAddr {
        self.policy()
            .proxies
            .client_ip(request.peer, request.x_forwarded_for, request.forwarded)
    }

    /// Checks one join: the address's limits, then the token.
    pub(crate) fn admit(
        self: &Arc<Self>,
        request: &JoinRequest<'_>,
        now: Instant,
    ) -> Result<Admitted, Refused> {
        let policy = self.policy();
        let client_ip =
            policy
                .proxies
                .client_ip(request.peer, request.x_forwarded_for, request.forwarded);
        let permit = self.lock_limiter().try_admit(client_ip, now);
        let permit = permit.map_err(|refusal| {
            self.refuse(429, RefusalReason::of_limit(&refusal), refusal.to_string())
        })?;
        let claims = match &policy.verifier {
            None => None,
            Some(verifier) => {
                match verifier.verify(request.token, request.lan.as_str(), unix_now()) {
                    Ok(claims) => Some(claims),
                    Err(error) => {
                        self.lock_limiter().release(permit, now);
                        let reason = RefusalReason::of_token(&error);
                        return Err(self.refuse(401, reason, error.to_string()));
                    }
                }
            }
        };
        let token_slot = match (&claims, request.token) {
            (
                Some(Claims {
                    max_ports: Some(max),
                    ..
                }),
                Some(token),
            ) => match self.take_token_port(token, *max) {
                Ok(slot) => Some(slot),
                Err(refused) => {
                    self.lock_limiter().release(permit, now);
                    return Err(refused);
                }
            },
            _ => None,
        };
        Ok(Admitted {
            admission: self.clone(),
            permit: Some(permit),
            token_slot,
            client_ip,
            claims,
            transport: request.transport,
            reserved_lan: Mutex::new(None),
        })
    }

    /// Takes one of the token's `max_ports` sessions; the key is the token's signature, so
    /// every copy of one token counts together.
    fn take_token_port(&self, token: &str, max: u32) -> Result<u64, Refused> {
        let signature = token.rsplit('.').next().unwrap_or(token);
        let key = self.token_hasher.hash_one(signature);
        let mut table = self
            .token_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = table.entry(key).or_insert(0);
        if *open >= max {
            let message = format!(
                "this token allows {max} machine(s) at once and all are in use: close one, or ask for a token with a larger max_ports"
            );
            if *open == 0 {
                table.remove(&key);
            }
            drop(table);
            return Err(self.refuse(429, RefusalReason::TokenPorts, message));
        }
        *open += 1;
        Ok(key)
    }

    fn release_token_port(&self, key: u64) {
        let mut table = self
            .token_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = table.get_mut(&key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                table.remove(&key);
            }
        }
    }

    /// Checks a token shown to the admin API for LAN `lan`: signed by a key of `[auth]`,
    /// valid now, its `lan` claim covering `lan`, and its `role` claim `role` (a teacher's
    /// capture and controls). The error is one line for a 401 body, never the token.
    pub(crate) fn verify_role(
        &self,
        token: &str,
        lan: &LanName,
        role: &str,
    ) -> Result<Claims, String> {
        let policy = self.policy();
        let Some(verifier) = &policy.verifier else {
            return Err("join tokens are off ([auth] has no keys): use the admin token".into());
        };
        let claims = verifier
            .verify(Some(token), lan.as_str(), unix_now())
            .map_err(|error| error.to_string())?;
        if claims.role.as_deref() != Some(role) {
            return Err(format!(
                "this token's role is not {role:?}: mint one with \"role\": \"{role}\""
            ));
        }
        Ok(claims)
    }

    fn lock_limiter(&self) -> std::sync::MutexGuard<'_, IpLimiter> {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets addresses with nothing open and a full bucket; the relay calls this about
    /// once a second.
    pub(crate) fn handle_timeout(&self, now: Instant) {
        self.lock_limiter().sweep(now);
    }

    /// `/metrics`: refusals by reason and the addresses tracked.
    pub(crate) fn families(&self) -> Vec<Family> {
        vec![
            Family::counters_by(
                "joins_refused",
                "Joins and connections refused before the upgrade, by reason",
                "reason",
                RefusalReason::ALL.map(|r| (r.as_str(), self.refusals[r.index()].load(Relaxed))),
            ),
            Family::gauge(
                "client_addresses_tracked",
                "Client addresses with open connections or recent joins",
                self.lock_limiter().tracked_ips() as i64,
            ),
        ]
    }
}

/// An admitted join. It holds its address's connection slot until dropped; the transport
/// keeps it for the life of the session.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    permit: Option<Permit>,
    /// One of the token's `max_ports` sessions, when it has that claim.
    token_slot: Option<u64>,
    pub(crate) client_ip: IpAddr,
    pub(crate) claims: Option<Claims>,
    pub(crate) transport: Transport,
    /// A LAN permit taken before the upgrade for a LAN this join will create.
    reserved_lan: Mutex<Option<LanPermit>>,
}

/// Holds one of an address's LANs (`limits.max_lans_per_ip`) while the LAN exists.
#[derive(Debug)]
struct LanGuard {
    admission: Arc<Admission>,
    permit: Option<LanPermit>,
}

impl Drop for LanGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.admission
                .lock_limiter()
                .release_lan(permit, Instant::now());
        }
    }
}

impl LanCreator for Admitted {
    fn port_rate(&self) -> Option<u64> {
        self.claims.as_ref()?.rate.map(|rate| rate.bytes_per_sec())
    }

    fn permit_new_lan(&self) -> Result<LanPermitBox, String> {
        let reserved = self.reserved_lan.lock().ok().and_then(|mut r| r.take());
        let permit = match reserved {
            Some(permit) => permit,
            None => self.take_lan_permit().map_err(|refused| refused.message)?,
        };
        Ok(Box::new(LanGuard {
            admission: self.admission.clone(),
            permit: Some(permit),
        }))
    }
}

impl Admitted {
    fn take_lan_permit(&self) -> Result<LanPermit, Refused> {
        let taken = self
            .admission
            .lock_limiter()
            .try_create_lan(self.client_ip, Instant::now());
        taken.map_err(|refusal| {
            let reason = RefusalReason::of_limit(&refusal);
            self.admission.refuse(429, reason, refusal.to_string())
        })
    }

    /// Before the upgrade, for a join that will create its LAN: takes the address's LAN
    /// permit now, so that a refusal is a 429 rather than a closed socket.
    pub(crate) fn reserve_lan(&self) -> Result<(), Refused> {
        let permit = self.take_lan_permit()?;
        if let Ok(mut reserved) = self.reserved_lan.lock() {
            *reserved = Some(permit);
        }
        Ok(())
    }

    /// The token's subject, for logs and the admin API (never a metric label).
    pub(crate) fn subject(&self) -> Option<&str> {
        self.claims.as_ref().and_then(|c| c.sub.as_deref())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(key) = self.token_slot.take() {
            self.admission.release_token_port(key);
        }
        if let Some(permit) = self.permit.take() {
            self.admission
                .lock_limiter()
                .release(permit, Instant::now());
        }
    }
}
