//! kvstore-plot: turns the JSON reports of many `kvstore-bench --json` runs into a comparison
//! table (Markdown, on stdout and in `table.md`) and two PNG plots, kvstore and etcd on the
//! same axes: `throughput.png` (ops/s vs clients) and `latency.png` (p50 and p99 vs clients),
//! one panel per workload. Built with `--features plot`; scripts/bench.sh runs it.
//!
//! ```text
//! kvstore-plot results.jsonl --out docs/bench [--font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
//! ```
//! The input has one report per line. Exit 2 with one line on stderr if it cannot be read or
//! a plot cannot be written.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvstore::bench::table::{markdown, rows, Row, Scenario};
use kvstore::bench::{Report, Target};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Draws kvstore-bench results: a comparison table and PNG plots.
#[derive(Debug, Parser)]
#[command(name = "kvstore-plot", version, about)]
struct Args {
    /// File with one `kvstore-bench --json` report per line.
    results: PathBuf,
    /// Folder for table.md, throughput.png and latency.png.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// TrueType font for the labels (Debian package fonts-dejavu-core).
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// A line under the plot titles (e.g. the date and machine).
    #[arg(long, default_value = "")]
    subtitle: String,
}

/// Pixel size of one panel.
const PANEL: (u32, u32) = (640, 480);
const KVSTORE_COLOR: RGBColor = RGBColor(31, 119, 180);
const ETCD_COLOR: RGBColor = RGBColor(214, 39, 40);

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore-plot: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    let mut reports = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let report: Report = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a report", args.results.display(), n + 1))?;
        reports.push(report);
    }
    if reports.is_empty() {
        bail!("{} holds no reports", args.results.display());
    }
    let rows = rows(&reports);
    let table = markdown(&rows);
    print!("{table}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let table_path = args.out.join("table.md");
    std::fs::write(&table_path, &table)
        .with_context(|| format!("cannot write {}", table_path.display()))?;

    let font = std::fs::read(&args.font).with_context(|| {
        format!(
            "cannot read the font {} (apt-get install fonts-dejavu-core, or pass --font)",
            args.font.display()
        )
    })?;
    // plotters keeps registered fonts for the whole process, so the bytes must live as long.
    if register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .is_err()
    {
        bail!("{} is not a usable TrueType font", args.font.display());
    }

    let mut scenarios: Vec<Scenario> = rows.iter().map(|r| r.scenario).collect();
    scenarios.dedup();
    let throughput = args.out.join("throughput.png");
    draw(
        &throughput,
        &rows,
        &scenarios,
        &args.subtitle,
        Kind::Throughput,
    )?;
    let latency = args.out.join("latency.png");
    draw(&latency, &rows, &scenarios, &args.subtitle, Kind::Latency)?;
    eprintln!(
        "wrote {}, {} and {}",
        table_path.display(),
        throughput.display(),
        latency.display()
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Throughput,
    Latency,
}

/// One PNG: a panel per scenario, side by side.
fn draw(
    path: &Path,
    rows: &[Row],
    scenarios: &[Scenario],
    subtitle: &str,
    kind: Kind,
) -> Result<()> {
    let width = PANEL.0 * scenarios.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, PANEL.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, scenarios.len().max(1)));
    for (panel, scenario) in panels.iter().zip(scenarios) {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.scenario == *scenario).collect();
        match kind {
            Kind::Throughput => throughput_panel(panel, &rows, scenario, subtitle)?,
            Kind::Latency => latency_panel(panel, &rows, scenario, subtitle)?,
        }
    }
    root.present()
        .map_err(plot_error)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e}")
}

/// The x range: client counts on a log scale, with a margin.
fn clients_range(rows: &[&Row]) -> std::ops::Range<f64> {
    let max = rows.iter().map(|r| r.clients).max().unwrap_or(1) as f64;
    0.8..max * 1.3
}

/// `(clients, value)` points of one system.
fn points(rows: &[&Row], target: Target, value: impl Fn(&Report) -> f64) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| {
            let report = match target {
                Target::Kvstore => r.kvstore.as_ref(),
                Target::Etcd => r.etcd.as_ref(),
            }?;
            Some((r.clients as f64, value(report)))
        })
        .collect()
}

fn title(scenario: &Scenario, what: &str, subtitle: &str) -> String {
    if subtitle.is_empty() {
        format!("{} - {what}", scenario.label())
    } else {
        format!("{} - {what} ({subtitle})", scenario.label())
    }
}

const SYSTEMS: [(Target, &str, RGBColor); 2] = [
    (Target::Kvstore, "kvstore", KVSTORE_COLOR),
    (Target::Etcd, "etcd", ETCD_COLOR),
];

fn throughput_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    rows: &[&Row],
    scenario: &Scenario,
    subtitle: &str,
) -> Result<()> {
    let series: Vec<_> = SYSTEMS
        .iter()
        .map(|(t, name, color)| (points(rows, *t, |r| r.throughput_ops_s), *name, *color))
        .collect();
    let top = series
        .iter()
        .flat_map(|(p, _, _)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title(scenario, "throughput", subtitle), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(clients_range(rows).log_scale(), 0.0..top * 1.15)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("operations / s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_error)?;
    for (points, name, color) in series.into_iter().filter(|(p, _, _)| !p.is_empty()) {
        draw_series(&mut chart, points, name.to_string(), color.stroke_width(2))?;
    }
    legend(&mut chart)
}

fn latency_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    rows: &[&Row],
    scenario: &Scenario,
    subtitle: &str,
) -> Result<()> {
    let mut series = Vec::new();
    for (target, name, color) in SYSTEMS {
        let p50 = points(rows, target, |r| r.latency.p50_us as f64 / 1000.0);
        let p99 = points(rows, target, |r| r.latency.p99_us as f64 / 1000.0);
        series.push((p50, format!("{name} p50"), color.stroke_width(2)));
        series.push((p99, format!("{name} p99"), color.mix(0.5).stroke_width(2)));
    }
    let values = series
        .iter()
        .flat_map(|(p, _, _)| p.iter().map(|(_, y)| *y));
    let (low, high) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (low, high) = if high > 0.0 {
        (low.max(0.001) / 1.5, high * 1.5)
    } else {
        (0.01, 1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title(scenario, "latency", subtitle), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(clients_range(rows).log_scale(), (low..high).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_error)?;
    for (points, name, style) in series.into_iter().filter(|(p, _, _)| !p.is_empty()) {
        draw_series(&mut chart, points, name, style)?;
    }
    legend(&mut chart)
}

/// A line with a dot on each measured point, labelled for the legend.
fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    points: Vec<(f64, f64)>,
    label: String,
    style: ShapeStyle,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(points.clone(), style))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, style.filled())),
        )
        .map_err(plot_error)?;
    Ok(())
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}
