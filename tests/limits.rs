//! Listener bounds (`[server]` limits) against a real server on `127.0.0.1:0`: half-sent
//! requests are dropped, the connection cap holds per listener, an unauthenticated body is
//! refused before it is read, and HTTP/2 announces its limits.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use common::{ADMIN, Options, PROJECT, Server, token};

/// A bound on waiting for something the server must do promptly; reaching it fails the test.
const BOUND: Duration = Duration::from_secs(30);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET /healthz` (static-table names, literal values, no Huffman).
fn get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 1, b'x']);
    block
}

/// The frames the server sends until it closes the connection, as (type, flags, payload).
async fn frames_until_closed(tcp: &mut TcpStream) -> Vec<(u8, u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the server closes the connection");
    parse_frames(&bytes)
}

fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the server closes the connection");
    out
}

/// Reads one HTTP/1 response head (and whatever came with it).
async fn read_response_head(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the server answers");
    String::from_utf8_lossy(&out).into_owned()
}

async fn start(server_extra: &str) -> Server {
    Server::start_with(Options {
        server_extra: server_extra.to_owned(),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn half_sent_http1_request_is_dropped() {
    let server = start("header_read_timeout = \"200ms\"").await;
    let mut tcp = TcpStream::connect(server.admin).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let sent = read_until_closed(&mut tcp).await;
    assert!(
        !String::from_utf8_lossy(&sent).contains(" 200 "),
        "{sent:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn silent_connection_is_dropped_on_both_listeners() {
    let server = start("header_read_timeout = \"200ms\"").await;
    for addr in [server.extauthz, server.admin] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        read_until_closed(&mut tcp).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn half_sent_http2_headers_are_dropped_on_both_listeners() {
    let server = start("header_read_timeout = \"200ms\"").await;
    for addr in [server.extauthz, server.admin] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        // A header block that never ends: END_HEADERS is not set and no CONTINUATION follows.
        tcp.write_all(&frame(HEADERS, END_STREAM, 1, &[0x83, 0x86]))
            .await
            .unwrap();
        let frames = frames_until_closed(&mut tcp).await;
        assert!(
            !frames.iter().any(|(kind, ..)| *kind == HEADERS),
            "{addr}: no response to a request whose head never completed: {frames:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn half_sent_http2_headers_after_a_request_are_dropped_by_the_keepalive() {
    // The first request completes, so only the keep-alive ping (which a client in the middle
    // of a header block cannot answer) can end the second one.
    let server = start(
        "header_read_timeout = \"60s\"\nhttp2_keepalive_interval = \"100ms\"\nhttp2_keepalive_timeout = \"100ms\"",
    )
    .await;
    let mut tcp = TcpStream::connect(server.admin).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tcp.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_healthz()))
        .await
        .unwrap();
    tcp.write_all(&frame(HEADERS, END_STREAM, 3, &[0x82, 0x86]))
        .await
        .unwrap();
    let frames = frames_until_closed(&mut tcp).await;
    assert!(
        frames.iter().any(|(kind, ..)| *kind == HEADERS),
        "the first request was answered: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|(kind, flags, _)| *kind == PING && flags & 1 == 0),
        "the server pinged: {frames:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn http2_limits_are_announced_on_both_listeners() {
    let server =
        start("http2_max_concurrent_streams = 7\nmax_header_bytes = 9000\nheader_read_timeout = \"200ms\"")
            .await;
    for addr in [server.extauthz, server.admin] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let frames = frames_until_closed(&mut tcp).await;
        let (_, _, settings) = frames
            .iter()
            .find(|(kind, flags, _)| *kind == SETTINGS && flags & 1 == 0)
            .unwrap_or_else(|| panic!("{addr}: the server's SETTINGS: {frames:?}"));
        let values: Vec<(u16, u32)> = settings
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        assert!(
            values.contains(&(0x3, 7)),
            "{addr}: MAX_CONCURRENT_STREAMS: {values:?}"
        );
        assert!(
            values.contains(&(0x6, 9000)),
            "{addr}: MAX_HEADER_LIST_SIZE: {values:?}"
        );
    }
    server.stop().await;
}

/// Sends a whole `GET /healthz` on a new connection; the response head, or "" when the
/// connection was closed without one.
async fn healthz_on(tcp: &mut TcpStream) -> String {
    if tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    read_response_head(tcp).await
}

#[tokio::test]
async fn connection_cap_is_per_listener_and_admin_exhaustion_leaves_checks_alone() {
    let server = start(
        "admin_max_connections = 2\nextauthz_max_connections = 1\nheader_read_timeout = \"60s\"",
    )
    .await;
    // Two admin connections, each answered, so each holds a slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(server.admin).await.unwrap();
        assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    // A third is accepted and closed at once, unanswered.
    let mut third = TcpStream::connect(server.admin).await.unwrap();
    assert_eq!(healthz_on(&mut third).await, "");
    assert!(read_until_closed(&mut third).await.is_empty());

    // The ext_authz listener has its own slots: a Check is answered.
    let mut client = server.client().await;
    let mut request = common::check_request(None, "api.example.com", "/");
    let extensions = &mut request.attributes.as_mut().unwrap().context_extensions;
    extensions.insert("environment".into(), "prod".into());
    extensions.insert("deployment".into(), "orders".into());
    let outcome = common::Outcome::from(
        client
            .check(request)
            .await
            .expect("Check answers while the admin listener is full")
            .into_inner(),
    );
    assert_eq!(outcome.http, 401);
    // ...and its own cap: the client's connection is its only one.
    let mut extra = TcpStream::connect(server.extauthz).await.unwrap();
    let _ = extra.write_all(PREFACE).await;
    assert!(read_until_closed(&mut extra).await.is_empty());

    // A slot freed on the admin listener is usable again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(server.admin).await.unwrap();
        if healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "a freed admin slot is reused");
    let (_, metrics) = server.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for listener in ["admin", "ext_authz"] {
        assert!(
            metrics.contains(&format!(
                "verifyiam_connections_refused_total{{listener=\"{listener}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("verifyiam_connections_open{listener=\"admin\"}"),
        "{metrics}"
    );
    drop(client);
    drop(held);
    server.stop().await;
}

async fn post_head(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    length: usize,
) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    );
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test]
async fn unauthenticated_body_is_refused_before_it_is_read() {
    let server = start("").await;
    let path = format!("/v1/projects/{PROJECT}:setIamPolicy");
    for authorization in [None, Some("Bearer not-a-token")] {
        // Announces 2 MB and sends none of it: the answer comes anyway.
        let mut tcp = post_head(server.admin, &path, authorization, 2 * 1024 * 1024).await;
        let head = read_response_head(&mut tcp).await;
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{authorization:?}: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn authenticated_body_over_the_limit_is_413() {
    let server = start("max_body_bytes = 4096").await;
    let path = format!("/v1/projects/{PROJECT}:setIamPolicy");
    let bearer = format!("Bearer {}", token(ADMIN));
    let mut tcp = post_head(server.admin, &path, Some(&bearer), 8192).await;
    let _ = tcp.write_all(&[b' '; 8192]).await;
    let head = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    server.stop().await;
}

#[tokio::test]
async fn half_sent_body_fails_at_the_body_timeout() {
    let server = start("body_read_timeout = \"200ms\"").await;
    let path = format!("/v1/projects/{PROJECT}:setIamPolicy");
    let bearer = format!("Bearer {}", token(ADMIN));
    let mut tcp = post_head(server.admin, &path, Some(&bearer), 100).await;
    tcp.write_all(b"{\"policy\":").await.unwrap();
    let head = read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    server.stop().await;
}
