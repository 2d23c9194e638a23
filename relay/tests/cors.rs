//! The CORS proxy at /cors/ (v86's fetch backend) against small HTTP servers on loopback,
//! which `[nat] allow` rules open for the proxy port by port: a page through a redirect
//! with its cookies dropped and CORS headers added; 127.0.0.1 without a rule and a
//! redirect to 10.0.0.1 refused with 403; a body over the limit refused; preflights;
//! tokens; /net/info's `cors_proxy`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Serves `response` (a whole HTTP/1.1 answer) to every connection; returns its port.
async fn canned(response: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // The request head comes back in a header, so the test sees what was sent.
                let seen = String::from_utf8_lossy(&head).replace("\r\n", " | ");
                let response =
                    response.replacen("\r\n\r\n", &format!("\r\nx-seen: {seen}\r\n\r\n"), 1);
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// One request to the relay: (status code, lower-case head, body).
async fn request(
    relay: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(relay).await.unwrap();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_owned())
}

fn encoded(url: &str) -> String {
    form_urlencoded::byte_serialize(url.as_bytes()).collect()
}

#[tokio::test]
async fn proxy_follows_allowed_redirects_and_refuses_the_rest() {
    let page = canned(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: s=1\r\nContent-Length: 5\r\n\r\nhello"
            .to_owned(),
    )
    .await;
    let to_page = canned(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{page}/page\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    let to_private = canned(
        "HTTP/1.1 301 Moved\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n".to_owned(),
    )
    .await;
    let big = canned(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n{}",
        "x".repeat(4096)
    ))
    .await;
    let mut config = test_config();
    config.cors.enabled = true;
    config.cors.max_body_bytes = 2048;
    config.nat.allow = [page, to_page, to_private, big]
        .iter()
        .map(|p| format!("127.0.0.1/32:{p}"))
        .collect();
    config.server.allowed_origins = vec!["https://class.example".to_owned()];
    let relay = start(config).await;
    let addr = relay.listen_addr;

    let path = format!(
        "/cors/{}",
        encoded(&format!("http://127.0.0.1:{to_page}/start"))
    );
    let extra = "Origin: https://class.example\r\nCookie: secret=1\r\nX-Guest: yes\r\n";
    let (code, head, body) = request(addr, "GET", &path, extra).await;
    assert_eq!((code, body.as_str()), (200, "hello"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://class.example"),
        "{head}"
    );
    assert!(!head.contains("set-cookie"), "{head}");
    // The last hop got the guest's header, its own Host, and no cookie or Origin.
    let seen = head
        .lines()
        .find(|l| l.starts_with("x-seen:"))
        .unwrap_or_default();
    assert!(
        seen.contains("x-guest: yes") && seen.contains(&format!("host: 127.0.0.1:{page}")),
        "{seen}"
    );
    assert!(
        !seen.contains("secret=1") && !seen.contains("origin:"),
        "{seen}"
    );

    // Loopback without an allow rule, and a redirect to a private address: 403.
    for target in [
        "http://127.0.0.1:9/".to_owned(),
        format!("http://127.0.0.1:{to_private}/"),
    ] {
        let (code, head, body) =
            request(addr, "GET", &format!("/cors/{}", encoded(&target)), extra).await;
        assert_eq!(code, 403, "{target}: {head}\n{body}");
        assert!(body.contains("egress policy"), "{body}");
        assert!(
            head.contains("access-control-allow-origin"),
            "errors carry CORS too: {head}"
        );
    }
    // Over max_body_bytes: refused before any byte when the length is declared.
    let (code, ..) = request(
        addr,
        "GET",
        &format!("/cors/{}", encoded(&format!("http://127.0.0.1:{big}/"))),
        "",
    )
    .await;
    assert_eq!(code, 502);
    // Another origin, and a preflight.
    let (code, ..) = request(addr, "GET", &path, "Origin: https://evil.example\r\n").await;
    assert_eq!(code, 403);
    let preflight = "Origin: https://class.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-guest\r\n";
    let (code, head, _) = request(addr, "OPTIONS", &path, preflight).await;
    assert_eq!(code, 204);
    assert!(
        head.contains("access-control-allow-headers: x-guest"),
        "{head}"
    );
    // /net/info names the proxy's prefix for v86's cors_proxy.
    let (_, info) = http_get(addr, "/net/info?token=a/b").await;
    let want = format!(
        r#""cors_proxy":"http://test:{}/cors/token/a%2Fb/""#,
        addr.port()
    );
    assert!(info.contains(&want), "{info}");
    relay.shutdown().await;
}

#[tokio::test]
async fn proxy_is_off_by_default_and_needs_a_token_with_auth() {
    let page = canned("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned()).await;
    let target = encoded(&format!("http://127.0.0.1:{page}/"));
    let mut config = test_config();
    config.nat.allow = vec![format!("127.0.0.1/32:{page}")];
    let relay = start(config.clone()).await;
    let (code, ..) = request(relay.listen_addr, "GET", &format!("/cors/{target}"), "").await;
    assert_eq!(code, 404, "off unless [cors] enabled");
    let (_, info) = http_get(relay.listen_addr, "/net/info").await;
    assert!(!info.contains("cors_proxy"), "{info}");
    relay.shutdown().await;

    config.cors.enabled = true;
    config.auth.secrets = vec![SECRET.to_owned()];
    let relay = start(config).await;
    let claims = admission::Claims::new("wisp", relay::app::unix_now(), Duration::from_secs(600));
    let token = admission::mint_hs256(SECRET.as_bytes(), &claims);
    let addr = relay.listen_addr;
    let (code, ..) = request(addr, "GET", &format!("/cors/{target}"), "").await;
    assert!(matches!(code, 401 | 403), "no token: {code}");
    let (code, _, body) = request(addr, "GET", &format!("/cors/token/{token}/{target}"), "").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, ..) = request(addr, "GET", &format!("/cors/{target}?token={token}"), "").await;
    assert_eq!(code, 200);
    relay.shutdown().await;
}
