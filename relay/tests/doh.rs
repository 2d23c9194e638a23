//! DNS over HTTPS at /dns-query (RFC 8484), answered through the relay's upstream resolver:
//! a tiny DNS server on loopback is `[dns] upstream` and a raw HTTP/1.0 client asks the
//! relay. (BIND's `dig +https`/`+http-plain` speaks DoH over HTTP/2 only, and the client
//! listener is HTTP/1.1, which is what browsers' fetch, and so v86's DoH, use.)

mod common;

use std::net::{SocketAddr, UdpSocket};

use base64::Engine;
use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers `wisp.test. A` with 198.51.100.7 (TTL 300) and everything else with NXDOMAIN.
fn upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, OpCode::Query);
            reply.metadata.recursion_available = true;
            reply.add_queries(query.queries.clone());
            match query.queries.first() {
                Some(q)
                    if q.name().to_ascii() == "wisp.test." && q.query_type() == RecordType::A =>
                {
                    let a = RData::A(A::new(198, 51, 100, 7));
                    reply.add_answer(Record::from_rdata(q.name().clone(), 300, a));
                }
                _ => reply.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from);
        }
    });
    addr
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

/// One raw HTTP/1.0 exchange: (status code, body bytes).
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_https_get_and_post_through_the_upstream() {
    let mut config = test_config();
    config.dns.upstream = vec![upstream()];
    let relay = start(config).await;
    let addr = relay.listen_addr;

    // POST, as RFC 8484 section 4.1 shows it.
    let body = query("wisp.test.", 0);
    let head = format!(
        "POST /dns-query HTTP/1.0\r\nHost: test\r\nContent-Type: application/dns-message\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, answer) = http(addr, &head, &body).await;
    assert_eq!(status, 200);
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    assert_eq!(answer.answers[0].data, RData::A(A::new(198, 51, 100, 7)));

    // GET with base64url and no padding; the id is echoed; NXDOMAIN passes through.
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query("nx.test.", 4242));
    let head = format!("GET /dns-query?dns={encoded} HTTP/1.0\r\nHost: test\r\n\r\n");
    let (status, answer) = http(addr, &head, &[]).await;
    assert_eq!(status, 200);
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, 4242);
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    // Mistakes are HTTP errors with a reason.
    let head = "POST /dns-query HTTP/1.0\r\nHost: test\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(http(addr, head, b"abc").await.0, 415);
    let head = "GET /dns-query HTTP/1.0\r\nHost: test\r\n\r\n";
    assert_eq!(http(addr, head, &[]).await.0, 400);
    let head = "GET /dns-query?dns=AAAA HTTP/1.0\r\nHost: test\r\n\r\n";
    assert_eq!(http(addr, head, &[]).await.0, 400);

    relay.shutdown().await;

    // Off: no resolver on the listener.
    let mut config = test_config();
    config.dns.doh = false;
    let relay = start(config).await;
    let head = format!("GET /dns-query?dns={encoded} HTTP/1.0\r\nHost: test\r\n\r\n");
    assert_eq!(http(relay.listen_addr, &head, &[]).await.0, 404);
    relay.shutdown().await;
}
