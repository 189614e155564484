//! Turns the criterion results of `cargo bench --bench scaling` into Markdown tables
//! and the SVG chart `docs/scaling.svg`.
//!
//! Criterion stores group `scaling/submit/noop/t2` under the directory
//! `scaling_submit_noop_t2`, so this reads every
//! `<criterion dir>/*/*/new/{benchmark,estimates}.json` and keeps the groups whose
//! `group_id` is `scaling/<shape>/<workload>/t<threads>`. ns per job = median
//! iteration time / the group's throughput in elements (jobs).
//!
//! Prints, per shape and workload, ns/job for every approach at every thread count,
//! then the ratios taskgate ÷ best hand-rolled pool and semaphore_spawn ÷ taskgate.
//! Draws ns/job against threads, one line per approach, one panel per
//! shape × workload.
//!
//! Run after the bench: `cargo run --release --example scaling_chart`, or
//! `cargo run --release --example scaling_chart -- CRITERION_DIR SVG_OUT` to read a
//! saved copy of `target/criterion` and write the chart elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

const SHAPES: [&str; 2] = ["submit", "callers"];
const LOADS: [&str; 2] = ["noop", "yield"];
/// Every approach in either shape, in table and legend order.
const APPROACHES: [&str; 6] = [
    "taskgate",
    "hand_rolled_flume",
    "hand_rolled_mutex_mpsc",
    "semaphore_spawn",
    "semaphore_inline",
    "tokio_spawn",
];
const HAND_ROLLED: [&str; 2] = ["hand_rolled_flume", "hand_rolled_mutex_mpsc"];
const COLORS: [RGBColor; 6] = [
    RGBColor(219, 68, 55),
    RGBColor(66, 133, 244),
    RGBColor(15, 157, 88),
    RGBColor(244, 160, 0),
    RGBColor(171, 71, 188),
    RGBColor(96, 96, 96),
];

/// (shape, workload) → approach → threads → median ns/job.
type Results = BTreeMap<(String, String), BTreeMap<String, BTreeMap<usize, f64>>>;

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// One benchmark's (shape, workload, threads, approach, ns/job), if it is a
/// `scaling/...` group.
fn read_one(bench: &Path) -> Option<(String, String, usize, String, f64)> {
    let meta = read_json(&bench.join("new/benchmark.json"))?;
    let parts: Vec<&str> = meta["group_id"].as_str()?.split('/').collect();
    let ["scaling", shape, load, threads] = parts[..] else {
        return None;
    };
    let threads: usize = threads.strip_prefix('t')?.parse().ok()?;
    // `BenchmarkId::from_parameter` leaves `function_id` empty.
    let approach = meta["function_id"]
        .as_str()
        .or(meta["value_str"].as_str())?;
    let jobs = meta["throughput"]["Elements"].as_f64()?;
    let estimates = read_json(&bench.join("new/estimates.json"))?;
    let ns = estimates["median"]["point_estimate"].as_f64()? / jobs;
    Some((
        shape.to_string(),
        load.to_string(),
        threads,
        approach.to_string(),
        ns,
    ))
}

fn read_all(dir: &Path) -> std::io::Result<Results> {
    let mut results = Results::new();
    for group in std::fs::read_dir(dir)? {
        let group = group?.path();
        if !group.is_dir() {
            continue;
        }
        for bench in std::fs::read_dir(&group)? {
            if let Some((shape, load, threads, approach, ns)) = read_one(&bench?.path()) {
                results
                    .entry((shape, load))
                    .or_default()
                    .entry(approach)
                    .or_default()
                    .insert(threads, ns);
            }
        }
    }
    Ok(results)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    }
}

fn print_tables(results: &Results) {
    for shape in SHAPES {
        for load in LOADS {
            let Some(rows) = results.get(&(shape.to_string(), load.to_string())) else {
                continue;
            };
            let threads: BTreeSet<usize> = rows.values().flat_map(|r| r.keys().copied()).collect();
            println!("\n### {shape} / {load} (median ns/job)\n");
            print!("| approach |");
            for t in &threads {
                print!(" {t} thr |");
            }
            println!();
            print!("|---|");
            for _ in &threads {
                print!("---:|");
            }
            println!();
            for a in APPROACHES {
                let Some(row) = rows.get(a) else { continue };
                print!("| {a} |");
                for t in &threads {
                    match row.get(t) {
                        Some(v) => print!(" {v:.0} |"),
                        None => print!(" – |"),
                    }
                }
                println!();
            }
            let at = |a: &str, t: usize| rows.get(a).and_then(|r| r.get(&t)).copied();
            let best_hand = |t: usize| HAND_ROLLED.iter().filter_map(|a| at(a, t)).reduce(f64::min);
            print!("| *taskgate ÷ best hand-rolled* |");
            for &t in &threads {
                print!(" {} |", ratio(at("taskgate", t), best_hand(t)));
            }
            println!();
            print!("| *semaphore_spawn ÷ taskgate* |");
            for &t in &threads {
                print!(" {} |", ratio(at("semaphore_spawn", t), at("taskgate", t)));
            }
            println!();
        }
    }
}

fn draw(results: &Results, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = SVGBackend::new(out, (1100, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "taskgate scaling: N = 20k jobs, K = 64 at once, queue 256 (median ns/job, lower is better)",
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((SHAPES.len(), LOADS.len()));
    let all_threads: BTreeSet<usize> = results
        .values()
        .flat_map(|rows| rows.values().flat_map(|r| r.keys().copied()))
        .collect();
    let x_max = all_threads
        .iter()
        .map(|&t| (t as f64).log2())
        .fold(1.0, f64::max);
    for (pi, panel) in panels.iter().enumerate() {
        let (shape, load) = (SHAPES[pi / LOADS.len()], LOADS[pi % LOADS.len()]);
        let Some(rows) = results.get(&(shape.to_string(), load.to_string())) else {
            continue;
        };
        let y_max = rows
            .values()
            .flat_map(|r| r.values().copied())
            .fold(0.0, f64::max)
            * 1.5; // headroom for the legend
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{shape} / {load}"), ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.2..x_max + 0.2, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_labels(all_threads.len())
            .x_label_formatter(&|x| {
                let t = 2f64.powf(*x).round();
                if (x - t.log2()).abs() < 1e-6 {
                    format!("{t:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("runtime worker threads")
            .y_desc("ns per job")
            .draw()?;
        for (ai, a) in APPROACHES.iter().enumerate() {
            let Some(row) = rows.get(*a) else { continue };
            let color = COLORS[ai];
            let points: Vec<(f64, f64)> =
                row.iter().map(|(&t, &v)| ((t as f64).log2(), v)).collect();
            let width = if *a == "taskgate" { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))?
                .label(*a)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let dir = args
        .next()
        .map_or_else(|| PathBuf::from("target/criterion"), PathBuf::from);
    let out = args
        .next()
        .map_or_else(|| PathBuf::from("docs/scaling.svg"), PathBuf::from);
    let results = read_all(&dir)?;
    if results.is_empty() {
        return Err(format!(
            "no scaling results under {}: run `cargo bench --bench scaling` first",
            dir.display()
        )
        .into());
    }
    print_tables(&results);
    draw(&results, &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
