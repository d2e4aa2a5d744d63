//! Charts drawn on the server as SVG, so a page needs no script: a bar chart of durations and a
//! test's duration trend. Every mark carries a `<title>`, which browsers show on hover.

use std::fmt::Write;

use super::html::{duration, esc};

/// Horizontal bars, one per `(label, milliseconds)`, scaled to the largest.
pub(crate) fn bars(items: &[(String, u64)]) -> String {
    const LABEL_W: f64 = 360.0;
    const BAR_W: f64 = 480.0;
    const ROW: f64 = 22.0;
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let height = ROW * items.len() as f64 + 10.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart bars\" width=\"{}\" height=\"{height}\" \
         role=\"img\" aria-label=\"bar chart\" font-size=\"12\">",
        LABEL_W + BAR_W + 90.0
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 5.0 + ROW * i as f64;
        let w = (*v as f64 / max * BAR_W).max(1.0);
        let shown: String = label.chars().take(52).collect();
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#0969da\"><title>{}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            LABEL_W - 6.0,
            y + 14.0,
            esc(&shown),
            ROW - 6.0,
            esc(label),
            duration(*v),
            LABEL_W + w + 5.0,
            y + 14.0,
            duration(*v)
        );
    }
    out.push_str("</svg>");
    out
}

/// One point of a trend: an attempt's duration, and whether it failed.
pub(crate) struct Point {
    pub label: String,
    pub ms: u64,
    pub failed: bool,
}

/// Durations in the order they happened: a line through them, passes as green dots, failures as
/// red ones, with the axis labelled at zero and at the maximum.
pub(crate) fn trend(points: &[Point]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const PAD: f64 = 12.0;
    let max = points.iter().map(|p| p.ms).max().unwrap_or(0).max(1) as f64;
    let step = if points.len() > 1 {
        (W - LEFT - PAD) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let at = |i: usize, ms: u64| {
        (
            LEFT + step * i as f64,
            H - PAD - (ms as f64 / max) * (H - 2.0 * PAD),
        )
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart trend\" width=\"{W}\" height=\"{H}\" \
         role=\"img\" aria-label=\"duration trend\" font-size=\"12\">\
         <line x1=\"{LEFT}\" y1=\"{PAD}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#8c959f\"/>\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#8c959f\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
        H - PAD,
        H - PAD,
        W - PAD,
        H - PAD,
        LEFT - 6.0,
        PAD + 4.0,
        duration(max as u64),
        LEFT - 6.0,
        H - PAD,
    );
    if points.len() > 1 {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (x, y) = at(i, p.ms);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"#8c959f\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    for (i, p) in points.iter().enumerate() {
        let (x, y) = at(i, p.ms);
        let (class, color) = if p.failed {
            ("fail", "#cf222e")
        } else {
            ("pass", "#1a7f37")
        };
        let _ = write!(
            out,
            "<circle class=\"{class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{color}\"><title>{}: {}</title></circle>",
            esc(&p.label),
            duration(p.ms)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(&[("a<b".into(), 100), ("c".into(), 50)]);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("width=\"480.0\""), "{svg}");
        assert!(svg.contains("width=\"240.0\""), "{svg}");
        assert!(svg.contains("a&lt;b"));
    }

    #[test]
    fn a_trend_marks_failures_apart_from_passes() {
        let p = |ms, failed| Point {
            label: "run 1".into(),
            ms,
            failed,
        };
        let svg = trend(&[p(10, false), p(40, true), p(20, false)]);
        assert_eq!(svg.matches("class=\"pass\"").count(), 2);
        assert_eq!(svg.matches("class=\"fail\"").count(), 1);
        assert!(svg.contains("<polyline"));
        // The slowest point is at the top of the plot.
        assert!(svg.contains("cy=\"12.0\""), "{svg}");
    }
}
