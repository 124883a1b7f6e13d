//! `--plot FILE.svg`: a picture of the run, written by hand (no plotting crate): throughput over
//! time for enqueue and completion, and the latency distribution of both as percentile curves
//! (x on a log scale of 1/(1-q), so the tail gets the room it deserves).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 920.0;
const H: f64 = 700.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const PLOT_W: f64 = W - LEFT - RIGHT;
const ENQUEUE_COLOUR: &str = "#1f77b4";
const COMPLETION_COLOUR: &str = "#d62728";

/// What the picture shows.
#[derive(Debug)]
pub struct PlotInput<'a> {
    pub title: &'a str,
    pub bucket_s: f64,
    pub enqueue_per_s: &'a [f64],
    pub completion_per_s: &'a [f64],
    /// Microseconds.
    pub enqueue_latency: &'a Histogram<u64>,
    /// Microseconds.
    pub end_to_end_latency: &'a Histogram<u64>,
}

/// Escapes text for XML content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step giving about `target` intervals up to `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn label(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// A panel's frame, grid and axis labels; returns the y-axis maximum it chose.
#[expect(
    clippy::too_many_arguments,
    reason = "a panel's geometry and labels, each a plain number or text; a struct would only rename them"
)]
fn frame(
    o: &mut String,
    top: f64,
    height: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    y_max_data: f64,
    x_ticks: &[(f64, String)],
) -> f64 {
    let step = nice_step(y_max_data, 5.0);
    let y_max = (y_max_data / step).ceil().max(1.0) * step;
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"##,
        top - 12.0,
        escape(title)
    );
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{PLOT_W:.1}" height="{height:.1}" fill="none" stroke="#444"/>"##
    );
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let y = top + height - v / y_max * height;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + PLOT_W,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
        v += step;
    }
    for (frac, text) in x_ticks {
        let x = LEFT + frac * PLOT_W;
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            top + height,
            top + height + 16.0,
            escape(text)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
        LEFT + PLOT_W / 2.0,
        top + height + 34.0,
        escape(x_label)
    );
    let _ = writeln!(
        o,
        r##"<text x="18" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"##,
        top + height / 2.0,
        top + height / 2.0,
        escape(y_label)
    );
    y_max
}

fn polyline(o: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let pts = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        o,
        r##"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.8"/>"##
    );
}

fn legend(o: &mut String, x: f64, y: f64, items: &[(&str, &str)]) {
    for (i, (text, colour)) in items.iter().enumerate() {
        let yy = y + i as f64 * 16.0;
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"##,
            x + 18.0,
            x + 24.0,
            yy + 4.0,
            escape(text)
        );
    }
}

/// Decades of the percentile axis: 0 → 0%, 1 → 90%, 2 → 99%, ... up to 99.999%.
const DECADES: f64 = 5.0;

/// (x fraction, latency ms) points of a histogram's percentile curve.
fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Beyond 1/len the curve is just the max: stop there.
    let max_decade = (h.len() as f64).log10().clamp(0.0, DECADES);
    let n = 200;
    let mut pts: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let d = max_decade * f64::from(i) / f64::from(n);
            let q = 1.0 - 10f64.powf(-d);
            (d / DECADES, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    pts.push((max_decade / DECADES, h.max() as f64 / 1000.0));
    pts
}

/// The whole SVG document.
pub fn svg(input: &PlotInput<'_>) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(o, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="22" font-size="16" text-anchor="middle">{}</text>"##,
        W / 2.0,
        escape(input.title)
    );

    // Panel 1: throughput over time.
    let (top, height) = (70.0, 230.0);
    let n = input.enqueue_per_s.len().max(input.completion_per_s.len());
    let span = n as f64 * input.bucket_s;
    let peak = input
        .enqueue_per_s
        .iter()
        .chain(input.completion_per_s)
        .copied()
        .fold(0.0, f64::max);
    let x_step = nice_step(span, 8.0);
    let mut x_ticks = Vec::new();
    let mut t = 0.0;
    while span > 0.0 && t <= span + 1e-9 {
        x_ticks.push((t / span, trim(t)));
        t += x_step;
    }
    let y_max = frame(
        &mut o,
        top,
        height,
        "Throughput",
        "seconds since the start of sending",
        "calls per second",
        peak,
        &x_ticks,
    );
    let series = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, r)| {
                let x = LEFT + (i as f64 + 0.5) * input.bucket_s / span.max(1e-9) * PLOT_W;
                let y = top + height - r / y_max * height;
                (x, y)
            })
            .collect()
    };
    polyline(&mut o, &series(input.enqueue_per_s), ENQUEUE_COLOUR);
    polyline(&mut o, &series(input.completion_per_s), COMPLETION_COLOUR);
    legend(
        &mut o,
        LEFT + PLOT_W - 190.0,
        top + 16.0,
        &[
            ("enqueued (202)", ENQUEUE_COLOUR),
            ("completed (callback)", COMPLETION_COLOUR),
        ],
    );

    // Panel 2: latency by percentile.
    let (top, height) = (390.0, 230.0);
    let enq = percentile_curve(input.enqueue_latency);
    let e2e = percentile_curve(input.end_to_end_latency);
    let lat_max = enq.iter().chain(&e2e).map(|p| p.1).fold(0.0, f64::max);
    let x_ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64 / DECADES, (*s).to_owned()))
        .collect();
    let y_max = frame(
        &mut o,
        top,
        height,
        "Latency by percentile",
        "percentile",
        "milliseconds",
        lat_max,
        &x_ticks,
    );
    let place = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter()
            .map(|(f, v)| (LEFT + f * PLOT_W, top + height - v / y_max * height))
            .collect()
    };
    polyline(&mut o, &place(&enq), ENQUEUE_COLOUR);
    polyline(&mut o, &place(&e2e), COMPLETION_COLOUR);
    legend(
        &mut o,
        LEFT + 14.0,
        top + 16.0,
        &[
            ("enqueue: send → 202", ENQUEUE_COLOUR),
            ("end to end: accepted → callback", COMPLETION_COLOUR),
        ],
    );
    let _ = writeln!(o, "</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(43_000.0, 5.0), 10_000.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(label(25_000.0), "25k");
        assert_eq!(label(2.5), "2.5");
    }
}
