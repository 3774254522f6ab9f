//! Heap allocations per warm Check, counted by a global allocator that counts: a number, not a
//! time, so it holds on any machine. The Check runs in process through the gRPC method's own
//! path (`CheckService::check_wire`: request bytes in, answer bytes out) on the test's thread,
//! and only that thread's allocations are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::Message as _;

use verifyiam::config::{CLOUD_PLATFORM_SCOPE, Config, OnDependencyFailure};
use verifyiam::extauthz::CheckService;
use verifyiam::iam::eval::Resource;
use verifyiam::iam::policy::{Binding, Policy};
use verifyiam::server::App;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts this thread's allocations from now on.
fn start_counting() -> usize {
    COUNTING.with(|c| c.set(true));
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Stops counting; the allocations since `start`.
fn stop_counting(start: usize) -> usize {
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - start
}

/// The number of allocations a warm allowed Check makes, and a warm denied one. A change that
/// adds allocations to the warm path fails here; one that removes some should lower these.
const WARM_ALLOWED: usize = 0;
const WARM_DENIED: usize = 16;

#[test]
fn a_warm_check_allocates_a_pinned_number_of_times() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[iam]\nproject = \"{}\"\nstore = \"{}\"\n[token.dev]\nissuer = \"verifyiam-dev\"\nkey_file = \"{}\"\n",
        common::PROJECT,
        dir.path().join("store").display(),
        dir.path().join("k.pem").display()
    ))
    .unwrap();
    let (service, dev) = runtime.block_on(async {
        let app = App::build(config).unwrap();
        let grant = Policy {
            version: 1,
            bindings: vec![Binding {
                role: common::INVOKER.into(),
                members: vec!["user:hot@example.com".into()],
                condition: None,
            }],
            ..Policy::default()
        };
        let project = Resource::Project {
            project: common::PROJECT.into(),
        };
        app.store.set_policy(&project, grant, None).await.unwrap();
        (
            CheckService::new(app.checker.clone(), OnDependencyFailure::Deny),
            app.dev.clone().unwrap(),
        )
    });
    let frame = |email: &str| {
        let token = dev.mint(email, CLOUD_PLATFORM_SCOPE, 3600).unwrap();
        common::routed_request(Some(&format!("Bearer {token}")), "prod", "orders").encode_to_vec()
    };
    for (email, allowed, pinned) in [
        ("hot@example.com", true, WARM_ALLOWED),
        ("stranger@example.com", false, WARM_DENIED),
    ] {
        let frame = frame(email);
        let check = || {
            let answer = runtime.block_on(service.check_wire(&frame)).unwrap();
            let answer = CheckResponse::decode(answer.to_bytes()).unwrap();
            assert_eq!(answer.status.unwrap().code == 0, allowed, "{email}");
        };
        // Warm: the token verified and its decision cached.
        for _ in 0..500 {
            check();
        }
        // Written into one buffer, as the gRPC codec writes into its reused one. The caches'
        // and the latency histogram's bookkeeping allocate now and then inside a Check: the
        // count nearly every Check makes (the median) is the Check's own, and the bookkeeping is
        // bounded on average.
        const N: usize = 400;
        let mut out = bytes::BytesMut::with_capacity(4096);
        let mut counts: Vec<usize> = runtime.block_on(async {
            let mut counts = Vec::with_capacity(N);
            for _ in 0..N {
                let start = start_counting();
                let answer = service.check_wire(&frame).await.unwrap();
                out.clear();
                answer.encode(&mut out);
                counts.push(stop_counting(start));
            }
            counts
        });
        let total: usize = counts.iter().sum();
        counts.sort_unstable();
        let typical = counts[N / 2];
        println!(
            "{email}: {typical} allocations in a warm Check; {total} in {N} (bookkeeping included)"
        );
        assert_eq!(
            typical, pinned,
            "{email}: {typical} allocations per warm Check, pinned at {pinned}"
        );
        assert!(
            total as f64 / N as f64 <= pinned as f64 + 0.25,
            "{email}: {total} allocations in {N} warm Checks"
        );
    }
}
