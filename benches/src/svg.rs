//! The `--svg` report, written by hand: for each group of runs (one comparison), throughput over
//! time per target and the latency CDF per target (log latency axis), side by side.

use std::fmt::Write as _;

use crate::report::RunSummary;

const WIDTH: f64 = 1160.0;
const GROUP_HEIGHT: f64 = 380.0;
const PANEL_WIDTH: f64 = 470.0;
const PANEL_HEIGHT: f64 = 230.0;
/// Throughput is plotted in buckets of this many ms (the timeline's 100 ms is too noisy).
const PLOT_BUCKET_MS: u64 = 500;
const COLORS: &[&str] =
    &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Escapes text for an XML text node or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The smallest of 1, 2, 5 × 10^k at or above `x` (and the step for 5 ticks up to it).
fn nice_max(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&v| v >= x * 0.999_999)
        .unwrap_or(10.0 * magnitude)
}

fn short_number(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", trim(x / 1e6))
    } else if x >= 1e3 {
        format!("{}k", trim(x / 1e3))
    } else {
        trim(x)
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Renders groups of runs: `(title, runs)`.
pub fn render(groups: &[(String, Vec<&RunSummary>)]) -> String {
    let height = 20.0 + GROUP_HEIGHT * groups.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#);
    for (index, (title, runs)) in groups.iter().enumerate() {
        let top = 10.0 + GROUP_HEIGHT * index as f64;
        group(&mut s, top, title, runs);
    }
    s.push_str("</svg>\n");
    s
}

fn group(s: &mut String, top: f64, title: &str, runs: &[&RunSummary]) {
    let _ = writeln!(s, r#"<g transform="translate(0,{top})">"#);
    let _ = writeln!(s, r#"<text x="20" y="18" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    // Legend: one entry per target.
    let mut x = 20.0;
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let label = format!(
            "{} — {} ops/s, p99 {:.2} ms",
            run.label,
            short_number(run.ops_per_second),
            run.latency_us.p99 as f64 / 1e3
        );
        let _ = writeln!(s, r#"<rect x="{x}" y="30" width="12" height="12" fill="{color}"/>"#);
        let _ = writeln!(s, r#"<text x="{}" y="40">{}</text>"#, x + 16.0, escape(&label));
        x += 30.0 + 6.5 * label.chars().count() as f64;
    }
    throughput_panel(s, 70.0, 80.0, runs);
    cdf_panel(s, 70.0 + PANEL_WIDTH + 100.0, 80.0, runs);
    s.push_str("</g>\n");
}

/// Axes box, grid lines and labels; returns nothing, draws into `s`.
#[allow(clippy::too_many_arguments)]
fn frame(
    s: &mut String,
    left: f64,
    top: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[(f64, String)],
    y_ticks: &[(f64, String)],
) {
    let (right, bottom) = (left + PANEL_WIDTH, top + PANEL_HEIGHT);
    let _ =
        writeln!(s, r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#, left, top - 6.0, escape(title));
    for (fraction, label) in y_ticks {
        let y = bottom - fraction * PANEL_HEIGHT;
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e0e0e0"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 5.0,
            y + 4.0,
            escape(label)
        );
    }
    for (fraction, label) in x_ticks {
        let x = left + fraction * PANEL_WIDTH;
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#eeeeee"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 15.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + PANEL_WIDTH / 2.0,
        bottom + 32.0,
        escape(x_label)
    );
    let (lx, ly) = (left - 48.0, top + PANEL_HEIGHT / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">{}</text>"#,
        escape(y_label)
    );
}

fn polyline(s: &mut String, points: &[(f64, f64)], color: &str) {
    if points.is_empty() {
        return;
    }
    let mut text = String::new();
    for (x, y) in points {
        let _ = write!(text, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"/>"#,
        text.trim_end()
    );
}

/// ops/s per plot bucket for one run: (seconds at the bucket's middle, ops/s).
fn throughput_series(run: &RunSummary) -> Vec<(f64, f64)> {
    let bucket_ms = run.timeline_bucket_ms.max(1);
    let per = (PLOT_BUCKET_MS / bucket_ms).max(1) as usize;
    run.timeline_ops
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| {
            let seconds = chunk.len() as f64 * bucket_ms as f64 / 1e3;
            let t = (i * per) as f64 * bucket_ms as f64 / 1e3 + seconds / 2.0;
            (t, chunk.iter().sum::<u64>() as f64 / seconds)
        })
        .collect()
}

fn throughput_panel(s: &mut String, left: f64, top: f64, runs: &[&RunSummary]) {
    let series: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| throughput_series(r)).collect();
    let x_max = runs.iter().map(|r| r.duration_s).fold(0.0, f64::max).max(0.1);
    let y_max = nice_max(series.iter().flatten().map(|p| p.1).fold(0.0, f64::max));
    let x_step = nice_max(x_max / 5.0);
    let x_ticks: Vec<(f64, String)> =
        (0..=((x_max / x_step) as usize)).map(|i| i as f64 * x_step).map(|t| (t / x_max, trim(t))).collect();
    let y_ticks: Vec<(f64, String)> =
        (0..=5).map(|i| (i as f64 / 5.0, short_number(y_max * i as f64 / 5.0))).collect();
    frame(s, left, top, "throughput over time", "seconds into the measurement", "ops/s", &x_ticks, &y_ticks);
    for (i, points) in series.iter().enumerate() {
        let scaled: Vec<(f64, f64)> = points
            .iter()
            .map(|(t, v)| (left + t / x_max * PANEL_WIDTH, top + PANEL_HEIGHT - v / y_max * PANEL_HEIGHT))
            .collect();
        polyline(s, &scaled, COLORS[i % COLORS.len()]);
    }
}

fn cdf_panel(s: &mut String, left: f64, top: f64, runs: &[&RunSummary]) {
    let latencies = runs.iter().flat_map(|r| r.cdf.iter().map(|p| p.0.max(1)));
    let (lo, hi) = latencies.fold((u64::MAX, 1u64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo == u64::MAX { 1 } else { lo };
    // Decades of µs around the data.
    let x_lo = (lo as f64).log10().floor();
    let x_hi = ((hi as f64).log10().ceil()).max(x_lo + 1.0);
    let x_of = |us: u64| ((us.max(1) as f64).log10() - x_lo) / (x_hi - x_lo);
    let decade_label = |d: f64| {
        let us = 10f64.powf(d);
        if us >= 1e6 {
            format!("{} s", trim(us / 1e6))
        } else if us >= 1e3 {
            format!("{} ms", trim(us / 1e3))
        } else {
            format!("{} µs", trim(us))
        }
    };
    let x_ticks: Vec<(f64, String)> = (0..=((x_hi - x_lo) as usize))
        .map(|i| x_lo + i as f64)
        .map(|d| ((d - x_lo) / (x_hi - x_lo), decade_label(d)))
        .collect();
    let y_ticks: Vec<(f64, String)> =
        (0..=5).map(|i| (i as f64 / 5.0, format!("{:.1}", i as f64 / 5.0))).collect();
    frame(s, left, top, "latency CDF", "latency (log scale)", "fraction of ops", &x_ticks, &y_ticks);
    for (i, run) in runs.iter().enumerate() {
        // The CDF is sampled at fixed quantiles; straight lines between the samples.
        let points: Vec<(f64, f64)> = run
            .cdf
            .iter()
            .map(|&(us, fraction)| {
                (left + x_of(us) * PANEL_WIDTH, top + PANEL_HEIGHT - fraction * PANEL_HEIGHT)
            })
            .collect();
        polyline(s, &points, COLORS[i % COLORS.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    /// Tags open and close in order, attributes are quoted, text has no raw `<` or `&`.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "stray '>' in text {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                    "bad entity {entity:?}"
                );
            }
            let close = open + rest[open..].find('>').expect("unclosed tag");
            let tag = &rest[open + 1..close];
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "</{name}> closes the wrong tag");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().expect("tag name").to_string());
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(rest.trim().is_empty());
    }

    fn run(label: &str, scale: u64) -> RunSummary {
        RunSummary {
            label: label.to_string(),
            duration_s: 2.0,
            ops_per_second: 1_500.0,
            latency_us: Percentiles { p99: 9_000, ..Percentiles::default() },
            timeline_bucket_ms: 100,
            timeline_ops: (0..20).map(|i| 100 + i * scale).collect(),
            cdf: vec![(300 * scale, 0.0), (900 * scale, 0.5), (4_000 * scale, 0.99), (20_000 * scale, 1.0)],
            ..RunSummary::default()
        }
    }

    #[test]
    fn svg_is_well_formed_and_has_a_line_per_target_and_panel() {
        let (a, b) = (run("flotilla <3 nodes> & co", 1), run("etcd \"3\"", 3));
        let svg =
            render(&[("kv0, 256 clients".to_string(), vec![&a, &b]), ("one run".to_string(), vec![&a])]);
        assert_well_formed(&svg);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_eq!(svg.matches("<polyline").count(), 6, "2 panels × (2 + 1) runs");
        assert!(svg.contains("flotilla &lt;3 nodes&gt; &amp; co"));
        assert!(svg.contains("throughput over time") && svg.contains("latency CDF"));
    }

    #[test]
    fn empty_runs_still_render() {
        let empty = RunSummary::default();
        assert_well_formed(&render(&[("nothing".into(), vec![&empty])]));
        assert_well_formed(&render(&[]));
    }

    #[test]
    fn throughput_is_rebucketed_to_ops_per_second() {
        let r = run("x", 0); // 100 ops per 100 ms
        let series = throughput_series(&r);
        assert_eq!(series.len(), 4);
        assert!(series.iter().all(|&(_, v)| (v - 1_000.0).abs() < 1e-9), "{series:?}");
        assert!((series[0].0 - 0.25).abs() < 1e-9);
    }

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1_200.0), 2_000.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(2_000.0), 2_000.0);
    }
}
