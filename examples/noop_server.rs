//! A no-op Envoy ext_authz Check server: the baseline the benchmarks measure verifyiam against.
//! Same tonic + envoy-types stack and runtime as verifyiam; every Check is answered OK.
//!
//! ```sh
//! cargo run --release --example noop_server -- --addr 127.0.0.1:9101
//! ```

#[path = "noop_server/noop.rs"]
mod noop;

use std::net::SocketAddr;

use clap::Parser;

/// No-op Envoy ext_authz server (answers every Check OK).
#[derive(Parser)]
struct Args {
    /// Where to listen (Check + grpc.health.v1).
    #[arg(long, default_value = "127.0.0.1:9101")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("noop_server: cannot listen on {}: {e}", args.addr);
            std::process::exit(2);
        }
    };
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("noop_server listening on {local}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = noop::serve(listener, shutdown).await {
        eprintln!("noop_server: {e}");
        std::process::exit(3);
    }
}
