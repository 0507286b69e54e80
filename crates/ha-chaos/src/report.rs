//! The chaos HTML report: verdict, faults, an SVG timeline of operations
//! and faults, a latency plot, and the counter-example when there is one.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::chaos::{ChaosOptions, Recording, Verdict, register_spans};
use crate::svg::{Chart, Scale, Series, esc};
use crate::workload::OpSpan;

/// Most operations drawn on the timeline (evenly sampled beyond).
pub const MAX_TIMELINE_OPS: usize = 20_000;
/// Most points on the latency plot per series (evenly sampled beyond).
pub const MAX_LATENCY_POINTS: usize = 5_000;

fn sample<T: Clone>(v: &[T], max: usize) -> Vec<T> {
    if v.len() <= max {
        return v.to_vec();
    }
    let step = v.len().div_ceil(max);
    v.iter().step_by(step).cloned().collect()
}

/// SVG timeline: one row per client, a bar per operation (green: answered,
/// orange: unknown outcome), fault intervals shaded red and labelled.
pub fn timeline(spans: &[OpSpan], verdict: &Verdict) -> String {
    let mut rows: Vec<&str> = spans.iter().map(|s| s.row.as_str()).collect();
    rows.sort_unstable();
    rows.dedup();
    let row_of: BTreeMap<&str, usize> = rows.iter().enumerate().map(|(i, r)| (*r, i)).collect();
    let end_ns = spans
        .iter()
        .map(|s| s.end_ns.unwrap_or(s.start_ns))
        .chain(verdict.faults.iter().map(|f| f.end_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let (ml, w, rh, top) = (90.0, 1000.0, 12.0, 40.0);
    let h = top + rh * rows.len() as f64 + 30.0;
    let x = |ns: u64| ml + ns as f64 / end_ns as f64 * w;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h:.0}" font-family="sans-serif" font-size="10">"#,
        ml + w + 20.0
    );
    for f in &verdict.faults {
        let (a, b) = (x(f.start_ns), x(f.end_ns));
        let fill = if f.applied { "#f4a6a6" } else { "#ddd" };
        let _ = write!(
            s,
            r#"<rect x="{a:.1}" y="{}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="0.5"><title>{}</title></rect><text x="{a:.1}" y="{}" font-size="9">{}</text>"#,
            top - 4.0,
            (b - a).max(1.0),
            rh * rows.len() as f64 + 4.0,
            esc(&format!("{}: {}", f.kind.name(), f.detail)),
            top - 8.0,
            esc(f.kind.name())
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="4" y="{:.1}">{}</text>"#,
            top + rh * i as f64 + 9.0,
            esc(r)
        );
    }
    for sp in sample(spans, MAX_TIMELINE_OPS) {
        let row = row_of.get(sp.row.as_str()).copied().unwrap_or(0);
        let (a, b, color) = match sp.end_ns {
            Some(e) => (x(sp.start_ns), x(e), "#2ca02c"),
            None => (x(sp.start_ns), x(sp.start_ns) + 3.0, "#ff7f0e"),
        };
        let _ = write!(
            s,
            r#"<rect x="{a:.1}" y="{:.1}" width="{:.2}" height="{:.1}" fill="{color}"/>"#,
            top + rh * row as f64 + 1.0,
            (b - a).max(0.6),
            rh - 2.0
        );
    }
    let secs = end_ns as f64 / 1e9;
    for k in 0..=10 {
        let t = secs * f64::from(k) / 10.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"#,
            ml + w * f64::from(k) / 10.0,
            h - 8.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Latency over time, one series per operation kind (answered ops only).
pub fn latency_plot(spans: &[OpSpan]) -> String {
    let mut by_kind: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for sp in spans {
        if let Some(e) = sp.end_ns {
            by_kind.entry(sp.kind).or_default().push((
                sp.start_ns as f64 / 1e9,
                (e.saturating_sub(sp.start_ns)) as f64 / 1e6,
            ));
        }
    }
    Chart {
        title: "latency of answered operations".into(),
        x_label: "time (s)".into(),
        y_label: "latency (ms)".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log,
        series: by_kind
            .into_iter()
            .map(|(k, v)| Series {
                name: k.to_owned(),
                points: sample(&v, MAX_LATENCY_POINTS),
            })
            .collect(),
        scatter: true,
    }
    .render(1100, 320)
}

/// The whole report.
pub fn html(v: &Verdict, rec: &Recording, opts: &ChaosOptions) -> String {
    let mut spans = register_spans(&rec.register);
    spans.extend(rec.set.spans.iter().cloned());
    spans.extend(rec.lock.spans.iter().cloned());
    let mut s = String::new();
    let status = if v.ok() { "PASS" } else { "FAIL" };
    let color = if v.ok() { "#2ca02c" } else { "#d62728" };
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ha chaos: {status}</title>\
         <style>body{{font-family:sans-serif;margin:20px;max-width:1200px}}td,th{{padding:2px 8px;text-align:left}}pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>"
    );
    let _ = write!(
        s,
        "<h1 style=\"color:{color}\">{status}</h1><p>{}</p>",
        esc(&v.summary())
    );
    let _ = write!(
        s,
        "<table><tr><th>system</th><td>{}</td></tr><tr><th>members</th><td>{}</td></tr><tr><th>network</th><td>{}</td></tr>\
         <tr><th>seed</th><td>{}</td></tr><tr><th>duration</th><td>{} ms (run took {:.1} s)</td></tr>\
         <tr><th>heartbeat / election timeout</th><td>{} / {} ms</td></tr><tr><th>deliberate fault</th><td>{:?}</td></tr>\
         <tr><th>linearizability (register/CAS)</th><td>{}</td></tr>\
         <tr><th>register ops</th><td>{} ({} unknown outcome)</td></tr>\
         <tr><th>set: acknowledged / lost / phantom</th><td>{} / {} / {} ({} unknown, {} of them present)</td></tr>\
         <tr><th>lock: grants / stale writes rejected / violations</th><td>{} / {} / {}</td></tr></table>",
        esc(&v.system),
        opts.nodes,
        esc(&v.network),
        v.seed,
        opts.duration_ms,
        v.elapsed_s,
        opts.heartbeat_ms,
        opts.election_timeout_ms,
        v.broken,
        esc(&v.linearizability),
        v.register_ops,
        v.register_unknown,
        v.set.acked,
        v.set.lost.len(),
        v.set.phantom.len(),
        v.set.unknown,
        v.set.unknown_present,
        v.lock_grants,
        v.fencing_rejections,
        v.fencing_violations.len()
    );
    s.push_str("<h2>Faults</h2><table><tr><th>kind</th><th>from</th><th>to</th><th>what</th></tr>");
    for f in &v.faults {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{:.1}s</td><td>{:.1}s</td><td>{}</td></tr>",
            f.kind.name(),
            f.start_ns as f64 / 1e9,
            f.end_ns as f64 / 1e9,
            esc(&f.detail)
        );
    }
    s.push_str("</table>");
    let _ = write!(
        s,
        "<p>exercised: {}; never applied: {}</p>",
        esc(&v
            .exercised
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")),
        if v.not_exercised.is_empty() {
            "none".to_owned()
        } else {
            esc(&v.not_exercised.join(", "))
        }
    );
    if let Some(ce) = &v.counterexample {
        let _ = write!(s, "<h2>Counter-example</h2><pre>{}</pre>", esc(ce));
    }
    if !v.set.lost.is_empty() {
        let _ = write!(
            s,
            "<h2>Lost acknowledged writes</h2><pre>{}</pre>",
            esc(&v
                .set
                .lost
                .iter()
                .take(100)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"))
        );
    }
    if !v.fencing_violations.is_empty() {
        let _ = write!(
            s,
            "<h2>Fencing violations</h2><pre>{}</pre>",
            esc(&v
                .fencing_violations
                .iter()
                .take(100)
                .map(|f| f.what.clone())
                .collect::<Vec<_>>()
                .join("\n"))
        );
    }
    s.push_str("<h2>Timeline</h2><p>green: answered, orange: unknown outcome (drawn at invocation); red bands: faults (hover for details)</p>");
    s.push_str(&timeline(&spans, v));
    s.push_str("<h2>Latency</h2>");
    s.push_str(&latency_plot(&spans));
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_bounds_size_and_keeps_small_inputs() {
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(sample(&v, 200).len(), 100);
        assert!(sample(&v, 10).len() <= 10);
    }

    #[test]
    fn latency_plot_has_a_series_per_kind() {
        let spans = vec![
            OpSpan {
                row: "a".into(),
                start_ns: 0,
                end_ns: Some(2_000_000),
                kind: "get",
            },
            OpSpan {
                row: "a".into(),
                start_ns: 1,
                end_ns: None,
                kind: "put",
            },
        ];
        let svg = latency_plot(&spans);
        assert!(svg.contains(">get<"));
        assert!(!svg.contains(">put<"), "unknown ops have no latency");
    }
}
