//! `--plot FILE.svg`: throughput and p99 latency over time (and the server's CPU and RSS when
//! they were sampled; soak adds the clients connected), as a hand-written SVG that any browser
//! shows.

use std::fmt::Write as _;

use crate::params::Load;
use crate::report::{si, Report};

const W: f64 = 960.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const PANEL_H: f64 = 180.0;
const GAP: f64 = 70.0;
const TOP: f64 = 60.0;

struct Series<'a> {
    label: String,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// The SVG document for `r`.
pub fn svg(r: &Report) -> String {
    let ts = &r.timeseries;
    let xs: Vec<f64> = ts.iter().map(|p| p.t_s).collect();
    let x_max = xs.iter().copied().fold(1.0, f64::max);
    let mut panels = vec![
        (
            "throughput (per second)".to_string(),
            vec![
                Series {
                    label: format!("{}/s", r.units.received),
                    color: "#1f77b4",
                    dashed: false,
                    points: ts.iter().map(|p| (p.t_s, p.received_per_s)).collect(),
                },
                Series {
                    label: format!("{}/s", r.units.sent),
                    color: "#7f7f7f",
                    dashed: true,
                    points: ts.iter().map(|p| (p.t_s, p.sent_per_s)).collect(),
                },
            ],
        ),
        (
            "p99 latency (µs)".to_string(),
            vec![Series {
                label: "p99".into(),
                color: "#d62728",
                dashed: false,
                points: ts.iter().map(|p| (p.t_s, p.p99_us)).collect(),
            }],
        ),
    ];
    if ts.iter().any(|p| p.server_cpu_pct.is_some()) {
        panels.push((
            "server CPU (% of one core)".to_string(),
            vec![Series {
                label: "server CPU".into(),
                color: "#2ca02c",
                dashed: false,
                points: ts.iter().filter_map(|p| p.server_cpu_pct.map(|c| (p.t_s, c))).collect(),
            }],
        ));
    }
    if ts.iter().any(|p| p.server_rss_kb.is_some()) {
        panels.push((
            "server RSS (MiB)".to_string(),
            vec![Series {
                label: "RSS".into(),
                color: "#9467bd",
                dashed: false,
                points: ts.iter().filter_map(|p| p.server_rss_kb.map(|kb| (p.t_s, kb as f64 / 1024.0))).collect(),
            }],
        ));
    }
    if ts.iter().any(|p| p.alive > 0) && r.scenario == crate::params::Scenario::Soak {
        panels.push((
            "clients connected".to_string(),
            vec![Series {
                label: "alive".into(),
                color: "#8c564b",
                dashed: false,
                points: ts.iter().map(|p| (p.t_s, p.alive as f64)).collect(),
            }],
        ));
    }
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mode = match r.load {
        Load::Open { rate } => format!("open loop {}/s", si(rate)),
        Load::Closed { window } => format!("closed loop, window {window}"),
    };
    let title = format!("imks-loadgen {:?} ({:?}), {}: {}", r.scenario, r.protocol, r.url, mode);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="28" font-size="16">{}</text>"#, esc(&title));
    for (i, (name, series)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP);
        panel(&mut s, top, name, series, x_max);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, top: f64, name: &str, series: &[Series<'_>], x_max: f64) {
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y0, y1) = (top + PANEL_H, top);
    let y_top = nice_max(series.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let px = |x: f64| x0 + (x / x_max) * (x1 - x0);
    let py = |y: f64| y0 - (y / y_top) * (y0 - y1);
    let _ = writeln!(s, r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#, y1 - 8.0, esc(name));
    let _ =
        writeln!(s, r##"<rect x="{x0}" y="{y1}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##, x1 - x0);
    for k in 0..=4 {
        let v = y_top * k as f64 / 4.0;
        let y = py(v);
        let _ = writeln!(s, r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#eee"/>"##);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, x0 - 6.0, y + 4.0, si(v));
    }
    let step = nice_step(x_max);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, px(x), y0 + 16.0, fmt_x(x));
        x += step;
    }
    let _ = writeln!(s, r#"<text x="{x1}" y="{}" text-anchor="end">seconds</text>"#, y0 + 32.0);
    for (j, l) in series.iter().enumerate() {
        let pts: Vec<String> = l.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if l.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            l.color,
            pts.join(" ")
        );
        if l.points.len() == 1 {
            let (x, y) = l.points[0];
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(x), py(y), l.color);
        }
        let lx = x0 + 10.0 + j as f64 * 220.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"{dash}/>"#,
            y1 + 14.0,
            lx + 20.0,
            y1 + 14.0,
            l.color
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 26.0, y1 + 18.0, esc(&l.label));
    }
}

/// The smallest of 1, 2, 5 × 10^n at or above `v` (1 for nothing).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|&c| c >= v).unwrap_or(10.0 * mag)
}

/// A tick step giving at most about ten labels.
fn nice_step(range: f64) -> f64 {
    nice_max(range / 10.0)
}

fn fmt_x(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(1_100_000.0), 2_000_000.0);
        assert_eq!(nice_step(10.0), 1.0);
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
