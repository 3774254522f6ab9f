//! Smoke test of the load generator (examples/loadgen): its engine drives a real verifyiam and
//! the no-op baseline over gRPC on 127.0.0.1, closed and open loop, and every Check it sends is
//! accounted for. Counts only: timings belong to `benches/run.sh` and BENCHMARKS.md, not to tests.

mod common;
#[path = "../examples/loadgen/engine.rs"]
mod engine;
#[path = "../examples/noop_server/noop.rs"]
mod noop;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::{ClosedLoop, Minter, Mix, OpenLoop, RunResult, Workload};

fn workload(minter: &Minter, mix: Mix, once: bool) -> Workload {
    Workload {
        requests: Arc::new(minter.requests(mix, 0..mix.len()).unwrap()),
        once,
    }
}

fn closed(seconds: u64) -> ClosedLoop {
    ClosedLoop {
        streams: 4,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    }
}

/// Every Check sent was answered, none failed at the gRPC level.
fn assert_accounted(r: &RunResult) {
    let t = &r.tally;
    assert_eq!(t.errors, 0, "first error: {:?}", t.first_error);
    assert_eq!(t.sent, t.answered(), "sent = allowed + denied");
    assert_eq!(t.histogram.len(), t.sent, "one latency per Check");
    assert!(t.sent > 0, "nothing was sent");
}

/// verifyiam with the development issuer trusted and the load generator's principals granted.
async fn verifyiam(data: &tempfile::TempDir) -> Server {
    let extra = format!(
        "[token.dev]\nissuer = \"{}\"\nkey_file = \"{}\"\n",
        verifyiam::authn::dev::DEV_ISSUER,
        data.path().join(verifyiam::authn::dev::KEY_FILE).display()
    );
    let s = Server::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    s.grant_project(&format!("domain:{}", engine::DOMAIN), INVOKER)
        .await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_accounts_for_every_check_against_verifyiam() {
    let data = tempfile::tempdir().unwrap();
    // The key must exist before the server loads it; the minter makes it.
    let minter = Minter::new(data.path(), None).unwrap();
    let s = verifyiam(&data).await;
    let addr = s.extauthz.to_string();
    assert!(engine::wait_ready(&addr, Duration::from_secs(10)).await);
    let clients = engine::connect(&addr, 2).await.unwrap();

    // Closed loop, one hot token: every Check allowed.
    let r = engine::closed_loop(&clients, &workload(&minter, Mix::Hot, false), &closed(1)).await;
    assert_accounted(&r);
    assert_eq!(r.tally.allowed, r.tally.sent);

    // Open loop at 200 Checks/s for 1 s: the schedule fixes how many are sent.
    let open = OpenLoop {
        rate: 200.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
        max_in_flight: 1000,
    };
    let r = engine::open_loop(&clients, &workload(&minter, Mix::Hot, false), &open).await;
    assert_accounted(&r);
    assert!((199..=201).contains(&r.tally.sent), "{}", r.tally.sent);
    assert_eq!(r.tally.allowed, r.tally.sent);

    // Distinct valid tokens, each sent once: all allowed, exactly as many as minted.
    let once = ClosedLoop {
        warmup: Duration::ZERO,
        duration: Duration::from_secs(30),
        ..closed(0)
    };
    let r = engine::closed_loop(&clients, &workload(&minter, Mix::Cold(40), true), &once).await;
    assert_accounted(&r);
    assert_eq!((r.tally.sent, r.tally.allowed), (40, 40));

    // Tokens signed by a key the server does not trust: denied, never a gRPC error.
    let r = engine::closed_loop(&clients, &workload(&minter, Mix::Invalid(10), true), &once).await;
    assert_accounted(&r);
    assert_eq!((r.tally.sent, r.tally.denied), (10, 10));

    // A mix of deployments, each granted to the mix principal on its own policy.
    for i in 0..3 {
        s.grant_deployment(
            "prod",
            &format!("api-{i}"),
            &format!("user:{}", engine::MIX_PRINCIPAL),
            INVOKER,
        )
        .await;
    }
    let r = engine::closed_loop(
        &clients,
        &workload(&minter, Mix::Deployments(3), true),
        &once,
    )
    .await;
    assert_accounted(&r);
    assert_eq!((r.tally.sent, r.tally.allowed), (3, 3));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_the_noop_baseline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(noop::serve(listener, async move {
        let _ = rx.await;
    }));
    assert!(engine::wait_ready(&addr, Duration::from_secs(10)).await);
    let data = tempfile::tempdir().unwrap();
    let minter = Minter::new(data.path(), None).unwrap();
    let clients = engine::connect(&addr, 2).await.unwrap();

    let r = engine::closed_loop(&clients, &workload(&minter, Mix::Hot, false), &closed(1)).await;
    assert_accounted(&r);
    assert_eq!(r.tally.allowed, r.tally.sent);

    let open = OpenLoop {
        rate: 100.0,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        max_in_flight: 1000,
    };
    let r = engine::open_loop(&clients, &workload(&minter, Mix::Hot, false), &open).await;
    assert_accounted(&r);
    assert!((99..=101).contains(&r.tally.sent), "{}", r.tally.sent);

    // The frame h2load posts is a gRPC frame of the request: flag 0, then its length.
    let req = minter.requests(Mix::Hot, 0..1).unwrap().remove(0);
    let frame = engine::grpc_frame(&req);
    assert_eq!(frame[0], 0);
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 5);
    let decoded =
        <envoy_types::pb::envoy::service::auth::v3::CheckRequest as prost::Message>::decode(
            &frame[5..],
        )
        .unwrap();
    assert_eq!(decoded, req);

    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
