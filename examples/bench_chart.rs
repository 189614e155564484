//! Turns the criterion results of `cargo bench --bench overhead` into the table and
//! the SVG chart in BENCHMARKS.md.
//!
//! Reads `target/criterion/overhead_{noop,yield,cpu}/<approach>/new/estimates.json`,
//! prints a Markdown table of the median ns per job (and each approach's ratio to
//! `taskgate_submit`), and draws `docs/overhead.svg`.
//!
//! Run after the bench: `cargo run --release --example bench_chart`

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// Jobs per benchmark iteration, as in `benches/overhead.rs`.
const N: f64 = 100_000.0;
const LOADS: [&str; 3] = ["noop", "yield", "cpu"];
const APPROACHES: [&str; 10] = [
    "taskgate_submit",
    "taskgate_spawn",
    "taskgate_run_k_callers",
    "taskgate_job_timeout",
    "hand_rolled_floor",
    "tokio_spawn",
    "semaphore_spawn",
    "joinset",
    "buffer_unordered",
    "tower_buffer_limit",
];

fn median_ns_per_job(load: &str, approach: &str) -> Option<f64> {
    let path = format!("target/criterion/overhead_{load}/{approach}/new/estimates.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / N)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for load in LOADS {
        for a in APPROACHES {
            if let Some(ns) = median_ns_per_job(load, a) {
                data.insert((load, a), ns);
            }
        }
    }
    if data.is_empty() {
        return Err("no results: run `cargo bench --bench overhead` first".into());
    }

    println!(
        "| approach | noop ns/job | yield ns/job | cpu ns/job | noop: ratio to taskgate_submit |"
    );
    println!("|---|---:|---:|---:|---:|");
    for a in APPROACHES {
        let cell = |l: &str| {
            data.get(&(l, a))
                .map_or("–".to_string(), |v| format!("{v:.0}"))
        };
        let ratio = match (
            data.get(&("noop", a)),
            data.get(&("noop", "taskgate_submit")),
        ) {
            (Some(v), Some(t)) => format!("{:.2}×", v / t),
            _ => "–".to_string(),
        };
        println!(
            "| {a} | {} | {} | {} | {ratio} |",
            cell("noop"),
            cell("yield"),
            cell("cpu")
        );
    }

    std::fs::create_dir_all("docs")?;
    let out = Path::new("docs/overhead.svg");
    let max = data.values().cloned().fold(0.0, f64::max) * 1.1;
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Per-job overhead, N = 100k jobs, K = 64, 2 threads (median ns/job, lower is better)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..max, (0..APPROACHES.len() * 4).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(APPROACHES.len() * 4)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if i % 4 == 1 => APPROACHES[i / 4].to_string(),
            _ => String::new(),
        })
        .x_desc("ns per job")
        .draw()?;
    let colors = [
        RGBColor(66, 133, 244),
        RGBColor(244, 160, 0),
        RGBColor(15, 157, 88),
    ];
    for (li, load) in LOADS.iter().enumerate() {
        let color = colors[li];
        chart
            .draw_series(APPROACHES.iter().enumerate().filter_map(|(ai, a)| {
                let v = *data.get(&(*load, *a))?;
                let y = ai * 4 + li;
                Some(Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(y)),
                        (v, SegmentValue::Exact(y + 1)),
                    ],
                    color.filled(),
                ))
            }))?
            .label(*load)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
