//! The run's outcome: [`RunReport`] (also `summary.json`), and the report directory a person
//! reads: `index.html`, `latency.svg` (latency over time with fault windows, the primary
//! timeline and the checker's first violation), and `faults.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::RunConfig;
use crate::history::{History, Outcome, PairedOp};

/// Outcome of a run, also written as `summary.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub out: PathBuf,
    pub seed: u64,
    pub check: crate::Report,
    pub primary_samples: u64,
    pub double_primary_rounds: u64,
    pub epochs_monotonic: bool,
    pub converged: bool,
    /// Fault windows: `kind`, `variant`, `nodes` (and `node`, the first of them), `start_ms`,
    /// `end_ms`, `was_primary`, `detail`.
    pub faults: Vec<Value>,
    pub failover_ms: Vec<u64>,
    /// Append workload: reads whose stored value was not a list (corruption).
    pub bad_values: u64,
}

impl RunReport {
    /// Every checker passed (the linearizability verdict may be Unknown only if bounded).
    pub fn ok(&self) -> bool {
        self.check.verdict == crate::Verdict::Valid
            && self.double_primary_rounds == 0
            && self.epochs_monotonic
            && self.converged
            && self.bad_values == 0
    }

    /// One line for a person: the verdict (`PASS` when [`RunReport::ok`]), every checker's
    /// result, the operation counts and the failover times.
    pub fn summary(&self) -> String {
        format!(
            "verdict: {} (linearizable {:?}; append {:?}; overlapping primaries {}; ops ok {} fail {} info {}; double-primary rounds {} of {}; epochs monotonic {}; converged {}; failovers ms {:?})",
            if self.ok() { "PASS" } else { "FAIL" },
            self.check.linearizable.verdict,
            self.check.append.verdict,
            self.check.overlapping_primaries.len(),
            self.check.ops.ok,
            self.check.ops.fail,
            self.check.ops.info,
            self.double_primary_rounds,
            self.primary_samples,
            self.epochs_monotonic,
            self.converged,
            self.failover_ms
        )
    }
}

/// Shading colour of a fault kind in the latency plot.
fn fault_color(kind: &str) -> &'static str {
    match kind {
        "kill" => "#f4c7c3",
        "kill-primary" => "#f19999",
        "pause" => "#fce8b2",
        "partition" => "#c6dafc",
        "netem" => "#d7c6fc",
        "skew" => "#b7e1cd",
        "wipe" => "#d9d9d9",
        _ => "#eeeeee",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// `summary.json`, `latency.svg` (latency over time, fault windows shaded and labelled by kind,
/// primary timeline), `faults.jsonl`, and `index.html` linking them.
pub(super) fn write_report(
    cfg: &RunConfig,
    r: &RunReport,
    h: &History,
    timeline: &[(u64, Vec<u64>)],
) -> Result<(), String> {
    let w = |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()));
    w(
        &cfg.out.join("summary.json"),
        &serde_json::to_string_pretty(r).unwrap_or_default(),
    )?;
    w(&cfg.out.join("latency.svg"), &latency_svg(cfg, r, h, timeline)?)?;
    w(&cfg.out.join("index.html"), &index_html(r))?;
    let mut f = std::fs::File::create(cfg.out.join("faults.jsonl")).map_err(|e| e.to_string())?;
    for fault in &r.faults {
        let _ = writeln!(f, "{fault}");
    }
    Ok(())
}

/// Where things go in `latency.svg`: run time (ms) on x, latency (ms) on y, the primary
/// timeline below.
struct Plot {
    total_ms: f64,
    max_lat: f64,
    width: f64,
    height: f64,
    top: f64,
}

impl Plot {
    fn x(&self, ms: f64) -> f64 {
        50.0 + ms / self.total_ms * (self.width - 60.0)
    }

    fn y(&self, lat: f64) -> f64 {
        self.top + self.height - (lat.min(self.max_lat) / self.max_lat) * self.height
    }

    /// Top of the primary timeline.
    fn timeline_y(&self) -> f64 {
        self.top + self.height + 30.0
    }
}

