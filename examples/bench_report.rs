//! Writes BENCHMARKS.md from the load generator's JSON lines and the run's metadata: the table
//! (scenario, offered and achieved rate, p50/p99/p99.9, CPU, RSS, ratio to the no-op baseline)
//! and the targets, each judged from the numbers. Nothing in the report is typed by hand.
//!
//! ```sh
//! cargo run --release --example bench_report -- --results benches/results.jsonl \
//!     --meta benches/meta.env --chart benches/latency.svg --out BENCHMARKS.md
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    results: PathBuf,
    /// `key=value` lines about the run (machine, date, commit, settings).
    #[arg(long)]
    meta: PathBuf,
    /// The chart, as linked from the report.
    #[arg(long, default_value = "benches/latency.svg")]
    chart: String,
    /// The results file, as linked from the report.
    #[arg(long, default_value = "benches/results.jsonl")]
    results_link: String,
    #[arg(long)]
    out: PathBuf,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Runs of one scenario on one server at one offered rate (rounds of the same point).
#[derive(Default)]
struct Group {
    scenario: String,
    server: String,
    mode: String,
    mix: String,
    offered: Option<f64>,
    runs: Vec<Value>,
}

impl Group {
    fn med(&self, key: &str) -> Option<f64> {
        median(self.runs.iter().filter_map(|r| r[key].as_f64()).collect())
    }
    fn range(&self, key: &str) -> Option<(f64, f64)> {
        let v: Vec<f64> = self.runs.iter().filter_map(|r| r[key].as_f64()).collect();
        if v.len() < 2 {
            return None;
        }
        Some(
            v.iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x))),
        )
    }
    /// CPU per answered Check in µs, from a `*_cpu_pct` field (100% = one core) and the rate.
    fn us_per_check(&self, cpu_key: &str) -> Option<f64> {
        let rate = self.med("achieved_rps").filter(|r| *r > 0.0)?;
        Some(self.med(cpu_key)? / 100.0 * 1e6 / rate)
    }
    fn sum(&self, key: &str) -> u64 {
        self.runs.iter().filter_map(|r| r[key].as_u64()).sum()
    }
    fn max(&self, key: &str) -> Option<f64> {
        self.runs
            .iter()
            .filter_map(|r| r[key].as_f64())
            .reduce(f64::max)
    }
}

fn describe(scenario: &str) -> &str {
    match scenario {
        "max-throughput" => "(a) closed loop, maximum throughput, one hot token",
        "h2load" => "(a) h2load, maximum throughput, one hot token",
        "warm-beside-cold" => "(c) warm Checks right after the cold run, same client",
        "store" => "(i) closed loop, one hot token, by policy store",
        "h2load-store" => "(i) h2load, one hot token, by policy store",
        "open-loop" => "(b) open loop, one hot token (warm)",
        "rs256-verify-1core" => "(c) reference: RS256 verifications/s, one thread, in-process",
        "cold-rs256" => "(c) cold path: every Check a new RS256 token",
        "invalid-repeated" => "(d) one invalid token, repeated",
        "invalid-distinct" => "(d) distinct invalid tokens, each once",
        "deployments" => "(e) deployment mix (one policy per deployment)",
        "rss-distinct-tokens" => "(f) distinct valid ES256 tokens, each once",
        "soak" => "(g) soak, open loop, one hot token",
        other => other,
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) => format!("{v:.digits$}"),
        None => "—".to_owned(),
    }
}

