//! The SVG: one small plot per figure against the data size (log scale), hand-written so the
//! benchmark needs no plotting crate.

use std::fmt::Write;

use super::Row;

const W: f64 = 320.0;
const H: f64 = 200.0;
const PAD: f64 = 40.0;
const COLS: usize = 3;

/// One series of a plot: its name and the value it takes from a row.
type Series = (&'static str, fn(&Row) -> f64);

/// One plot: its title, unit and one or two series.
struct Figure {
    title: &'static str,
    unit: &'static str,
    series: Vec<Series>,
}

fn figures() -> Vec<Figure> {
    vec![
        Figure {
            title: "load rate",
            unit: "writes/s",
            series: vec![("load", |r| r.load_per_s)],
        },
        Figure {
            title: "disk per value",
            unit: "bytes",
            series: vec![("disk", |r| r.disk_bytes_per_value)],
        },
        Figure {
            title: "RSS per node",
            unit: "MB",
            series: vec![("peak", |r| r.rss_peak_mb), ("steady", |r| r.rss_steady_mb)],
        },
        Figure {
            title: "time to ready",
            unit: "s",
            series: vec![("clean stop", |r| r.ready_clean_s), ("kill -9", |r| r.ready_kill_s)],
        },
        Figure {
            title: "snapshot resync",
            unit: "s",
            series: vec![("time", |r| r.resync_s)],
        },
        Figure {
            title: "snapshot resync rate",
            unit: "MB/s",
            series: vec![("rate", |r| r.resync_mb_s)],
        },
    ]
}

const COLOURS: [&str; 2] = ["#1f77b4", "#d62728"];

pub fn render(rows: &[Row], value_bytes: u64) -> String {
    let figs = figures();
    let rows_n = figs.len().div_ceil(COLS);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        W * COLS as f64,
        H * rows_n as f64 + 24.0
    );
    let _ = writeln!(
        out,
        r#"<text x="8" y="16" font-size="13">keel scale_bench: three nodes, {value_bytes} B values; x: values stored (log scale)</text>"#
    );
    for (i, fig) in figs.iter().enumerate() {
        let (ox, oy) = ((i % COLS) as f64 * W, (i / COLS) as f64 * H + 24.0);
        plot(&mut out, fig, rows, ox, oy);
    }
    out.push_str("</svg>\n");
    out
}

fn plot(out: &mut String, fig: &Figure, rows: &[Row], ox: f64, oy: f64) {
    let (x0, x1, y0, y1) = (ox + PAD, ox + W - 24.0, oy + H - 30.0, oy + 24.0);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12">{} ({})</text>"#,
        ox + PAD,
        oy + 14.0,
        fig.title,
        fig.unit
    );
    let _ = writeln!(out, r#"<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>"#);
    if rows.is_empty() {
        return;
    }
    let lx = |v: u64| (v.max(1) as f64).log10();
    let (min_x, max_x) = (lx(rows[0].values), lx(rows[rows.len() - 1].values));
    let span_x = (max_x - min_x).max(1e-9);
    let max_y = fig
        .series
        .iter()
        .flat_map(|(_, f)| rows.iter().map(f))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let px = |v: u64| {
        if rows.len() == 1 {
            (x0 + x1) / 2.0
        } else {
            x0 + (lx(v) - min_x) / span_x * (x1 - x0)
        }
    };
    let py = |v: f64| y0 - v / max_y * (y0 - y1);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        x0 - 3.0,
        y1 + 4.0,
        short(max_y)
    );
    let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, x0 - 3.0, y0);
    for r in rows {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(r.values),
            y0 + 14.0,
            short(r.values as f64)
        );
    }
    for (k, (name, f)) in fig.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", px(r.values), py(f(r))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" stroke="{colour}" fill="none" stroke-width="2"/>"#,
            points.join(" ")
        );
        for r in rows {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{name}: {}</title></circle>"#,
                px(r.values),
                py(f(r)),
                short(f(r))
            );
        }
        if fig.series.len() > 1 {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
                x1 - 70.0,
                y1 + 12.0 * k as f64
            );
        }
    }
}

/// 1234567 -> "1.2M", 0.53 -> "0.53".
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}
