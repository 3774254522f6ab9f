//! Load generator for any Envoy ext_authz (v3) Check server: verifyiam or the no-op baseline.
//!
//! ```sh
//! # closed loop, maximum throughput: 2 connections × 32 streams for 10 s, one hot token
//! cargo run --release --example loadgen -- run --addr 127.0.0.1:9001 --data-dir DIR \
//!     --mode closed --connections 2 --streams 32 --duration 10s --mix hot
//! # open loop at 5,000 Checks/s (latency from the intended send time)
//! cargo run --release --example loadgen -- run --addr 127.0.0.1:9001 --data-dir DIR \
//!     --mode open --rate 5000 --duration 10s --mix hot
//! ```
//!
//! Token mixes: `hot`, `cold:K`, `rs256:K`, `invalid[:K]`, `deployments:N` (see `engine::Mix`);
//! all tokens are minted before the clock starts. Each run prints a human summary on stderr and
//! one JSON line on stdout (also appended to `--json-out`). `benches/run.sh` drives it.

#[path = "loadgen/engine.rs"]
mod engine;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use engine::{ClosedLoop, Minter, Mix, OpenLoop, RunResult, Tally, Workload};

#[derive(Parser)]
#[command(about = "Load generator for Envoy ext_authz Check servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a Check server and report latency and throughput.
    Run(Box<RunArgs>),
    /// Serve the RS256 issuer's JWK set (key made at --key if missing) until killed.
    ServeJwks {
        /// PKCS#8 PEM file of the RSA key.
        #[arg(long)]
        key: PathBuf,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// The bound port is written here once serving.
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// Exit after this long whatever happens.
        #[arg(long, default_value = "3h", value_parser = humantime::parse_duration)]
        exit_after: Duration,
    },
    /// Print a development-issuer token for EMAIL (the key is made in --data-dir if missing).
    Mint {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        email: String,
    },
    /// Print N free TCP ports on 127.0.0.1, one a line.
    FreePorts { n: usize },
    /// Measure RS256 verification on one core (jsonwebtoken, the server's library and backend).
    Rs256VerifyRate {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Key for the JSON line.
        #[arg(long, default_value = "rs256-verify-1core")]
        scenario: String,
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
    /// Measure how soon a policy change written through one replica is applied by another:
    /// alternately grant and revoke invoke on one deployment through `--admin`, and after each
    /// write is acknowledged, Check through `--check` until the answer turns.
    Propagation(PropagationArgs),
}

#[derive(clap::Args)]
struct PropagationArgs {
    /// The writing replica's admin listener (`http://host:port`).
    #[arg(long)]
    admin: String,
    /// A bearer token allowed to set IAM policies there.
    #[arg(long)]
    admin_token: String,
    /// The reading replica's ext_authz listener (`host:port`).
    #[arg(long)]
    check: String,
    /// Where the development issuer's key is (as for `run`).
    #[arg(long)]
    data_dir: PathBuf,
    /// The project; deployments live under the organization of the same name.
    #[arg(long)]
    project: String,
    /// Changes to make (grants and revocations alternately).
    #[arg(long, default_value_t = 120)]
    changes: usize,
    /// The longest one change may take to show before it counts as lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    limit: Duration,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Closed,
    Open,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The Check server (`host:port`).
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Label of the server in the report (`verifyiam`, `noop`).
    #[arg(long, default_value = "verifyiam")]
    server: String,
    /// Label of the scenario in the report.
    #[arg(long, default_value = "adhoc")]
    scenario: String,
    #[arg(long, value_enum, default_value = "closed")]
    mode: Mode,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Closed loop: concurrent streams per connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Open loop: Checks per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured window (with --once: the longest the run may take).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sent before the window, not measured (ignored with --once).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Open loop: at most this many Checks in flight; one due beyond it is an error, not sent.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// A Check unanswered this long counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Token mix: hot, cold:K, rs256:K, invalid[:K], deployments:N.
    #[arg(long, default_value = "hot")]
    mix: Mix,
    /// Send each distinct request once (every Check a new token); the run ends when they run out.
    #[arg(long)]
    once: bool,
    /// Mint and send distinct tokens in chunks of this many (bounds the generator's memory).
    #[arg(long, default_value_t = 50_000)]
    chunk: usize,
    /// Directory holding the development issuer's key (`dev-issuer-key.pem`, made if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// PKCS#8 PEM of the RS256 issuer's key (for rs256:K).
    #[arg(long)]
    rsa_key: Option<PathBuf>,
    /// The server's pid: its CPU time and RSS over the run are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sample the server's RSS this often during the run (soak).
    #[arg(long, value_parser = humantime::parse_duration)]
    rss_every: Option<Duration>,
    /// Append the JSON line here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write the first request as a gRPC frame (for h2load --data) and exit without sending.
    #[arg(long)]
    write_grpc_frame: Option<PathBuf>,
    /// Worker threads of the generator's runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::FreePorts { n } => free_ports(n),
        Command::Mint { data_dir, email } => {
            match Minter::new(&data_dir, None).and_then(|m| m.dev_token(&email)) {
                Ok(token) => {
                    println!("{token}");
                    0
                }
                Err(e) => {
                    eprintln!("loadgen mint: {e}");
                    2
                }
            }
        }
        Command::ServeJwks {
            key,
            addr,
            port_file,
            exit_after,
        } => runtime(None).block_on(serve_jwks(key, addr, port_file, exit_after)),
        Command::Rs256VerifyRate {
            key,
            duration,
            scenario,
            json_out,
        } => rs256_verify_rate(&key, duration, &scenario, json_out.as_deref()),
        Command::Run(args) => runtime(args.threads).block_on(run(*args)),
        Command::Propagation(args) => runtime(None).block_on(propagation(args)),
    };
    std::process::exit(code);
}

fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().expect("the tokio runtime starts")
}

fn free_ports(n: usize) -> i32 {
    // Hold them all at once so the same port is not printed twice.
    let listeners: Vec<_> = (0..n)
        .filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok())
        .collect();
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            println!("{}", a.port());
        }
    }
    if listeners.len() == n { 0 } else { 3 }
}

async fn serve_jwks(
    key: PathBuf,
    addr: SocketAddr,
    port_file: Option<PathBuf>,
    exit_after: Duration,
) -> i32 {
    let issuer = match engine::RsaIssuer::load_or_create(&key) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("serve-jwks: {e}");
            return 2;
        }
    };
    let body = issuer.jwk_set.to_string();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "public, max-age=3600"),
                    ],
                    body,
                )
            }
        }),
    );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("serve-jwks: {addr}: {e}");
            return 2;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    if let Some(f) = port_file {
        if let Err(e) = std::fs::write(&f, format!("{port}\n")) {
            eprintln!("serve-jwks: {}: {e}", f.display());
            return 2;
        }
    }
    eprintln!("serve-jwks: http://127.0.0.1:{port}/jwks");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(tokio::time::sleep(exit_after))
        .await;
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("serve-jwks: {e}");
            3
        }
    }
}

fn rs256_verify_rate(
    key: &std::path::Path,
    duration: Duration,
    scenario: &str,
    json_out: Option<&std::path::Path>,
) -> i32 {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rs256-verify-rate: {e}");
            return 2;
        }
    };
    let minter = match Minter::new(dir.path(), Some(key)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("rs256-verify-rate: {e}");
            return 2;
        }
    };
    let issuer = match engine::RsaIssuer::load_or_create(key) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("rs256-verify-rate: {e}");
            return 2;
        }
    };
    let jwk: jsonwebtoken::jwk::Jwk =
        match serde_json::from_value(issuer.jwk_set["keys"][0].clone()) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("rs256-verify-rate: {e}");
                return 2;
            }
        };
    let decoding = match DecodingKey::from_jwk(&jwk) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rs256-verify-rate: {e}");
            return 2;
        }
    };
    let tokens: Vec<String> = match (0..256)
        .map(|i| minter.token(Mix::Rs256(256), i))
        .collect::<Result<_, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rs256-verify-rate: {e}");
            return 2;
        }
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[engine::RS256_ISSUER]);
    validation.validate_aud = false;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        for t in &tokens {
            if jsonwebtoken::decode::<Value>(t, &decoding, &validation).is_err() {
                eprintln!("rs256-verify-rate: a valid token did not verify");
                return 3;
            }
            n += 1;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    eprintln!("{scenario}: {rate:.0} RS256 verifications/s on one thread");
    emit(
        &json!({"scenario": scenario, "server": "-", "mode": "micro", "achieved_rps": round1(rate),
                "requests": n}),
        json_out,
    );
    0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn emit(line: &Value, json_out: Option<&std::path::Path>) {
    let text = line.to_string();
    println!("{text}");
    if let Some(path) = json_out {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{text}"));
        if let Err(e) = written {
            eprintln!("loadgen: {}: {e}", path.display());
        }
    }
}

/// Server CPU and memory around a run.
struct Probe {
    pid: String,
    cpu_start: f64,
    rss_start_kib: Option<u64>,
}

impl Probe {
    fn start(pid: Option<u32>) -> Option<Probe> {
        let pid = pid?.to_string();
        let cpu_start = engine::cpu_seconds(&pid)?;
        let rss_start_kib = engine::status_kib(&pid, "VmRSS");
        Some(Probe {
            pid,
            cpu_start,
            rss_start_kib,
        })
    }
}

async fn run(args: RunArgs) -> i32 {
    let minter = match Minter::new(&args.data_dir, args.rsa_key.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    };
    if let Some(path) = &args.write_grpc_frame {
        let req = match minter.requests(args.mix, 0..1) {
            Ok(mut r) => r.remove(0),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return 2;
            }
        };
        return match std::fs::write(path, engine::grpc_frame(&req)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen: {}: {e}", path.display());
                2
            }
        };
    }
    if !engine::wait_ready(&args.addr, Duration::from_secs(20)).await {
        eprintln!("loadgen: {} is not serving grpc.health.v1", args.addr);
        return 3;
    }
    let clients = match engine::connect(&args.addr, args.connections).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: connect {}: {e}", args.addr);
            return 3;
        }
    };

    // Distinct tokens are minted and sent chunk by chunk; the clock runs only while sending.
    let total = args.mix.len();
    let chunked = args.once && total > args.chunk;
    let chunk = if chunked { args.chunk.max(1) } else { total };
    let warmup = if args.once {
        Duration::ZERO
    } else {
        args.warmup
    };
    let run_deadline = Instant::now() + warmup + args.duration;
    let mut tally = Tally::default();
    let mut elapsed = Duration::ZERO;
    let (mut lag_max, mut lag_weighted) = (Duration::ZERO, 0f64);
    let mut mint_time = Duration::ZERO;
    let mut probe: Option<Probe> = None;
    // CPU of the generator and of the whole machine while sending (minting excluded).
    let (mut client_cpu, mut machine_cpu) = (0f64, Some(0f64));
    let mut measured_wall = Duration::ZERO;
    let rss_samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
    let mut sampler: Option<tokio::task::JoinHandle<()>> = None;
    let mut from = 0;
    while from < total {
        let to = (from + chunk).min(total);
        let minted = Instant::now();
        let requests = match minter.requests(args.mix, from..to) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("loadgen: minting: {e}");
                return 2;
            }
        };
        mint_time += minted.elapsed();
        if from == 0 {
            eprintln!(
                "loadgen: {} {} request(s) minted in {:.2}s",
                args.mix,
                requests.len(),
                mint_time.as_secs_f64()
            );
            probe = Probe::start(args.server_pid);
            if let (Some(every), Some(p)) = (args.rss_every, &probe) {
                let pid = p.pid.clone();
                let samples = rss_samples.clone();
                let started = Instant::now();
                sampler = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        if let Some(kib) = engine::status_kib(&pid, "VmRSS") {
                            let t = started.elapsed().as_secs_f64();
                            samples.lock().expect("not poisoned").push((t, kib));
                        }
                    }
                }));
            }
        }
        let workload = Workload {
            requests: std::sync::Arc::new(requests),
            once: args.once,
        };
        let left = run_deadline.saturating_duration_since(Instant::now());
        if chunked && left.is_zero() {
            eprintln!("loadgen: --duration reached after {from} of {total} requests");
            break;
        }
        let wall = Instant::now();
        let client_cpu_start = engine::cpu_seconds("self").unwrap_or(0.0);
        let machine_start = engine::machine_busy_seconds();
        let result: RunResult = match args.mode {
            Mode::Closed => {
                let cfg = ClosedLoop {
                    streams: args.streams,
                    duration: if args.once { left } else { args.duration },
                    warmup,
                    timeout: args.timeout,
                };
                engine::closed_loop(&clients, &workload, &cfg).await
            }
            Mode::Open => {
                let cfg = OpenLoop {
                    rate: args.rate,
                    duration: if args.once { left } else { args.duration },
                    warmup,
                    timeout: args.timeout,
                    max_in_flight: args.max_in_flight,
                };
                engine::open_loop(&clients, &workload, &cfg).await
            }
        };
        measured_wall += wall.elapsed();
        client_cpu += engine::cpu_seconds("self").unwrap_or(0.0) - client_cpu_start;
        machine_cpu = match (machine_cpu, machine_start, engine::machine_busy_seconds()) {
            (Some(m), Some(a), Some(b)) => Some(m + b - a),
            _ => None,
        };
        elapsed += result.elapsed;
        lag_max = lag_max.max(result.dispatch_lag_max);
        lag_weighted += result.dispatch_lag_mean.as_secs_f64() * result.tally.sent as f64;
        tally.merge(result.tally);
        from = to;
        if !args.once {
            break;
        }
    }
    if let Some(s) = sampler {
        s.abort();
    }

    let result = RunResult {
        tally,
        elapsed,
        dispatch_lag_max: lag_max,
        dispatch_lag_mean: Duration::ZERO,
    };
    let t = &result.tally;
    let achieved = result.achieved_rps();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (server_cpu_pct, rss_kib, hwm_kib) = match &probe {
        Some(p) => {
            let cpu = engine::cpu_seconds(&p.pid).map(|c| c - p.cpu_start);
            // CPU over the wall time the generator was sending (warm-up excluded when possible).
            let wall = measured_wall.as_secs_f64().max(1e-9);
            (
                cpu.map(|c| round1(100.0 * c / wall)),
                engine::status_kib(&p.pid, "VmRSS"),
                engine::status_kib(&p.pid, "VmHWM"),
            )
        }
        None => (None, None, None),
    };
    let samples = rss_samples.lock().expect("not poisoned").clone();
    // Growth from the first sample after the warm-up (the heap's working size under this load)
    // to the last; the sample at the start shows the idle server, before any Check.
    let steady = samples
        .iter()
        .position(|s| s.0 >= warmup.as_secs_f64())
        .unwrap_or(0);
    let rss_growth_pct = match (samples.get(steady), samples.last()) {
        (Some(a), Some(b)) if samples.len() > steady + 1 && a.1 > 0 => {
            Some(round1(100.0 * (b.1 as f64 - a.1 as f64) / a.1 as f64))
        }
        _ => None,
    };
    let lag_mean_us = if t.sent > 0 {
        lag_weighted / t.sent as f64 * 1e6
    } else {
        0.0
    };
    let line = json!({
        "scenario": args.scenario,
        "server": args.server,
        "mode": match args.mode { Mode::Closed => "closed", Mode::Open => "open" },
        "mix": args.mix.to_string(),
        "once": args.once,
        "connections": args.connections,
        "streams": if args.mode == Mode::Closed { Some(args.streams) } else { None },
        "offered_rps": if args.mode == Mode::Open { Some(args.rate) } else { None },
        "achieved_rps": round1(achieved),
        "duration_s": round1(secs * 1000.0) / 1000.0,
        "requests": t.sent,
        "allowed": t.allowed,
        "denied": t.denied,
        "errors": t.errors,
        "first_error": t.first_error,
        "p50_us": round1(t.micros(0.50)),
        "p90_us": round1(t.micros(0.90)),
        "p99_us": round1(t.micros(0.99)),
        "p999_us": round1(t.micros(0.999)),
        "max_us": round1(t.max_micros()),
        "dispatch_lag_mean_us": if args.mode == Mode::Open { Some(round1(lag_mean_us)) } else { None },
        "dispatch_lag_max_us": if args.mode == Mode::Open { Some(round1(lag_max.as_secs_f64() * 1e6)) } else { None },
        "mint_s": round1(mint_time.as_secs_f64() * 100.0) / 100.0,
        "server_cpu_pct": server_cpu_pct,
        "server_rss_start_kib": probe.as_ref().and_then(|p| p.rss_start_kib),
        "server_rss_kib": rss_kib,
        "server_hwm_kib": hwm_kib,
        "client_cpu_pct": round1(100.0 * client_cpu / measured_wall.as_secs_f64().max(1e-9)),
        // Every process on the machine (100% = one core).
        "machine_cpu_pct": machine_cpu.map(|m| round1(100.0 * m / measured_wall.as_secs_f64().max(1e-9))),
        "rss_samples_kib": if samples.is_empty() { None } else { Some(samples.iter().map(|s| s.1).collect::<Vec<_>>()) },
        "rss_growth_pct": rss_growth_pct,
    });
    eprintln!(
        "{} [{}] {} {}: {} sent, {:.0}/s achieved{} | allowed {} denied {} errors {} | \
         p50 {:.0}µs p90 {:.0}µs p99 {:.0}µs p99.9 {:.0}µs max {:.0}µs{}{}",
        args.scenario,
        args.server,
        line["mode"].as_str().unwrap_or(""),
        args.mix,
        t.sent,
        achieved,
        if args.mode == Mode::Open {
            format!(" of {:.0}/s offered", args.rate)
        } else {
            String::new()
        },
        t.allowed,
        t.denied,
        t.errors,
        t.micros(0.5),
        t.micros(0.9),
        t.micros(0.99),
        t.micros(0.999),
        t.max_micros(),
        server_cpu_pct
            .map(|c| format!(" | server CPU {c:.0}%"))
            .unwrap_or_default(),
        rss_kib
            .map(|r| format!(" RSS {:.1} MiB", r as f64 / 1024.0))
            .unwrap_or_default(),
    );
    if let Some(e) = &t.first_error {
        eprintln!("  first error: {e}");
    }
    emit(&line, args.json_out.as_deref());
    0
}

