//! Draws the benchmark chart from the load generator's JSON lines: Check latency (p50 and p99)
//! against offered rate in the open-loop runs, verifyiam beside the no-op baseline. SVG, so no
//! font files are needed.
//!
//! ```sh
//! cargo run --release --example bench_chart -- --results benches/results.jsonl --out benches/latency.svg
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// JSON lines written by `loadgen run --json-out`.
    #[arg(long)]
    results: PathBuf,
    /// The SVG to write.
    #[arg(long)]
    out: PathBuf,
    /// Scenario whose open-loop runs are drawn.
    #[arg(long, default_value = "open-loop")]
    scenario: String,
    /// A line under the title (machine, date).
    #[arg(long, default_value = "")]
    subtitle: String,
}

/// Median of the values (several rounds of the same point).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

type Series = BTreeMap<(String, String), Vec<(f64, f64)>>;

fn series(lines: &[Value], scenario: &str) -> Series {
    // (server, percentile) -> offered rate -> values
    let mut points: BTreeMap<(String, String), BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for l in lines {
        if l["scenario"] != scenario || l["mode"] != "open" {
            continue;
        }
        let (Some(server), Some(rate)) = (l["server"].as_str(), l["offered_rps"].as_f64()) else {
            continue;
        };
        for p in ["p50", "p99"] {
            if let Some(v) = l[format!("{p}_us")].as_f64() {
                points
                    .entry((server.to_owned(), p.to_owned()))
                    .or_default()
                    .entry(rate as u64)
                    .or_default()
                    .push(v);
            }
        }
    }
    points
        .into_iter()
        .map(|(k, by_rate)| {
            let pts = by_rate
                .into_iter()
                .map(|(r, v)| (r as f64, median(v).max(1.0)))
                .collect();
            (k, pts)
        })
        .collect()
}

/// The offered rates that were run: the x axis's ticks.
fn rates(data: &Series) -> Vec<f64> {
    let mut r: Vec<f64> = data.values().flatten().map(|p| p.0).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    r.dedup();
    r
}

/// 1, 2 and 5 times the powers of ten within the range (µs).
fn decades(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut p = 1.0;
    while p <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = p * m;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        p *= 10.0;
    }
    out
}

fn duration_label(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn style(server: &str, percentile: &str) -> ShapeStyle {
    let color = match (server, percentile) {
        ("verifyiam", "p99") => RGBColor(200, 40, 40),
        ("verifyiam", _) => RGBColor(240, 140, 120),
        (_, "p99") => RGBColor(30, 80, 200),
        _ => RGBColor(120, 170, 240),
    };
    color.stroke_width(if percentile == "p99" { 3 } else { 2 })
}

fn draw(args: &Args, data: &Series) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<(f64, f64)> = data.values().flatten().copied().collect();
    if all.is_empty() {
        return Err(format!("no open-loop '{}' runs in the results", args.scenario).into());
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let root = SVGBackend::new(&args.out, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = "Check latency against offered rate (open loop, no coordinated omission)";
    let (top, body) = root.split_vertically(if args.subtitle.is_empty() { 0 } else { 24 });
    if !args.subtitle.is_empty() {
        top.draw(&Text::new(
            args.subtitle.clone(),
            (60, 6),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
    }
    let mut chart = ChartBuilder::on(&body)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (xmin / 1.3..xmax * 1.3)
                .log_scale()
                .with_key_points(rates(data)),
            (ymin / 1.5..ymax * 2.0)
                .log_scale()
                .with_key_points(decades(ymin / 1.5, ymax * 2.0)),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered rate (Checks/s)")
        .y_desc("latency, from the intended send time")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| duration_label(*y))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for ((server, p), pts) in data {
        let s = style(server, p);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), s))?
            .label(format!("{server} {p}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], s));
        chart.draw_series(
            pts.iter()
                .map(move |&(x, y)| Circle::new((x, y), 4, s.color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let args = Args::parse();
    let text = match std::fs::read_to_string(&args.results) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench_chart: {}: {e}", args.results.display());
            std::process::exit(2);
        }
    };
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let data = series(&lines, &args.scenario);
    if let Err(e) = draw(&args, &data) {
        eprintln!("bench_chart: {e}");
        std::process::exit(3);
    }
    eprintln!("bench_chart: wrote {}", args.out.display());
}
