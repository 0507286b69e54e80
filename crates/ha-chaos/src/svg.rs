//! Minimal SVG line charts (throughput vs clients, latency CDFs, latency
//! over time) for the bench and chaos reports. No dependencies: the output
//! is plain SVG text embedded in HTML or written to a file.

use std::fmt::Write;

/// Palette for series, cycled.
pub const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Axis scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// Base-10 logarithmic (values ≤ 0 are clamped to the smallest positive).
    Log,
}

/// A chart panel.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// X scale.
    pub x_scale: Scale,
    /// Y scale.
    pub y_scale: Scale,
    /// Data.
    pub series: Vec<Series>,
    /// Draw markers only (scatter) instead of lines.
    pub scatter: bool,
}

/// Escapes text for SVG/HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn tf(scale: Scale, v: f64) -> f64 {
    match scale {
        Scale::Linear => v,
        Scale::Log => v.max(1e-9).log10(),
    }
}

fn ticks(scale: Scale, lo: f64, hi: f64) -> Vec<f64> {
    match scale {
        Scale::Log => {
            let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
            (a..=b).map(|e| 10f64.powi(e)).collect()
        }
        Scale::Linear => {
            let span = (hi - lo).max(1e-9);
            let raw = span / 5.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|s| *s >= raw)
                .unwrap_or(mag * 10.0);
            let mut t = (lo / step).ceil() * step;
            let mut out = Vec::new();
            while t <= hi + step * 1e-6 && out.len() < 20 {
                out.push(t);
                t += step;
            }
            out
        }
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Chart {
    /// Renders the chart as a standalone `<svg>` of the given size.
    pub fn render(&self, width: u32, height: u32) -> String {
        let (ml, mr, mt, mb) = (70.0, 150.0, 30.0, 45.0);
        let (w, h) = (f64::from(width), f64::from(height));
        let pw = (w - ml - mr).max(10.0);
        let ph = (h - mt - mb).max(10.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            let (x, y) = (tf(self.x_scale, x), tf(self.y_scale, y));
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.y_scale == Scale::Linear {
            y0 = y0.min(0.0);
        }
        if (x1 - x0).abs() < 1e-12 {
            x1 = x0 + 1.0;
        }
        if (y1 - y0).abs() < 1e-12 {
            y1 = y0 + 1.0;
        }
        y1 += (y1 - y0) * 0.05;
        let sx = |x: f64| ml + (tf(self.x_scale, x) - x0) / (x1 - x0) * pw;
        let sy = |y: f64| mt + ph - (tf(self.y_scale, y) - y0) / (y1 - y0) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            s,
            r#"<rect width="{width}" height="{height}" fill="white"/><text x="{}" y="18" font-size="13" font-weight="bold">{}</text>"#,
            ml,
            esc(&self.title)
        );
        let _ = write!(
            s,
            r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        let (xt_lo, xt_hi) = (x0, x1);
        for t in ticks(self.x_scale, xt_lo, xt_hi) {
            let x = sx(t);
            if x < ml - 0.5 || x > ml + pw + 0.5 {
                continue;
            }
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                mt + ph,
                mt + ph + 14.0,
                fmt_num(t)
            );
        }
        for t in ticks(self.y_scale, y0, y1) {
            let y = sy(t);
            if y < mt - 0.5 || y > mt + ph + 0.5 {
                continue;
            }
            let _ = write!(
                s,
                r##"<line x1="{ml}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                ml + pw,
                ml - 4.0,
                y + 4.0,
                fmt_num(t)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            h - 8.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            mt + ph / 2.0,
            esc(&self.y_label)
        );
        for (k, series) in self.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            if self.scatter {
                for &(x, y) in &series.points {
                    let _ = write!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{color}" fill-opacity="0.6"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            } else if !series.points.is_empty() {
                let path: Vec<String> = series
                    .points
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                    .collect();
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    path.join(" ")
                );
                for &(x, y) in &series.points {
                    let _ = write!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
            let ly = mt + 10.0 + 16.0 * k as f64;
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                ml + pw + 10.0,
                ly - 9.0,
                ml + pw + 24.0,
                ly,
                esc(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Stacks panels vertically into one SVG document, each `width` ×
/// `height`. Each panel's drawing goes into a translated group (not a
/// nested `<svg>`, which some renderers lay out wrongly).
pub fn stack(panels: &[Chart], width: u32, height: u32) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="11">"#,
        height as usize * panels.len()
    );
    for (i, p) in panels.iter().enumerate() {
        let one = p.render(width, height);
        let body = one
            .find('>')
            .map(|open_end| &one[open_end + 1..])
            .and_then(|b| b.strip_suffix("</svg>"))
            .unwrap_or(&one);
        let _ = write!(
            s,
            r#"<g transform="translate(0,{})">{body}</g>"#,
            i as u32 * height
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_contains_every_series_and_escapes_labels() {
        let c = Chart {
            title: "a<b".into(),
            x_label: "clients".into(),
            y_label: "ops/s".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            series: vec![
                Series {
                    name: "etcd".into(),
                    points: vec![(1.0, 10.0), (16.0, 100.0)],
                },
                Series {
                    name: "ha".into(),
                    points: vec![(1.0, 20.0), (16.0, 300.0)],
                },
            ],
            scatter: false,
        };
        let svg = c.render(600, 300);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(svg.contains(">etcd<") && svg.contains(">ha<"));
    }

    #[test]
    fn stacked_panels_are_groups_at_their_offsets() {
        let c = |t: &str| Chart {
            title: t.into(),
            x_label: String::new(),
            y_label: String::new(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: vec![],
            scatter: false,
        };
        let svg = stack(&[c("first"), c("second")], 400, 200);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"height="400""#), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1, "{svg}");
        let second = svg.find("second").unwrap_or(0);
        let offset = svg.find(r#"translate(0,200)"#).unwrap_or(usize::MAX);
        assert!(offset < second, "{svg}");
        assert!(!svg.contains("100%"), "{svg}");
    }

    #[test]
    fn empty_chart_renders() {
        let c = Chart {
            title: "empty".into(),
            x_label: String::new(),
            y_label: String::new(),
            x_scale: Scale::Linear,
            y_scale: Scale::Log,
            series: vec![],
            scatter: true,
        };
        assert!(c.render(200, 100).ends_with("</svg>"));
    }
}