/// Latency points (completion time vs latency, per outcome) over the fault windows, the legend,
/// the primary timeline, the first violation per invalid key, and the time axis.
fn latency_svg(cfg: &RunConfig, r: &RunReport, h: &History, timeline: &[(u64, Vec<u64>)]) -> Result<String, String> {
    let pairs = h.pair().map_err(|e| e.to_string())?;
    let last_fault = r.faults.iter().filter_map(|f| f["end_ms"].as_f64()).fold(0.0, f64::max);
    let total_ms = (cfg.time.as_millis().max(1) as f64).max(last_fault) + cfg.quiet.as_millis() as f64;
    let max_lat = pairs
        .iter()
        .filter_map(|p| p.return_ns().map(|c| (c - p.invoke_ns) as f64 / 1e6))
        .fold(10.0f64, f64::max)
        .min(5000.0);
    let plot = Plot {
        total_ms,
        max_lat,
        width: 1000.0,
        height: 320.0,
        top: 56.0,
    };
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>\
         <rect width='100%' height='100%' fill='white'/>",
        plot.width,
        plot.height + plot.top + 110.0
    );
    fault_windows(&mut svg, &plot, &r.faults);
    points(&mut svg, &plot, &pairs);
    legend(&mut svg, &r.faults);
    primary_timeline(&mut svg, &plot, timeline);
    violations(&mut svg, &plot, r);
    time_axis(&mut svg, &plot);
    svg.push_str("</svg>");
    Ok(svg)
}

/// One shaded, labelled window per fault.
fn fault_windows(svg: &mut String, plot: &Plot, faults: &[Value]) {
    let (top, height) = (plot.top, plot.height);
    let x = |ms: f64| plot.x(ms);
    for (k, f) in faults.iter().enumerate() {
        let (s, e) = (
            f["start_ms"].as_f64().unwrap_or(0.0),
            f["end_ms"].as_f64().unwrap_or(0.0),
        );
        let kind = f["kind"].as_str().unwrap_or("");
        let nodes: Vec<String> = f["nodes"]
            .as_array()
            .map(|v| v.iter().map(|n| format!("n{n}")).collect())
            .unwrap_or_default();
        // Labels only where the window is wide enough to hold one; the colour (legend) and the
        // tooltip say the rest.
        let label = if x(e) - x(s) >= 40.0 {
            format!("{kind} {}", nodes.join(","))
        } else {
            String::new()
        };
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{top}' width='{:.1}' height='{height}' fill='{}' opacity='0.7'><title>{} {} {}: {}</title></rect>\
             <text x='{:.1}' y='{}' font-size='9' fill='#555'>{}</text>",
            x(s),
            (x(e) - x(s)).max(1.0),
            fault_color(kind),
            esc(kind),
            esc(f["variant"].as_str().unwrap_or("")),
            esc(&nodes.join(",")),
            esc(f["detail"].as_str().unwrap_or("")),
            x(s) + 1.0,
            top + 10.0 + (k % 3) as f64 * 10.0,
            esc(&label)
        ));
    }
}

/// The axes, one dot per completed operation (green ok, red fail, amber info), and the title.
fn points(svg: &mut String, plot: &Plot, pairs: &[PairedOp]) {
    let (top, height, width, max_lat) = (plot.top, plot.height, plot.width, plot.max_lat);
    svg.push_str(&format!(
        "<line x1='50' y1='{0}' x2='{1}' y2='{0}' stroke='#888'/><line x1='50' y1='{top}' x2='50' y2='{0}' stroke='#888'/>\
         <text x='44' y='{2}' text-anchor='end'>{max_lat:.0}</text><text x='44' y='{0}' text-anchor='end'>0</text>",
        top + height,
        width - 10.0,
        top + 4.0
    ));
    for p in pairs {
        let Some(c) = p.return_ns() else { continue };
        let lat = (c - p.invoke_ns) as f64 / 1e6;
        let color = match p.outcome {
            Outcome::Ok => "#1a7f37",
            Outcome::Fail => "#cf222e",
            Outcome::Info => "#bf8700",
        };
        svg.push_str(&format!(
            "<circle cx='{:.1}' cy='{:.1}' r='1.6' fill='{color}'/>",
            plot.x(c as f64 / 1e6),
            plot.y(lat)
        ));
    }
    svg.push_str(&format!(
        "<text x='50' y='16'>latency (ms, max {max_lat:.0}) over {:.0} s; green ok, red fail, amber info; shaded: fault windows</text>",
        plot.total_ms / 1000.0
    ));
}

/// Legend of the fault kinds present.
fn legend(svg: &mut String, faults: &[Value]) {
    let mut kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let mut lx = 50.0;
    for k in kinds {
        svg.push_str(&format!(
            "<rect x='{lx}' y='24' width='12' height='10' fill='{}'/><text x='{}' y='33'>{}</text>",
            fault_color(k),
            lx + 15.0,
            esc(k)
        ));
        lx += 25.0 + 7.0 * k.len() as f64;
    }
}

