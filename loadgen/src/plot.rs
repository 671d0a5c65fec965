//! The latency-by-percentile plot: the HdrHistogram plotter's view, as SVG.
//!
//! The x axis is log10(1/(1-p)), so 90%, 99%, 99.9%... are evenly spaced and the tail, where
//! saturation shows first, gets as much room as the median.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// Plot size in pixels.
const SIZE: (u32, u32) = (1000, 600);

/// One run's curve: (log10(1/(1-p)), latency ms) points.
#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// The curve of `h` (µs), sampled like the .hgrm file (5 ticks per half distance). The
    /// 100% row has no finite x; the maximum is drawn at the percentile of the last sample,
    /// 1 - 1/count, instead.
    pub fn new(label: impl Into<String>, h: &Histogram<u64>) -> Self {
        let mut points: Vec<(f64, f64)> = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                if q < 1.0 {
                    points.push((x_of(q), v.value_iterated_to() as f64 / 1e3));
                }
            }
            let x_last = (h.len() as f64).log10();
            if points.last().is_none_or(|&(x, _)| x < x_last) {
                points.push((x_last, h.max() as f64 / 1e3));
            }
        }
        Curve {
            label: label.into(),
            points,
        }
    }
}

impl Curve {
    /// The curve of a `.hgrm` percentile distribution (values in ms), as written by
    /// `report::write_hgrm` or HdrHistogram's `outputPercentileDistribution`.
    pub fn from_hgrm(label: impl Into<String>, text: &str) -> Result<Self> {
        let mut points = Vec::new();
        for line in text.lines().map(str::trim) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(v), Some(q)) = (cols.first(), cols.get(1)) else {
                continue;
            };
            let (Ok(v), Ok(q)) = (v.parse::<f64>(), q.parse::<f64>()) else {
                continue;
            };
            if q < 1.0 {
                points.push((x_of(q), v));
            }
        }
        if points.is_empty() {
            return Err(Error::Plot("no percentile rows in .hgrm".into()));
        }
        Ok(Curve {
            label: label.into(),
            points,
        })
    }
}

/// Percentile p (0..1) to the axis position log10(1/(1-p)).
fn x_of(q: f64) -> f64 {
    (1.0 / (1.0 - q)).log10()
}

/// Axis label for position k: 0 -> 0%, 1 -> 90%, 2 -> 99%, 3 -> 99.9%, ...
pub fn percentile_label(x: f64) -> String {
    let k = x.round();
    if (x - k).abs() > 1e-9 || k < 0.0 {
        return String::new();
    }
    match k as u32 {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        k => format!("99.{}%", "9".repeat(k as usize - 2)).replace(".%", "%"),
    }
}

/// Renders the curves as an SVG document.
pub fn render_svg(title: &str, curves: &[Curve]) -> Result<String> {
    let all = curves.iter().flat_map(|c| c.points.iter());
    let (x_max, y_max) = all.fold((0.0f64, 0.0f64), |(x, y), &(px, py)| (x.max(px), y.max(py)));
    // At least 0..99%, whole decades only, so every tick gets a label.
    let x_max = x_max.ceil().clamp(2.0, 9.0);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let err = |e: &dyn std::fmt::Display| Error::Plot(e.to_string());

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        let fmt_x = |x: &f64| percentile_label(*x);
        chart
            .configure_mesh()
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&fmt_x)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .draw()
            .map_err(|e| err(&e))?;
        for (i, c) in curves.iter().enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(c.points.iter().copied(), color))
                .map_err(|e| err(&e))?
                .label(c.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        if !curves.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Renders the curves to an SVG file at `path`.
pub fn save_svg(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let svg = render_svg(title, curves)?;
    crate::report::write_file(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::new_histogram;

    #[test]
    fn a_curve_read_back_from_an_hgrm_file_matches_the_histogram_curve() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 100).expect("record");
        }
        let mut hgrm = Vec::new();
        crate::report::write_hgrm(&mut hgrm, &h).expect("hgrm");
        let read = Curve::from_hgrm("r", &String::from_utf8(hgrm).expect("utf8")).expect("parse");
        let direct = Curve::new("d", &h);
        assert!(read.points.len() >= 10);
        for ((xa, ya), (xb, yb)) in read.points.iter().zip(&direct.points) {
            assert!(
                (xa - xb).abs() < 1e-3 && (ya - yb).abs() < 1e-2,
                "{xa},{ya} vs {xb},{yb}"
            );
        }
        assert!(Curve::from_hgrm("x", "not a histogram").is_err());
    }

    #[test]
    fn labels_are_nines() {
        let labels: Vec<String> = (0..6).map(|k| percentile_label(k as f64)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(percentile_label(0.5), "");
    }

    #[test]
    fn curve_runs_up_the_tail_to_the_max() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.saturating_record(i * 100);
        }
        let c = Curve::new("r", &h);
        assert!(c
            .points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = c.points.last().copied().unwrap_or_default();
        assert!(last.0 >= 3.0, "{last:?}");
        assert!((last.1 - 100.0).abs() < 0.1, "{last:?}");
    }

    #[test]
    fn svg_has_curves_and_nine_labels() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for i in 1..=2000u64 {
            a.saturating_record(i * 5);
            b.saturating_record(i * 9);
        }
        let svg = render_svg(
            "test",
            &[Curve::new("1000/s", &a), Curve::new("1500/s", &b)],
        )
        .expect("render");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // Axes and ticks are 1 px polylines too; curves and legend marks are 2 px.
        let thick = svg.matches(r#"stroke-width="2" points"#).count();
        assert_eq!(thick, 2 + 2, "two curves + two legend marks");
        for label in ["99%", "99.9%", "1500/s", "latency (ms)"] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Empty input still renders axes.
        assert!(render_svg("empty", &[]).is_ok());
    }
}