/// The principal and deployment whose grant `propagation` flips.
const PROPAGATION_MEMBER: &str = "propagation@propagation.example";
const PROPAGATION_DEPLOYMENT: &str = "propagation";

async fn propagation(args: PropagationArgs) -> i32 {
    let minter = match Minter::new(&args.data_dir, None) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("loadgen propagation: {e}");
            return 2;
        }
    };
    let token = match minter.dev_token(PROPAGATION_MEMBER) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen propagation: {e}");
            return 2;
        }
    };
    let request = engine::envoy_request(
        &format!("Bearer {token}"),
        engine::ENVIRONMENT,
        PROPAGATION_DEPLOYMENT,
    );
    let mut client = match engine::connect(&args.check, 1).await {
        Ok(mut c) => c.remove(0),
        Err(e) => {
            eprintln!("loadgen propagation: {}: {e}", args.check);
            return 3;
        }
    };
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/organizations/{}/environments/{}/deployments/{PROPAGATION_DEPLOYMENT}:setIamPolicy",
        args.admin.trim_end_matches('/'),
        args.project,
        engine::ENVIRONMENT
    );
    // Applied (µs from the write's acknowledgement to the first Check that shows it), and the
    // writes' own round trips.
    let (mut applied, mut writes, mut lost) = (Vec::new(), Vec::new(), 0usize);
    for i in 0..args.changes {
        let grant = i % 2 == 0;
        let members: Vec<String> = if grant {
            vec![format!("user:{PROPAGATION_MEMBER}")]
        } else {
            Vec::new()
        };
        let body = json!({"policy": {"bindings": if grant {
            json!([{"role": "roles/apigee.deploymentInvoker", "members": members}])
        } else {
            json!([])
        }}});
        let sent = Instant::now();
        let written = http
            .post(&url)
            .bearer_auth(&args.admin_token)
            .json(&body)
            .send()
            .await;
        match written {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                eprintln!("loadgen propagation: the write answered {}", r.status());
                return 3;
            }
            Err(e) => {
                eprintln!("loadgen propagation: the write failed: {e}");
                return 3;
            }
        }
        let acked = Instant::now();
        writes.push(acked.duration_since(sent).as_secs_f64() * 1e6);
        loop {
            let allowed = match client.check(request.clone()).await {
                Ok(r) => r.get_ref().status.as_ref().is_some_and(|s| s.code == 0),
                Err(e) => {
                    eprintln!("loadgen propagation: Check failed: {e}");
                    return 3;
                }
            };
            if allowed == grant {
                applied.push(acked.elapsed().as_secs_f64() * 1e6);
                break;
            }
            if acked.elapsed() > args.limit {
                lost += 1;
                break;
            }
        }
    }
    let quantile = |v: &[f64], q: f64| -> f64 {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let line = json!({
        "scenario": "propagation",
        "server": "verifyiam-postgres",
        "changes": args.changes,
        "applied": applied.len(),
        "lost": lost,
        "p50_us": quantile(&applied, 0.5),
        "p99_us": quantile(&applied, 0.99),
        "max_us": quantile(&applied, 1.0),
        "write_p50_us": quantile(&writes, 0.5),
        "write_p99_us": quantile(&writes, 0.99),
    });
    eprintln!(
        "propagation: {} changes, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs after the write's acknowledgement ({lost} not seen within {:?})",
        applied.len(),
        line["p50_us"].as_f64().unwrap_or(f64::NAN),
        line["p99_us"].as_f64().unwrap_or(f64::NAN),
        line["max_us"].as_f64().unwrap_or(f64::NAN),
        args.limit
    );
    emit(&line, args.json_out.as_deref());
    if lost > 0 { 4 } else { 0 }
}
