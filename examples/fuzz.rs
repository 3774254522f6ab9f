//! Fuzz driver: arbitrary and mutated inputs through the whole in-process Check and the admin
//! router, with an oracle for every allow (see `fuzz/engine.rs`), until a count or a time budget
//! is reached.
//!
//! ```text
//! cargo run --profile fuzz --example fuzz -- --seconds 1800 --threads 2
//! cargo run --profile fuzz --example fuzz -- --seed 7 --start 123456 --inputs 1   # replay one
//! ```
//!
//! Exits non-zero if anything panicked or the oracle found an answer it cannot account for.

#[path = "fuzz/engine.rs"]
mod engine;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::{Fuzzer, PANICS, Report};

struct Args {
    seed: u64,
    start: u64,
    inputs: u64,
    seconds: u64,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        seed: 1,
        start: 0,
        inputs: u64::MAX,
        seconds: 60,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--seed" => a.seed = n,
            "--start" => a.start = n,
            "--inputs" => a.inputs = n,
            "--seconds" => a.seconds = n,
            "--threads" => a.threads = n.max(1) as usize,
            _ => {
                return Err(format!(
                    "unknown flag {flag} (--seed --start --inputs --seconds --threads)"
                ));
            }
        }
    }
    Ok(a)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    engine::count_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let report = runtime.block_on(run(&args));
    let elapsed = started.elapsed();
    let panics = PANICS.load(Ordering::SeqCst);
    println!(
        "inputs {} (checks {}, admin {}) in {:.1} s ({:.0}/s), seed {}, threads {}",
        report.inputs(),
        report.checks,
        report.admin,
        elapsed.as_secs_f64(),
        report.inputs() as f64 / elapsed.as_secs_f64().max(1e-9),
        args.seed,
        args.threads,
    );
    println!(
        "allowed {}; admin requests the http crate refused to build: {}",
        report.allowed, report.unbuildable
    );
    for (outcome, n) in &report.outcomes {
        println!("  {outcome:<14} {n}");
    }
    println!("panics {panics}, findings {}", report.findings.len());
    if panics > 0 || !report.findings.is_empty() {
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Report {
    let fuzzer = Arc::new(Fuzzer::new().await);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.threads as u64)
        .map(|w| {
            let (fuzzer, done) = (fuzzer.clone(), done.clone());
            let (seed, threads) = (args.seed, args.threads as u64);
            let (start, inputs) = (args.start, args.inputs);
            tokio::spawn(async move {
                let mut report = Report::default();
                let mut i = w;
                let mut since_check = 0u32;
                while i < inputs {
                    since_check += 1;
                    if since_check == 1024 {
                        since_check = 0;
                        done.fetch_add(1024, Ordering::Relaxed);
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    fuzzer.run_one(seed, start + i, &mut report).await;
                    i += threads;
                }
                report
            })
        })
        .collect();
    // Progress once a minute, for long runs in the background.
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "... {} inputs after {:.0} s, panics {}",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                    PANICS.load(Ordering::SeqCst)
                );
            }
        })
    };
    let mut total = Report::default();
    for w in workers {
        total.merge(w.await.expect("worker"));
    }
    progress.abort();
    total
}
