//! Feeds arbitrary strings to `admission`'s parsers of untrusted input: the join-token
//! verifier (against HS256, EdDSA and ES256 keys, so every `alg` branch is reachable), the
//! `Authorization: Bearer` reader, the rate parser (the `rate` claim) and the forwarding
//! headers. None may panic; a few invariants are checked on the way.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use admission::token::{self, MAX_TOKEN_LEN};
use admission::{ForwardedHeader, Key, Rate, TrustedProxies, Verifier};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_900_000_000;
const SECRET: &[u8] = b"current-secret-for-tests-0123456789";
/// The Ed25519 and P-256 keys of admission's fixture tests (admission/fixtures/gen_tokens.py).
const ED_PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PUBLIC KEY-----\n";
const EC_PUB_B64: &str =
    "BG5wJYb8zAnnXNzNcepCZVDnkdY5ElOVjnNcAVZcmI03LthXRVDfrQ1zTyN7na+s/z//Ghr3CfWtVz8zzxAd9Cg=";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new([
            Key::hs256_secret(SECRET).expect("fuzz secret is long enough"),
            Key::public_key(ED_PUB_PEM).expect("fixture Ed25519 key"),
            Key::public_key(EC_PUB_B64).expect("fixture P-256 key"),
        ])
    })
}

fn proxies(header: ForwardedHeader) -> TrustedProxies {
    TrustedProxies::parse(["127.0.0.1/32", "10.0.0.0/8", "::1"])
        .expect("fuzz proxies parse")
        .with_header(header)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the requested LAN, the rest the token (so LAN matching is reached).
    let (lan, input) = text.split_once('\n').unwrap_or(("physics-101", text));
    match verifier().verify(Some(input), lan, NOW) {
        Ok(claims) => assert!(claims.allows_lan(lan) && claims.exp > NOW - 30),
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "one-line message: {message:?}");
            // Short whatever the input: a message quotes at most a few short fields.
            assert!(message.chars().count() <= 300, "short message: {message:?}");
            if input.len() > MAX_TOKEN_LEN {
                assert_eq!(err.reason(), "auth_invalid");
            }
        }
    }
    if let Some(token) = token::bearer(input) {
        let _ = verifier().verify(Some(token), lan, NOW);
    }
    assert!(token::redact(input).chars().count() <= 9);
    if let Ok(rate) = input.parse::<Rate>() {
        assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
    }
    let _ = Key::public_key(input);
    let peer: IpAddr = "127.0.0.1".parse().expect("literal");
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let _ = proxies(header).client_ip(peer, Some(input), Some(input));
    }
});
