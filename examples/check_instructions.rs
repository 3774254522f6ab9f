//! Runs N Checks in process through the gRPC method's own path (`CheckService::check_wire`: the
//! request's bytes in, the answer's bytes out), for instruction counts under callgrind that
//! repeat whatever the machine is doing. `noop` does what the no-op server's generated code does
//! with the same bytes: decode a `CheckRequest`, answer OK, encode.
//!
//! ```sh
//! cargo build --release --example check_instructions
//! target/release/examples/check_instructions prepare /tmp/ci 1000   # keys, tokens, frames
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*instructions_counted_here*' \
//!     target/release/examples/check_instructions warm /tmp/ci 1000
//! ```
//!
//! With `--toggle-collect`, only the N Checks are counted (not start-up, nor the first Check
//! that fetches the key set and fills the caches): the total divided by N is one Check's cost.
//! `cold` sends each of N RS256 tokens once (minted by `prepare`, so no signing is counted);
//! `warm` one token N times.

#[path = "loadgen/engine.rs"]
mod engine;

use std::path::Path;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;

use verifyiam::config::{Config, OnDependencyFailure};
use verifyiam::extauthz::{Answer, CheckService};
use verifyiam::iam::eval::Resource;
use verifyiam::iam::policy::{Binding, Policy};
use verifyiam::server::App;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, dir, n) = match args.as_slice() {
        [k, d, n] => (k.as_str(), Path::new(d), n.parse::<usize>().unwrap_or(1000)),
        _ => {
            eprintln!("usage: check_instructions prepare|warm|cold|noop DIR N");
            std::process::exit(2);
        }
    };
    if kind == "prepare" {
        return prepare(dir, n);
    }
    let frames = read_frames(&dir.join(if kind == "cold" {
        "cold.bin"
    } else {
        "warm.bin"
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if kind == "noop" {
        let frame = &frames[0];
        let mut out = bytes::BytesMut::with_capacity(4096);
        let mut bytes = 0;
        noop(frame, &mut out);
        instructions_counted_here(&mut || {
            for _ in 0..n {
                out.clear();
                noop(frame, &mut out);
                bytes += out.len();
            }
        });
        println!("{n} no-op Checks, {bytes} bytes answered");
        return;
    }
    let store = tempfile::tempdir().expect("a temporary directory");
    let service = runtime.block_on(service(dir, store.path()));
    // Answers are written into one buffer, as the gRPC codec writes into its reused one.
    let mut out = bytes::BytesMut::with_capacity(4096);
    let mut allowed = 0usize;
    let mut check = |frame: &[u8]| {
        let answer = runtime
            .block_on(service.check_wire(frame))
            .expect("an answer");
        allowed += usize::from(matches!(answer, Answer::Allowed { .. }));
        out.clear();
        answer.encode(&mut out);
    };
    // Outside the count: the key-set fetch, and for `warm` the token's first verification.
    let first = if kind == "cold" { frames.len() - 1 } else { 0 };
    check(&frames[first]);
    let frames = &frames[..frames.len().min(n)];
    instructions_counted_here(&mut || {
        for i in 0..n {
            check(if kind == "cold" {
                &frames[i % frames.len()]
            } else {
                &frames[0]
            });
        }
    });
    println!("{n} {kind} Checks, {} allowed", allowed - 1);
}

/// What callgrind counts with `--toggle-collect='*instructions_counted_here*'`.
#[inline(never)]
fn instructions_counted_here(f: &mut dyn FnMut()) {
    f()
}

/// What the no-op server does with a Check.
fn noop(frame: &[u8], out: &mut bytes::BytesMut) {
    let request = CheckRequest::decode(frame).expect("a CheckRequest");
    std::hint::black_box(&request);
    let answer = CheckResponse {
        status: Some(RpcStatus {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        ..Default::default()
    };
    answer.encode(out).expect("a buffer that grows");
}

/// A verifyiam with its own store, the development issuer and the RS256 issuer (its JWK set
/// served on 127.0.0.1), the load generator's principals granted at project level.
async fn service(dir: &Path, store: &Path) -> CheckService {
    let issuer = engine::RsaIssuer::load_or_create(&dir.join("rsa.pem")).expect("the RSA key");
    let body = issuer.jwk_set.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("an address").port();
    let jwks = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, jwks).await });
    let config = Config::parse(&format!(
        "[iam]\nproject = \"p\"\nstore = \"{}\"\n\
         [token.dev]\nissuer = \"{}\"\nkey_file = \"{}\"\n\
         [[token.jwt]]\nissuer = \"{}\"\njwks_uri = \"http://127.0.0.1:{port}/jwks\"\n",
        store.join("store").display(),
        verifyiam::authn::dev::DEV_ISSUER,
        dir.join(verifyiam::authn::dev::KEY_FILE).display(),
        engine::RS256_ISSUER,
    ))
    .expect("a valid configuration");
    let app = App::build(config).expect("the app");
    let grant = Policy {
        version: 1,
        bindings: vec![Binding {
            role: "roles/apigee.deploymentInvoker".into(),
            members: vec![format!("domain:{}", engine::DOMAIN)],
            condition: None,
        }],
        ..Policy::default()
    };
    let project = Resource::Project {
        project: "p".into(),
    };
    app.store
        .set_policy(&project, grant, None)
        .await
        .expect("the grant");
    CheckService::new(app.checker.clone(), OnDependencyFailure::Deny)
}

/// Keys, one warm request and `n` cold ones (RS256, each token distinct), as protobuf frames;
/// `cold` counts at most `n - 1` of them (the last is sent first, outside the count).
fn prepare(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("the directory");
    let minter = engine::Minter::new(dir, Some(&dir.join("rsa.pem"))).expect("the keys");
    let warm = minter
        .requests(engine::Mix::Hot, 0..1)
        .expect("the warm request");
    let cold = minter
        .requests(engine::Mix::Rs256(n), 0..n)
        .expect("the cold requests");
    write_frames(&dir.join("warm.bin"), &warm);
    write_frames(&dir.join("cold.bin"), &cold);
    println!("prepared {} cold requests in {}", n, dir.display());
}

fn write_frames(path: &Path, requests: &[CheckRequest]) {
    let mut out = Vec::new();
    for r in requests {
        let bytes = r.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    std::fs::write(path, out).expect("the frames file");
}

fn read_frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!(
            "check_instructions: {}: {e} (run `prepare` first)",
            path.display()
        );
        std::process::exit(2)
    });
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    frames
}
