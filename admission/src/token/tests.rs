//! Fixture tests: every token below was produced outside this crate, by
//! `admission/fixtures/gen_tokens.py` (HS256 by hand with Python's hmac/hashlib; EdDSA and
//! ES256 by PyJWT 2.15.1 over cryptography 50.0.2):
//!
//!     python3 admission/fixtures/gen_tokens.py
//!
//! Claims of the valid ones: {"lan": "physics-101", "exp": 2000000000, "sub": "alice",
//! "max_ports": 2, "rate": "10Mbit", "role": "teacher"}; "now" in these tests is NOW.
use super::*;

const NOW: u64 = 1_900_000_000;
const SECRET: &[u8] = b"current-secret-for-tests-0123456789";
const OLD_SECRET: &[u8] = b"previous-secret-for-tests-987654321";

const HS_VALID: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.ejzAs6uqCjhOfbphhpkhWxLY2_CYn0E2L6N9piopSKI";
const HS_OLD_SECRET: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.mOL6qBe6p-EjWHlwcIy5kw7GEwmd5CzPGi78cMkwKGo";
const HS_EXPIRED: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMTg5OTk5OTkwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.iQcFwbeLcKFJb1fshY8tBI-V-p0zSNS3FT8nP0jA6tg";
const HS_NBF_FUTURE: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIiwgIm5iZiI6IDE5MDAwMDAxMDB9.u_XDNAKqAGcoZ0Qx5VbmtXgY0EVLx4IbDi1xbev9-Mg";
const HS_PREFIX: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0qIiwgImV4cCI6IDIwMDAwMDAwMDAsICJzdWIiOiAiYWxpY2UiLCAibWF4X3BvcnRzIjogMiwgInJhdGUiOiAiMTBNYml0IiwgInJvbGUiOiAidGVhY2hlciJ9.7k-XCNoDXTpfAYo0ZSZVJhxDrGOzOWpzQRp94m-t1_A";
const HS_MINIMAL: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAiZGVmYXVsdCIsICJleHAiOiAyMDAwMDAwMDAwfQ.-UnFny1N3PzPVZqJb9r8QWlSTmj6jS2kxlNR3ZYhAD0";
const HS_NO_LAN: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJleHAiOiAyMDAwMDAwMDAwfQ.tj1v-5rwwzTSHF48XpesLkh6_1PEgX4UiWWoJ3Z-4GU";
const HS_NO_EXP: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAiZGVmYXVsdCJ9.p4EXtM-HSMwS4oMxvKx2_tRxlel90ADSOH6W4rpbrWA";
const HS_BAD_RATE: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICJmYXN0IiwgInJvbGUiOiAidGVhY2hlciJ9.SCeupfpe4y8ofnv4mvdk4DhqOJX11pRWYMpG7RGS2bE";
const HS_FLOAT_EXP: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAiZGVmYXVsdCIsICJleHAiOiAyMDAwMDAwMDAwLjV9.BBISgWyDdWpzkH5Iryvlm7LygqdWJ9PYDMdRnfOyOQ8";
const HS_CRIT: &str = "eyJhbGciOiAiSFMyNTYiLCAiY3JpdCI6IFsiZXhwIl0sICJleHAiOiAxfQ.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.HkyOxEtm52KXnCXhHujsUhLPHCWYYvWHUnzlXa_c4Fw";
const NONE_ALG: &str = "eyJhbGciOiAibm9uZSIsICJ0eXAiOiAiSldUIn0.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.";
const HS_WITH_ED_PEM: &str = "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJsYW4iOiAicGh5c2ljcy0xMDEiLCAiZXhwIjogMjAwMDAwMDAwMCwgInN1YiI6ICJhbGljZSIsICJtYXhfcG9ydHMiOiAyLCAicmF0ZSI6ICIxME1iaXQiLCAicm9sZSI6ICJ0ZWFjaGVyIn0.DASkkDL4-VH-c-LvTiVtXQRadxA9V7NoJtX4hDa5Pls";
const ED_VALID: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJsYW4iOiJwaHlzaWNzLTEwMSIsImV4cCI6MjAwMDAwMDAwMCwic3ViIjoiYWxpY2UiLCJtYXhfcG9ydHMiOjIsInJhdGUiOiIxME1iaXQiLCJyb2xlIjoidGVhY2hlciJ9.n6K3xeh2OqoYgHqr0fJHLEl5Nv8Ie2W7GoIccwBDGBsu_MYdJNlvI6C3wXRHTU6AA5u-kgcWvpOFxcH4qngHBw";
const ES_VALID: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJsYW4iOiJwaHlzaWNzLTEwMSIsImV4cCI6MjAwMDAwMDAwMCwic3ViIjoiYWxpY2UiLCJtYXhfcG9ydHMiOjIsInJhdGUiOiIxME1iaXQiLCJyb2xlIjoidGVhY2hlciJ9.3l6G66PquafTQoUcU6Oyo0rDREdySDYDjrqzHwF-5qia1BRY2V602_Yw-PMhUVoeVcF0kRPw-cdXSZGnEugPHw";
const ES_HIGH_S: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJsYW4iOiJwaHlzaWNzLTEwMSIsImV4cCI6MjAwMDAwMDAwMCwic3ViIjoiYWxpY2UiLCJtYXhfcG9ydHMiOjIsInJhdGUiOiIxME1iaXQiLCJyb2xlIjoidGVhY2hlciJ9.Ib8qWGUgEQmhbNP8qRbup_w4IbcmFOJNzviMtjkmhGrH2Sg8uZxwbMTkdgCsop_HMl94Sbapv8LhwaTHkq8cmA";
const ED_PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PUBLIC KEY-----\n";
const EC_PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbnAlhvzMCedc3M1x6kJlUOeR1jkS\nU5WOc1wBVlyYjTcu2FdFUN+tDXNPI3udr6z/P/8aGvcJ9a1XPzPPEB30KA==\n-----END PUBLIC KEY-----\n";
const ED_PUB_B64: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const EC_PUB_B64: &str =
    "BG5wJYb8zAnnXNzNcepCZVDnkdY5ElOVjnNcAVZcmI03LthXRVDfrQ1zTyN7na+s/z//Ghr3CfWtVz8zzxAd9Cg=";

