//! Listener bounds against a real server on `127.0.0.1:0`: an unauthenticated admin request is
//! refused before its body is read.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use common::{Options, PROJECT, Server};

/// A bound on waiting for something the server must do promptly; reaching it fails the test.
const BOUND: Duration = Duration::from_secs(30);

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