fn thousands(x: Option<f64>) -> String {
    let Some(v) = x else { return "—".into() };
    let s = format!("{:.0}", v.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn mib(kib: Option<f64>) -> String {
    num(kib.map(|k| k / 1024.0), 1)
}

/// A target and whether the numbers meet it.
struct Verdict {
    target: &'static str,
    measured: String,
    met: Option<bool>,
}

fn main() {
    let args = Args::parse();
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).unwrap_or_else(|e| {
            eprintln!("bench_report: {}: {e}", p.display());
            std::process::exit(2)
        })
    };
    let lines: Vec<Value> = read(&args.results)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let meta: BTreeMap<String, String> = read(&args.meta)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "—".to_owned());

    // Groups in order of first appearance.
    let mut groups: Vec<Group> = Vec::new();
    for l in &lines {
        let key = (
            l["scenario"].as_str().unwrap_or("").to_owned(),
            l["server"].as_str().unwrap_or("").to_owned(),
            l["mode"].as_str().unwrap_or("").to_owned(),
            l["mix"].as_str().unwrap_or("").to_owned(),
            l["offered_rps"].as_f64(),
        );
        match groups.iter_mut().find(|g| {
            (&g.scenario, &g.server, &g.mode, &g.mix, g.offered)
                == (&key.0, &key.1, &key.2, &key.3, key.4)
        }) {
            Some(g) => g.runs.push(l.clone()),
            None => groups.push(Group {
                scenario: key.0,
                server: key.1,
                mode: key.2,
                mix: key.3,
                offered: key.4,
                runs: vec![l.clone()],
            }),
        }
    }
    let find = |scenario: &str, server: &str, offered: Option<f64>| {
        groups
            .iter()
            .find(|g| g.scenario == scenario && g.server == server && g.offered == offered)
    };
    let noop_max = find("max-throughput", "noop", None).and_then(|g| g.med("achieved_rps"));

    let mut md = String::new();
    let quick = m("quick") == "1";
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `bash benches/run.sh{}` from [`{}`]({}); regenerate rather than edit. \
         verifyiam and a no-op Check server built from this repository (`examples/noop_server.rs`, \
         same tonic + envoy-types stack) are measured in the same run, alternating, by the load \
         generator `examples/loadgen.rs` and by h2load over real gRPC on 127.0.0.1. The load \
         generators and the servers share the machine's cores: the throughput verdict uses \
         h2load, which spends far less of them per Check than the load generator, whose \
         closed-loop rows show its share (*others* excludes it).\n",
        if quick { " --quick" } else { "" },
        args.results_link,
        args.results_link
    );
    if quick {
        let _ = writeln!(
            md,
            "> **Quick run**: short windows and fewer tokens; the targets' verdicts below are \
             indicative only. Run `bash benches/run.sh` for the full measurement.\n"
        );
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    for (label, key) in [
        ("date (UTC)", "date"),
        ("commit", "commit"),
        ("machine", "cpu"),
        ("cores", "cores"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("rustc", "rustc"),
        ("load average before the run", "load_before"),
        ("load average after the run", "load_after"),
        ("h2load", "h2load"),
    ] {
        let _ = writeln!(md, "| {label} | {} |", m(key));
    }
    let _ = writeln!(
        md,
        "| settings | closed loop {} connections × {} streams, {} per run after {} warm-up, {} \
         rounds; open loop {} connections, {} per rate after {} warm-up; h2load {} connections \
         × {} streams, {} Checks per run, {} rounds |\n",
        m("connections"),
        m("streams"),
        m("duration"),
        m("warmup"),
        m("rounds"),
        m("open_connections"),
        m("duration"),
        m("warmup"),
        m("h2_connections"),
        m("h2_streams"),
        m("h2load_n"),
        m("h2_rounds")
    );

    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Latencies in µs (HDR histogram); open-loop latency runs from each Check's *intended* \
         send time. Values are medians over the rounds when a point ran more than once \
         (range in the achieved column). *CPU* is the server's user+system time over the run \
         (100% = one core), *µs CPU/Check* the server's CPU per answered Check, *others* the \
         machine's busy time that was neither the server nor the load generator (background \
         load). *vs no-op*: closed-loop rows, throughput ÷ the no-op server's; open-loop rows, \
         p99 ÷ the no-op server's p99 at the same offered rate.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | server | offered/s | achieved/s | p50 | p99 | p99.9 | max | CPU | µs CPU/Check | RSS MiB | others | vs no-op | Checks | allowed | denied | errors |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in groups
        .iter()
        .filter(|g| !matches!(g.scenario.as_str(), "instructions" | "propagation"))
    {
        let achieved = g.med("achieved_rps");
        let achieved_s = match g.range("achieved_rps") {
            Some((lo, hi)) => format!(
                "{} ({}–{})",
                thousands(achieved),
                thousands(Some(lo)),
                thousands(Some(hi))
            ),
            None => thousands(achieved),
        };
        let cpu = g.med("server_cpu_pct");
        let per_check = g.us_per_check("server_cpu_pct");
        let others = median(
            g.runs
                .iter()
                .filter_map(|r| {
                    Some(
                        r["machine_cpu_pct"].as_f64()?
                            - r["server_cpu_pct"].as_f64().unwrap_or(0.0)
                            - r["client_cpu_pct"].as_f64().unwrap_or(0.0),
                    )
                })
                .map(|x| x.max(0.0))
                .collect(),
        );
        let ratio = if g.server == "verifyiam" {
            match g.mode.as_str() {
                "open" => {
                    let base = find(&g.scenario, "noop", g.offered).and_then(|b| b.med("p99_us"));
                    match (g.med("p99_us"), base) {
                        (Some(v), Some(b)) if b > 0.0 => format!("p99 ×{:.2}", v / b),
                        _ => "—".into(),
                    }
                }
                "closed" => {
                    let base = find(&g.scenario, "noop", None)
                        .and_then(|b| b.med("achieved_rps"))
                        .or(noop_max);
                    match (achieved, base) {
                        (Some(v), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * v / b),
                        _ => "—".into(),
                    }
                }
                _ => "—".into(),
            }
        } else if g.server == "noop" || g.server == "verifyiam-embedded" {
            "baseline".into()
        } else if g.server == "verifyiam-postgres" {
            let base =
                find(&g.scenario, "verifyiam-embedded", None).and_then(|b| b.med("achieved_rps"));
            match (achieved, base) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.0}% of embedded", 100.0 * v / b),
                _ => "—".into(),
            }
        } else {
            "—".into()
        };
        let scenario = if g.mix.is_empty() {
            describe(&g.scenario).to_owned()
        } else {
            format!("{} `{}`", describe(&g.scenario), g.mix)
        };
        let _ = writeln!(
            md,
            "| {scenario} | {} | {} | {achieved_s} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} | {} | {} | {} | {} |",
            g.server,
            thousands(g.offered),
            num(g.med("p50_us"), 0),
            num(g.med("p99_us"), 0),
            num(g.med("p999_us"), 0),
            num(g.max("max_us"), 0),
            cpu.map(|c| format!("{c:.0}%")).unwrap_or("—".into()),
            num(per_check, 1),
            mib(g.med("server_rss_kib")),
            others.map(|c| format!("{c:.0}%")).unwrap_or("—".into()),
            thousands(Some(g.sum("requests") as f64)),
            thousands(Some(g.sum("allowed") as f64)),
            thousands(Some(g.sum("denied") as f64)),
            thousands(Some(g.sum("errors") as f64)),
        );
    }
    let _ = writeln!(md);
    if let Some(g) = find("rss-distinct-tokens", "verifyiam", None) {
        let _ = writeln!(
            md,
            "(f) server RSS before the distinct-token run: {} MiB; after {} tokens: {} MiB \
             (peak {} MiB). Minting them took {} s (not in the window).\n",
            mib(g.med("server_rss_start_kib")),
            thousands(Some(g.sum("requests") as f64)),
            mib(g.med("server_rss_kib")),
            mib(g.max("server_hwm_kib")),
            num(g.med("mint_s"), 1),
        );
    }
    if let Some(g) = find("cold-rs256", "verifyiam", None) {
        let _ = writeln!(
            md,
            "(c) the {} RS256 tokens were minted on every core before the clock started, in {} s.\n",
            thousands(Some(g.sum("requests") as f64)),
            num(g.med("mint_s"), 1)
        );
        // The machine's own bound on the cold path: its cores spent on nothing but one RS256
        // verification, the no-op server's cost of a Check and the generator's cost of a cold one.
        let verify_us = find("rs256-verify-1core", "-", None)
            .and_then(|v| v.med("achieved_rps"))
            .filter(|r| *r > 0.0)
            .map(|r| 1e6 / r);
        let noop_us =
            find("max-throughput", "noop", None).and_then(|n| n.us_per_check("server_cpu_pct"));
        let client_us = g.us_per_check("client_cpu_pct");
        let server_us = g.us_per_check("server_cpu_pct");
        let cores: f64 = m("cores").parse().unwrap_or(1.0);
        if let (Some(v), Some(n), Some(c), Some(s)) = (verify_us, noop_us, client_us, server_us) {
            let ceiling = cores * 1e6 / (v + n + c);
            let _ = writeln!(
                md,
                "(c) what bounds the cold path here: a cold Check cost the server {s:.1} µs of CPU \
                 and the load generator {c:.1} µs; one RS256 verification costs {v:.1} µs and the \
                 no-op server's whole Check {n:.1} µs. A server that did nothing but verify would \
                 still leave the {cores:.0} shared cores saturated at about {} Checks/s ({:.0}% of \
                 the single-core verify rate): with the load generator on the same cores, cold \
                 throughput says more about the machine than about the server, so the cold \
                 target is judged on the server's CPU per Check. The server's own cost beyond \
                 the no-op Check and the verification is {:.1} µs per cold Check.\n",
                thousands(Some(ceiling)),
                100.0 * ceiling * v / 1e6,
                s - v - n
            );
        }
    }
    if let Some(g) = find("soak", "verifyiam", Some(5000.0)) {
        let samples: Vec<String> = g
            .runs
            .iter()
            .filter_map(|r| r["rss_samples_kib"].as_array())
            .flatten()
            .filter_map(|v| v.as_f64())
            .map(|k| format!("{:.1}", k / 1024.0))
            .collect();
        let _ = writeln!(
            md,
            "(g) soak RSS every 10 s, MiB: {}\n",
            if samples.is_empty() {
                "—".to_owned()
            } else {
                samples.join(", ")
            }
        );
    }

    // Instructions per Check, counted by callgrind.
    let per = |server: &str, kind: &str| -> Option<f64> {
        let l = lines.iter().find(|l| {
            l["scenario"] == "instructions" && l["server"] == server && l["kind"] == kind
        })?;
        Some(l["instructions"].as_f64()? / l["checks"].as_f64().filter(|n| *n > 0.0)?)
    };
    if lines.iter().any(|l| l["scenario"] == "instructions") {
        let _ = writeln!(md, "## Instructions per Check\n");
        let _ = writeln!(
            md,
            "User-space instructions counted by `valgrind --tool=callgrind` (the same count \
             whatever else the machine does). *Over gRPC*: the server process's whole count, \
             zeroed after a warm-up, while h2load sends the Checks (cold: the load generator, \
             every Check a new RS256 token); *in process*: `examples/check_instructions.rs`, the \
             gRPC method's own code from request bytes to answer bytes, without the HTTP/2 \
             server (only the measured Checks are counted, not start-up nor the first Check). valgrind hides the CPU's SHA and \
             wide-multiply extensions, so hashing and RSA weigh more here than in the time they \
             take.\n"
        );
        let _ = writeln!(
            md,
            "| Check | verifyiam | no-op | verifyiam ÷ no-op |\n|---|---:|---:|---:|"
        );
        for (label, kind) in [
            ("warm, over gRPC", "warm-grpc"),
            ("warm, in process", "warm-in-process"),
            ("cold (new RS256 token), over gRPC", "cold-grpc"),
            ("cold (new RS256 token), in process", "cold-in-process"),
        ] {
            let (v, b) = (per("verifyiam", kind), per("noop", kind));
            let ratio = match (v, b) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
                _ => "—".into(),
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {ratio} |",
                thousands(v),
                thousands(b)
            );
        }
        let verify = per("-", "rs256-verify-in-process");
        let _ = writeln!(
            md,
            "| one RS256 verification, in process | {} | — | — |\n",
            thousands(verify)
        );
        if let (Some(c), Some(w), Some(v)) = (
            per("verifyiam", "cold-in-process"),
            per("verifyiam", "warm-in-process"),
            verify,
        ) {
            let _ = writeln!(
                md,
                "In process, a cold Check costs {} instructions more than a warm one: {:.2} RS256 \
                 verifications' worth.\n",
                thousands(Some(c - w)),
                (c - w) / v
            );
        }
    }
    if let Some(p) = lines.iter().find(|l| l["scenario"] == "propagation") {
        let _ = writeln!(
            md,
            "(j) propagation: {} policy changes (a grant, then its revocation, alternately) written \
             through one replica's admin API, each watched for on the other replica with \
             back-to-back Checks: applied p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the \
             write was acknowledged (the write itself: p50 {:.1} ms, p99 {:.1} ms); {} not seen \
             within the limit.\n",
            p["applied"].as_u64().unwrap_or(0),
            p["p50_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            p["p99_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            p["max_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            p["write_p50_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            p["write_p99_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
            p["lost"].as_u64().unwrap_or(0),
        );
    }

    let _ = writeln!(
        md,
        "![Check latency against offered rate]({})\n",
        args.chart
    );

    // The targets, judged from the numbers above.
    let mut verdicts = Vec::new();
    const WARM: &str = "Warm path (h2load): throughput ≥ 0.95× the no-op server's, median of alternating rounds (stretch: ≥ 1.0×)";
    let h2_v = find("h2load", "verifyiam", None);
    let h2_b = find("h2load", "noop", None);
    verdicts.push(
        match (
            h2_v.and_then(|g| g.med("achieved_rps")),
            h2_b.and_then(|g| g.med("achieved_rps")),
        ) {
            (Some(v), Some(b)) if b > 0.0 => {
                // Round by round: each verifyiam run against the no-op run right after it.
                let rounds: Vec<String> = h2_v
                    .into_iter()
                    .flat_map(|g| &g.runs)
                    .zip(h2_b.into_iter().flat_map(|g| &g.runs))
                    .filter_map(|(a, b)| {
                        Some(format!(
                            "{:.2}",
                            a["achieved_rps"].as_f64()? / b["achieved_rps"].as_f64()?
                        ))
                    })
                    .collect();
                Verdict {
                    target: WARM,
                    measured: format!(
                        "{} vs {} Checks/s: **{:.2}×** (rounds: {}); server CPU per Check {} vs {} µs",
                        thousands(Some(v)),
                        thousands(Some(b)),
                        v / b,
                        rounds.join(", "),
                        num(h2_v.and_then(|g| g.us_per_check("server_cpu_pct")), 1),
                        num(h2_b.and_then(|g| g.us_per_check("server_cpu_pct")), 1),
                    ),
                    met: Some(v >= 0.95 * b),
                }
            }
            _ => Verdict {
                target: WARM,
                measured: "not measured (h2load missing)".into(),
                met: None,
            },
        },
    );
    const COLD: &str =
        "Cold path: server CPU per cold RS256 Check − per warm Check ≤ 1.5 RS256 verifications";
    let cold_us =
        find("cold-rs256", "verifyiam", None).and_then(|g| g.us_per_check("server_cpu_pct"));
    let warm_us =
        find("warm-beside-cold", "verifyiam", None).and_then(|g| g.us_per_check("server_cpu_pct"));
    let verify_us = find("rs256-verify-1core", "-", None)
        .and_then(|g| g.med("achieved_rps"))
        .filter(|r| *r > 0.0)
        .map(|r| 1e6 / r);
    verdicts.push(match (cold_us, warm_us, verify_us) {
        (Some(c), Some(w), Some(v)) => Verdict {
            target: COLD,
            measured: format!(
                "{c:.1} − {w:.1} = {:.1} µs; one verification {v:.1} µs: **{:.2} verifications**",
                c - w,
                (c - w) / v
            ),
            met: Some(c - w <= 1.5 * v),
        },
        _ => Verdict {
            target: COLD,
            measured: "not measured".into(),
            met: None,
        },
    });
    let v5 = find("open-loop", "verifyiam", Some(5000.0));
    let b5 = find("open-loop", "noop", Some(5000.0));
    verdicts.push(
        match (
            v5.and_then(|g| g.med("p99_us")),
            b5.and_then(|g| g.med("p99_us")),
        ) {
            (Some(v), Some(b)) => {
                let errors = v5.map(|g| g.sum("errors")).unwrap_or(0);
                Verdict {
                    target: "Open loop at 5,000 Checks/s: p99 ≤ 1 ms and ≤ 1.5× the no-op's p99",
                    measured: format!(
                        "p99 {v:.0} µs vs no-op {b:.0} µs (×{:.2}){}",
                        if b > 0.0 { v / b } else { f64::INFINITY },
                        if errors > 0 {
                            format!(", {errors} errors")
                        } else {
                            String::new()
                        }
                    ),
                    met: Some(v <= 1000.0 && v <= 1.5 * b && errors == 0),
                }
            }
            _ => Verdict {
                target: "Open loop at 5,000 Checks/s: p99 ≤ 1 ms and ≤ 1.5× the no-op's p99",
                measured: "not measured".into(),
                met: None,
            },
        },
    );
    let rss = find("rss-distinct-tokens", "verifyiam", None);
    verdicts.push(match rss {
        Some(g) => {
            let n = g.sum("requests");
            let kib = g.med("server_rss_kib").unwrap_or(f64::INFINITY);
            let errors = g.sum("errors");
            let full = n >= 1_000_000 && errors == 0;
            Verdict {
                target: "RSS ≤ 100 MiB after 1,000,000 distinct valid tokens",
                measured: format!(
                    "{} MiB after {} tokens{}{}",
                    mib(Some(kib)),
                    thousands(Some(n as f64)),
                    if errors > 0 {
                        format!(", {errors} errors")
                    } else {
                        String::new()
                    },
                    if full {
                        ""
                    } else {
                        " (fewer than 1,000,000: not the target's measurement)"
                    }
                ),
                met: if full {
                    Some(kib <= 100.0 * 1024.0)
                } else {
                    None
                },
            }
        }
        None => Verdict {
            target: "RSS ≤ 100 MiB after 1,000,000 distinct valid tokens",
            measured: "not measured".into(),
            met: None,
        },
    });
    let soak = find("soak", "verifyiam", Some(5000.0));
    verdicts.push(match soak {
        Some(g) => {
            let secs = g.med("duration_s").unwrap_or(0.0);
            let errors = g.sum("errors");
            let growth = g.med("rss_growth_pct");
            let long_enough = secs >= 600.0;
            Verdict {
                target: "10-minute soak at 5,000 Checks/s: no error, RSS growth < 10%",
                measured: format!(
                    "{:.0} s, {} Checks, {errors} errors, RSS growth after the warm-up {}{}",
                    secs,
                    thousands(Some(g.sum("requests") as f64)),
                    growth.map(|x| format!("{x:.1}%")).unwrap_or("—".into()),
                    if long_enough {
                        ""
                    } else {
                        " (shorter than 10 minutes: not the target's measurement)"
                    }
                ),
                met: if long_enough {
                    Some(errors == 0 && growth.is_some_and(|x| x < 10.0))
                } else {
                    None
                },
            }
        }
        None => Verdict {
            target: "10-minute soak at 5,000 Checks/s: no error, RSS growth < 10%",
            measured: "not measured in this run (`bash benches/run.sh --soak 10m`)".into(),
            met: None,
        },
    });
    const STORE: &str = "PostgreSQL store: warm Checks (h2load) ≥ 0.95× the embedded store's (the Check path never touches the database)";
    let pg = find("h2load-store", "verifyiam-postgres", None).and_then(|g| g.med("achieved_rps"));
    let emb = find("h2load-store", "verifyiam-embedded", None).and_then(|g| g.med("achieved_rps"));
    verdicts.push(match (pg, emb) {
        (Some(p), Some(e)) if e > 0.0 => Verdict {
            target: STORE,
            measured: format!(
                "{} vs {} Checks/s: {:.2}×",
                thousands(Some(p)),
                thousands(Some(e)),
                p / e
            ),
            met: Some(p >= 0.95 * e),
        },
        _ => Verdict {
            target: STORE,
            measured: "not measured (no PostgreSQL or no h2load)".into(),
            met: None,
        },
    });
    const PROPAGATION: &str = "Propagation between two replicas on one PostgreSQL: every one of ≥ 100 changes applied within 1 s";
    let prop = lines.iter().find(|l| l["scenario"] == "propagation");
    verdicts.push(match prop {
        Some(p) => {
            let n = p["applied"].as_u64().unwrap_or(0);
            let lost = p["lost"].as_u64().unwrap_or(0);
            let max = p["max_us"].as_f64().unwrap_or(f64::INFINITY);
            Verdict {
                target: PROPAGATION,
                measured: format!(
                    "{n} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {lost} lost",
                    p["p50_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
                    p["p99_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
                    max / 1e3
                ),
                met: if n + lost >= 100 {
                    Some(lost == 0 && max <= 1e6)
                } else {
                    None
                },
            }
        }
        None => Verdict {
            target: PROPAGATION,
            measured: "not measured (no PostgreSQL)".into(),
            met: None,
        },
    });
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | met |\n|---|---|---|");
    for v in &verdicts {
        let met = match v.met {
            Some(true) => "**yes**",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", v.target, v.measured);
    }
    let _ = writeln!(
        md,
        "\nThe single-core RS256 rate is measured in the same run by `loadgen rs256-verify-rate` \
         (jsonwebtoken with aws-lc-rs, the server's library and backend, on one thread, the \
         same key).\n"
    );
    if let Err(e) = std::fs::write(&args.out, md) {
        eprintln!("bench_report: {}: {e}", args.out.display());
        std::process::exit(2);
    }
    eprintln!("bench_report: wrote {}", args.out.display());
}