/// Which node answered 200 on `/primary`, over time.
fn primary_timeline(svg: &mut String, plot: &Plot, timeline: &[(u64, Vec<u64>)]) {
    let ty = plot.timeline_y();
    let x = |ms: f64| plot.x(ms);
    for (i, (t, p)) in timeline.iter().enumerate() {
        let end = timeline.get(i + 1).map(|n| n.0 as f64).unwrap_or(plot.total_ms);
        let label = match p.as_slice() {
            [] => "none".to_string(),
            [n] => format!("n{n}"),
            many => format!("{many:?}"),
        };
        let color = match p.as_slice() {
            [] => "#d0d7de",
            [n] => ["#0969da", "#8250df", "#1a7f37", "#bf3989", "#953800"][(*n as usize) % 5],
            _ => "#cf222e",
        };
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{ty}' width='{:.1}' height='18' fill='{color}'><title>primary {label}</title></rect><text x='{:.1}' y='{}' fill='white'>{label}</text>",
            x(*t as f64),
            (x(end) - x(*t as f64)).max(1.0),
            x(*t as f64) + 2.0,
            ty + 13.0
        ));
    }
    svg.push_str(&format!(
        "<text x='50' y='{}'>primary over time (grey: none answers 200 on /primary; red: more than one)</text>",
        ty + 34.0
    ));
}

/// Where the linearizability checker found its first violation, per invalid key.
fn violations(svg: &mut String, plot: &Plot, r: &RunReport) {
    let (top, height) = (plot.top, plot.height);
    for k in &r.check.linearizable.keys {
        let Ok(v) = serde_json::to_value(k) else { continue };
        if let Some(ns) = v["witness"]["op"]["complete_ns"].as_f64() {
            let at = plot.x(ns / 1e6);
            svg.push_str(&format!(
                "<line x1='{at:.1}' y1='{top}' x2='{at:.1}' y2='{}' stroke='#cf222e' stroke-width='2' stroke-dasharray='4 2'/>\
                 <text x='{:.1}' y='{}' fill='#cf222e' font-weight='bold'>not linearizable: {}</text>",
                top + height,
                at + 3.0,
                top + height - 6.0,
                esc(v["key"].as_str().unwrap_or(""))
            ));
        }
    }
}

/// Seconds under the primary timeline, about ten ticks.
fn time_axis(svg: &mut String, plot: &Plot) {
    let total_ms = plot.total_ms;
    let rough = total_ms / 1000.0 / 10.0;
    let step_s = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|s| *s >= rough)
        .unwrap_or(600.0);
    let mut s = 0.0;
    while s * 1000.0 <= total_ms {
        svg.push_str(&format!(
            "<text x='{:.1}' y='{}' font-size='9' text-anchor='middle'>{s:.0}s</text>",
            plot.x(s * 1000.0),
            plot.timeline_y() + 52.0
        ));
        s += step_s;
    }
}

/// `index.html`: the verdicts, the plot, links to the files, and a table of the faults.
fn index_html(r: &RunReport) -> String {
    let rows: String = r
        .faults
        .iter()
        .map(|f| {
            format!(
                "<tr><td>{:.1}–{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f["start_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                f["end_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                esc(f["kind"].as_str().unwrap_or("")),
                esc(f["variant"].as_str().unwrap_or("")),
                esc(&f["nodes"].to_string()),
                f["was_primary"],
                esc(f["detail"].as_str().unwrap_or(""))
            )
        })
        .collect();
    format!(
        "<!doctype html><meta charset='utf-8'><title>keel-jepsen {seed}</title><body style='font-family:sans-serif;max-width:1040px;margin:2em auto'>\
         <h1>keel-jepsen run (seed {seed})</h1><p>verdict: <b>{verdict}</b> · linearizable: {lin:?} · append: {app:?} · double-primary rounds: {doubles} of {rounds} · epochs monotonic: {mono} · converged: {conv} · failovers (ms): {fo:?}</p>\
         <img src='latency.svg'><p><a href='summary.json'>summary.json</a> · <a href='history.jsonl'>history.jsonl</a> · <a href='schedule.json'>schedule.json</a> · <a href='faults.jsonl'>faults.jsonl</a></p>\
         <h2>Faults</h2><table border='1' cellpadding='3' style='border-collapse:collapse;font-size:12px'><tr><th>window</th><th>kind</th><th>variant</th><th>nodes</th><th>primary hit</th><th>detail</th></tr>{rows}</table></body>",
        seed = r.seed,
        verdict = if r.ok() { "PASS" } else { "FAIL" },
        lin = r.check.linearizable.verdict,
        app = r.check.append.verdict,
        doubles = r.double_primary_rounds,
        rounds = r.primary_samples,
        mono = r.epochs_monotonic,
        conv = r.converged,
        fo = r.failover_ms,
    )
}