/// `mint_hs256(SECRET, ..)` of the claims in `minting_matches_an_independent_hs256`, computed by:
///
///     python3 -c 'import base64,hmac,hashlib
///     b=lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
///     si=b(b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}")+"."+b(b"{\"lan\":\"physics-*\",\"exp\":1900007200,\"iat\":1900000000,\"sub\":\"bob\",\"rate\":\"1250KB\"}")
///     print(si+"."+b(hmac.new(b"current-secret-for-tests-0123456789",si.encode(),hashlib.sha256).digest()))'
const MINTED_BY_PYTHON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsYW4iOiJwaHlzaWNzLSoiLCJleHAiOjE5MDAwMDcyMDAsImlhdCI6MTkwMDAwMDAwMCwic3ViIjoiYm9iIiwicmF0ZSI6IjEyNTBLQiJ9.rLsJHovG521admfSbpUOOu01f-O930UOP82p5NEXNPo";

fn hs(secrets: &[&[u8]]) -> Verifier {
    Verifier::new(secrets.iter().map(|s| Key::hs256_secret(*s).unwrap()))
}

fn public(pems: &[&str]) -> Verifier {
    Verifier::new(pems.iter().map(|p| Key::public_key(p).unwrap()))
}

fn expected_claims() -> Claims {
    Claims {
        lan: "physics-101".into(),
        exp: 2_000_000_000,
        nbf: None,
        iat: None,
        sub: Some("alice".into()),
        max_ports: Some(2),
        rate: Some("10Mbit".parse().unwrap()),
        role: Some("teacher".into()),
    }
}

#[test]
fn valid_hs256_token_yields_its_claims() {
    let claims = hs(&[SECRET])
        .verify(Some(HS_VALID), "physics-101", NOW)
        .unwrap();
    assert_eq!(claims, expected_claims());
    assert_eq!(claims.rate.unwrap().bytes_per_sec(), 1_250_000);
    let minimal = hs(&[SECRET])
        .verify(Some(HS_MINIMAL), "default", NOW)
        .unwrap();
    assert_eq!(
        (minimal.lan.as_str(), minimal.sub, minimal.rate),
        ("default", None, None)
    );
}

