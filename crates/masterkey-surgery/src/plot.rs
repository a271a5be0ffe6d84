//! The agreement-versus-K chart of a sweep, as an SVG string: top-1
//! agreement (solid) and top-5 overlap (dashed), in percent, for the found
//! banks and the random banks, with single banks (such as published8) as
//! marks at their K and the identity as the 100% line.

use plotters::prelude::*;

use crate::sweep::SweepPoint;

/// A single bank drawn as marks at its number of keys.
pub struct BankMark {
    pub name: String,
    pub keys: usize,
    pub top1: f64,
    pub top5_overlap: f64,
}

/// Okabe-Ito colours, safe for colour-blind readers.
const FOUND: RGBColor = RGBColor(0, 114, 178);
const RANDOM: RGBColor = RGBColor(213, 94, 0);
const MARK: RGBColor = RGBColor(0, 158, 115);
const IDENTITY: RGBColor = RGBColor(120, 120, 120);

pub fn agreement_vs_k_svg(title: &str, points: &[SweepPoint], marks: &[BankMark]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 480)).into_drawing_area();
        draw(&root, title, points, marks).expect("drawing into a string cannot fail");
    }
    svg
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    points: &[SweepPoint],
    marks: &[BankMark],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let max_k = points.iter().map(|p| p.k).chain(marks.iter().map(|m| m.keys)).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..max_k + 0.5, 0.0..105.0)?;
    chart
        .configure_mesh()
        .x_desc("keys per kernel size (K)")
        .y_desc("agreement with the original network (%)")
        .light_line_style(WHITE.mix(0.0))
        .x_labels(max_k as usize)
        .x_label_formatter(&|k| format!("{k:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;

    let pct = |v: f64| 100.0 * v;
    let found_top1: Vec<(f64, f64)> = points.iter().map(|p| (p.k as f64, pct(p.found.agreement.top1))).collect();
    let found_top5: Vec<(f64, f64)> =
        points.iter().map(|p| (p.k as f64, pct(p.found.agreement.top5_overlap))).collect();
    let random_top1: Vec<(f64, f64)> = points.iter().map(|p| (p.k as f64, pct(p.random_top1()))).collect();
    let random_top5: Vec<(f64, f64)> =
        points.iter().map(|p| (p.k as f64, pct(mean(p.random.iter().map(|r| r.agreement.top5_overlap))))).collect();

    chart
        .draw_series(LineSeries::new(vec![(0.5, 100.0), (max_k + 0.5, 100.0)], IDENTITY.stroke_width(1)))?
        .label("identity (no replacement)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], IDENTITY.stroke_width(1)));
    let mut top1_lines = vec![("k-means banks, top-1", &found_top1, FOUND)];
    let mut top5_lines = vec![("k-means banks, top-5 overlap", &found_top5, FOUND)];
    // Without random seeds there is no control to draw (rather than a line at 0).
    if points.iter().any(|p| !p.random.is_empty()) {
        top1_lines.push(("random banks (mean of seeds), top-1", &random_top1, RANDOM));
        top5_lines.push(("random banks, top-5 overlap", &random_top5, RANDOM));
    }
    for (name, line, colour) in top1_lines {
        chart
            .draw_series(LineSeries::new(line.iter().copied(), colour.stroke_width(3)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    for (name, line, colour) in top5_lines {
        chart
            .draw_series(DashedLineSeries::new(line.iter().copied(), 6, 4, colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(2)));
    }
    for mark in marks {
        let at = mark.keys as f64;
        chart
            .draw_series(std::iter::once(Circle::new((at, pct(mark.top1)), 7, MARK.filled())))?
            .label(format!("{}, top-1", mark.name))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, MARK.filled()));
        chart
            .draw_series(std::iter::once(TriangleMarker::new((at, pct(mark.top5_overlap)), 7, MARK.filled())))?
            .label(format!("{}, top-5 overlap", mark.name))
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, MARK.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Agreement;
    use crate::sweep::BankResult;

    fn result(top1: f64) -> BankResult {
        BankResult {
            bank: "b".into(),
            mean_abs_cos: 0.5,
            agreement: Agreement { images: 4, top1, top5_overlap: top1, mean_kl: 1.0 },
        }
    }

    #[test]
    fn the_chart_names_every_series_and_mark() {
        let points: Vec<SweepPoint> =
            (1..=3).map(|k| SweepPoint { k, found: result(0.2 * k as f64), random: vec![result(0.0)] }).collect();
        let mark = BankMark { name: "published8".into(), keys: 8, top1: 0.1, top5_overlap: 0.2 };
        let svg = agreement_vs_k_svg("EfficientNet-Lite0", &points, &[mark]);
        assert!(svg.starts_with("<svg"));
        for label in ["identity", "k-means banks, top-1", "random banks, top-5 overlap", "published8, top-1"] {
            assert!(svg.contains(label), "missing {label}");
        }
        let without_random: Vec<SweepPoint> = points.into_iter().map(|p| SweepPoint { random: vec![], ..p }).collect();
        let svg = agreement_vs_k_svg("EfficientNet-Lite0", &without_random, &[]);
        assert!(svg.contains("k-means banks, top-1") && !svg.contains("random banks"));
    }
}
