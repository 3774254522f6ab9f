//! The fuzz driver's engine (`examples/fuzz/engine.rs`) over a short fixed run: the fixture's
//! self-test, then a few thousand arbitrary and mutated inputs through the in-process Check and
//! the admin router. Counts only; the long runs are `cargo run --profile fuzz --example fuzz`.

#[path = "../examples/fuzz/engine.rs"]
#[allow(dead_code)]
mod engine;

use std::sync::atomic::Ordering;

use engine::{Fuzzer, PANICS, Report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fuzz_run_finds_nothing() {
    engine::count_panics();
    let fuzzer = Fuzzer::new().await;
    let mut report = Report::default();
    const INPUTS: u64 = 3000;
    for i in 0..INPUTS {
        fuzzer.run_one(0x5eed, i, &mut report).await;
    }
    assert_eq!(report.inputs() + report.unbuildable, INPUTS);
    assert!(report.admin > 0 && report.checks > 0, "{report:?}");
    assert!(
        report.allowed > 0,
        "no input was allowed: the oracle saw no allow to judge"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}