#[test]
fn valid_eddsa_and_es256_tokens() {
    let both = public(&[ED_PUB_PEM, EC_PUB_PEM]);
    assert_eq!(
        both.verify(Some(ED_VALID), "physics-101", NOW).unwrap(),
        expected_claims()
    );
    assert_eq!(
        both.verify(Some(ES_VALID), "physics-101", NOW).unwrap(),
        expected_claims()
    );
    // OpenSSL leaves s un-normalised; P-256 JWS verifiers must accept a high s.
    assert_eq!(
        both.verify(Some(ES_HIGH_S), "physics-101", NOW).unwrap(),
        expected_claims()
    );
    // Raw base64 forms of the same keys.
    let raw = public(&[ED_PUB_B64, EC_PUB_B64]);
    assert!(raw.verify(Some(ED_VALID), "physics-101", NOW).is_ok());
    assert!(raw.verify(Some(ES_VALID), "physics-101", NOW).is_ok());
}

#[test]
fn rotated_secrets_keep_old_tokens_valid_while_listed() {
    let rotating = hs(&[SECRET, OLD_SECRET]);
    assert!(
        rotating
            .verify(Some(HS_OLD_SECRET), "physics-101", NOW)
            .is_ok()
    );
    assert!(rotating.verify(Some(HS_VALID), "physics-101", NOW).is_ok());
    let rotated = hs(&[SECRET]);
    assert_eq!(
        rotated.verify(Some(HS_OLD_SECRET), "physics-101", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn time_checks_honour_the_leeway() {
    let v = hs(&[SECRET]);
    let err = v.verify(Some(HS_EXPIRED), "physics-101", NOW).unwrap_err();
    assert_eq!(
        err,
        TokenError::Expired {
            exp: NOW - 100,
            now: NOW
        }
    );
    assert_eq!(err.reason(), "auth_expired");
    assert_eq!(
        err.to_string(),
        "join token expired 100 s ago: ask for a new token"
    );
    let lenient = hs(&[SECRET]).with_leeway(Duration::from_secs(101));
    assert!(lenient.verify(Some(HS_EXPIRED), "physics-101", NOW).is_ok());

    let err = v
        .verify(Some(HS_NBF_FUTURE), "physics-101", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::NotYetValid {
            nbf: NOW + 100,
            now: NOW
        }
    );
    assert_eq!(err.reason(), "auth_invalid");
    assert!(err.to_string().contains("not valid for another 100 s"));
    assert!(
        lenient
            .verify(Some(HS_NBF_FUTURE), "physics-101", NOW)
            .is_ok()
    );
    assert!(
        v.verify(Some(HS_NBF_FUTURE), "physics-101", NOW + 70)
            .is_ok(),
        "30 s leeway"
    );

    // Exactly at exp (with the leeway) is too late.
    let strict = hs(&[SECRET]).with_leeway(Duration::ZERO);
    assert!(
        strict
            .verify(Some(HS_VALID), "physics-101", 1_999_999_999)
            .is_ok()
    );
    assert!(
        strict
            .verify(Some(HS_VALID), "physics-101", 2_000_000_000)
            .is_err()
    );
}

#[test]
fn lan_scope_exact_and_prefix() {
    let v = hs(&[SECRET]);
    let err = v.verify(Some(HS_VALID), "physics-102", NOW).unwrap_err();
    assert_eq!(err.reason(), "auth_lan");
    assert_eq!(
        err.to_string(),
        r#"join token is for LAN "physics-101", not "physics-102": use the link for this LAN"#
    );
    assert!(v.verify(Some(HS_PREFIX), "physics-102", NOW).is_ok());
    assert!(v.verify(Some(HS_PREFIX), "physics-", NOW).is_ok());
    let err = v.verify(Some(HS_PREFIX), "chemistry-1", NOW).unwrap_err();
    assert_eq!(err.reason(), "auth_lan");
    let any = Claims::new("*", NOW, Duration::from_secs(60));
    assert!(any.allows_lan("whatever"));
}

#[test]
fn tampered_payload_and_wrong_key_are_bad_signatures() {
    let v = hs(&[SECRET]);
    // Swap the payload of a valid token for another LAN's, keeping the signature.
    let parts: Vec<&str> = HS_VALID.split('.').collect();
    let other: Vec<&str> = HS_PREFIX.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other[1], parts[2]);
    assert_eq!(
        v.verify(Some(&tampered), "physics-102", NOW),
        Err(TokenError::BadSignature)
    );
    let wrong = hs(&[b"some-other-secret-entirely-0123456789"]);
    assert_eq!(
        wrong.verify(Some(HS_VALID), "physics-101", NOW),
        Err(TokenError::BadSignature)
    );
    // An Ed25519 token against the P-256 key only: same family of error, not a panic.
    let ec_only = public(&[EC_PUB_PEM]);
    let err = ec_only
        .verify(Some(ED_VALID), "physics-101", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::AlgNotAllowed {
            alg: "EdDSA".into()
        }
    );
    // A flipped bit in an ES256 signature.
    let mut es = ES_VALID.as_bytes().to_vec();
    let last = es.len() - 5;
    es[last] = if es[last] == b'A' { b'B' } else { b'A' };
    let es = String::from_utf8(es).unwrap();
    let err = public(&[EC_PUB_PEM])
        .verify(Some(&es), "physics-101", NOW)
        .unwrap_err();
    assert_eq!(err, TokenError::BadSignature);
    assert_eq!(err.reason(), "auth_invalid");
}

#[test]
fn alg_none_and_alg_confusion_are_refused() {
    let v = hs(&[SECRET]);
    let err = v.verify(Some(NONE_ALG), "physics-101", NOW).unwrap_err();
    assert_eq!(err, TokenError::AlgNotAllowed { alg: "none".into() });
    assert_eq!(err.reason(), "auth_invalid");
    // HMAC keyed with the public key's PEM, against a verifier holding only that public key.
    let err = public(&[ED_PUB_PEM])
        .verify(Some(HS_WITH_ED_PEM), "physics-101", NOW)
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::AlgNotAllowed {
            alg: "HS256".into()
        }
    );
    // And the reverse: an EdDSA token against a secrets-only verifier.
    let err = v.verify(Some(ED_VALID), "physics-101", NOW).unwrap_err();
    assert_eq!(
        err,
        TokenError::AlgNotAllowed {
            alg: "EdDSA".into()
        }
    );
    // An empty verifier refuses everything.
    assert!(
        Verifier::new([])
            .verify(Some(HS_VALID), "physics-101", NOW)
            .is_err()
    );
}

#[test]
fn missing_long_and_malformed_tokens() {
    let v = hs(&[SECRET]);
    assert_eq!(v.verify(None, "x", NOW), Err(TokenError::Missing));
    assert_eq!(v.verify(Some(""), "x", NOW), Err(TokenError::Missing));
    assert_eq!(TokenError::Missing.reason(), "auth_missing");
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        v.verify(Some(&long), "x", NOW),
        Err(TokenError::TooLong { len: 4097 })
    );
    for bad in [
        "abc",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "!!.b.c",
        "e30.e30.e30.",
        "e30=.e30.c",
    ] {
        let err = v.verify(Some(bad), "x", NOW).unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{bad}: {err:?}");
        assert_eq!(err.reason(), "auth_invalid");
    }
    assert_eq!(
        v.verify(Some(HS_CRIT), "physics-101", NOW),
        Err(TokenError::Malformed("unsupported crit header"))
    );
    // Padding on an otherwise valid token: not canonical base64url.
    let padded = HS_VALID.replacen('.', "=.", 1);
    assert!(matches!(
        v.verify(Some(&padded), "physics-101", NOW),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn claims_are_validated_after_the_signature() {
    let v = hs(&[SECRET]);
    let err = |token| {
        v.verify(Some(token), "default", NOW)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(HS_NO_LAN).contains("missing field `lan`"),
        "{}",
        err(HS_NO_LAN)
    );
    assert!(err(HS_NO_EXP).contains("missing field `exp`"));
    assert!(
        err(HS_BAD_RATE).contains("rate does not start with a number"),
        "{}",
        err(HS_BAD_RATE)
    );
    let floats = v.verify(Some(HS_FLOAT_EXP), "default", NOW).unwrap();
    assert_eq!(floats.exp, 2_000_000_000);
}

#[test]
fn minting_matches_an_independent_hs256() {
    let mut claims = Claims::new("physics-*", NOW, Duration::from_secs(2 * 3600));
    claims.sub = Some("bob".into());
    claims.rate = Some("10Mbit".parse().unwrap());
    let token = mint_hs256(SECRET, &claims);
    assert_eq!(token, MINTED_BY_PYTHON);
    let back = hs(&[SECRET])
        .verify(Some(&token), "physics-7", NOW)
        .unwrap();
    assert_eq!(back, claims);
}

#[test]
fn keys_parse_and_refuse_clearly() {
    assert_eq!(
        Key::hs256_secret(*b"short").unwrap_err(),
        KeyError::ShortSecret(5)
    );
    assert_eq!(
        Key::public_key(ED_PUB_PEM).unwrap().algorithm(),
        Algorithm::EdDsa
    );
    assert_eq!(
        Key::public_key(EC_PUB_PEM).unwrap().algorithm(),
        Algorithm::Es256
    );
    assert_eq!(
        Key::public_key(ED_PUB_B64).unwrap().algorithm(),
        Algorithm::EdDsa
    );
    assert_eq!(
        Key::public_key(EC_PUB_B64).unwrap().algorithm(),
        Algorithm::Es256
    );
    // SPKI DER as base64: the PEM body on one line.
    let der: String = EC_PUB_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(Key::public_key(&der).unwrap().algorithm(), Algorithm::Es256);
    let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\n-----END PRIVATE KEY-----\n";
    assert_eq!(Key::public_key(private).unwrap_err(), KeyError::PrivateKey);
    assert_eq!(
        Key::public_key("not base64 at all!").unwrap_err(),
        KeyError::NotBase64
    );
    assert_eq!(
        Key::public_key("AAAA").unwrap_err(),
        KeyError::UnsupportedRaw(3)
    );
    let not_a_point = format!("BA{}", "A".repeat(85));
    assert_eq!(
        Key::public_key(&not_a_point).unwrap_err(),
        KeyError::InvalidPoint("P-256")
    );
    let secret = Key::hs256_secret(SECRET).unwrap();
    assert_eq!(format!("{secret:?}"), "Key(HS256, 35 byte secret)");
}

#[test]
fn redaction_never_shows_a_token_whole() {
    assert_eq!(redact(HS_VALID), "eyJhbGci…");
    assert_eq!(redact("abcd"), "ab…");
    assert_eq!(redact("a"), "…");
    assert_eq!(redact(""), "…");
    assert_eq!(redact("\u{1b}[2Jxxxxxxxxxxxxxxxxx"), "?[2Jxxxx…");
    assert_eq!(redact("ééééééééééééééééé"), "éééééééé…");
}

#[test]
fn bearer_header() {
    assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
    assert_eq!(bearer("bearer   tok "), Some("tok"));
    assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
    assert_eq!(bearer("Bearer "), None);
    assert_eq!(bearer("Bearer"), None);
}

#[test]
fn every_error_has_a_listed_reason_and_a_one_line_message() {
    let errors = [
        TokenError::Missing,
        TokenError::TooLong { len: 5000 },
        TokenError::Malformed("header"),
        TokenError::AlgNotAllowed { alg: "none".into() },
        TokenError::BadSignature,
        TokenError::Invalid("missing field `lan`".into()),
        TokenError::Expired { exp: 1, now: 2 },
        TokenError::NotYetValid { nbf: 2, now: 1 },
        TokenError::WrongLan {
            allowed: "a".into(),
            requested: "b".into(),
        },
    ];
    for err in errors {
        assert!(TokenError::REASONS.contains(&err.reason()), "{err:?}");
        let text = err.to_string();
        assert!(!text.contains('\n') && text.contains(": "), "{text}");
    }
}
