//! SVG charts (crisp at any zoom, embedded inline in the page).

use plotters::prelude::*;

pub use plotters::chart::SeriesLabelPosition;

/// One line of a line chart, or a set of marked points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw the points as circles instead of joining them.
    pub markers: bool,
}

pub struct Axes<'a> {
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x_range: std::ops::Range<f64>,
    pub y_range: std::ops::Range<f64>,
    /// Where the legend goes: a corner the curves leave free.
    pub legend: SeriesLabelPosition,
}

fn colour(i: usize) -> RGBColor {
    // Colour-blind-safe (Okabe-Ito) palette.
    const P: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (0, 0, 0),
        (240, 228, 66),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// A line chart; the first series is drawn thicker (it is the overall one).
pub fn line_chart(title: &str, axes: &Axes, series: &[Series]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        draw_lines(&root, title, axes, series).expect("drawing into a string cannot fail");
    }
    svg
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    axes: &Axes,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(axes.x_range.clone(), axes.y_range.clone())?;
    chart.configure_mesh().x_desc(axes.x_desc).y_desc(axes.y_desc).light_line_style(WHITE.mix(0.0)).draw()?;
    for (i, s) in series.iter().enumerate() {
        if s.markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 6, colour(i).filled())))?
                .label(s.name.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour(i).filled()));
            continue;
        }
        let style = colour(i).stroke_width(if i == 0 { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour(i).stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(axes.legend.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// A heat map of shares in [0, 1]: rows are labelled categories (top to
/// bottom), columns equal-width bins of `[0, 1]` on the x axis.
pub fn heatmap(title: &str, x_desc: &str, row_labels: &[String], values: &[Vec<f64>]) -> String {
    let mut svg = String::new();
    {
        let height = 90 + 26 * row_labels.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        draw_heatmap(&root, title, x_desc, row_labels, values).expect("drawing into a string cannot fail");
    }
    svg
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    row_labels: &[String],
    values: &[Vec<f64>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let rows = row_labels.len();
    let cols = values.first().map_or(1, Vec::len).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, 0.0..rows as f64)?;
    let label = |y: &f64| {
        let i = rows as f64 - y - 0.5;
        if i >= 0.0 && (i - i.round()).abs() < 1e-6 {
            row_labels.get(i.round() as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart.configure_mesh().disable_mesh().x_desc(x_desc).y_labels(rows * 2 + 1).y_label_formatter(&label).draw()?;
    let max = values.iter().flatten().fold(0.0f64, |m, &v| m.max(v)).max(1e-12);
    chart.draw_series(values.iter().enumerate().flat_map(|(r, row)| {
        row.iter().enumerate().map(move |(c, &v)| {
            let t = (v / max).clamp(0.0, 1.0);
            let shade = RGBColor((247.0 - 239.0 * t) as u8, (251.0 - 203.0 * t) as u8, (255.0 - 148.0 * t) as u8);
            let (x0, x1) = (c as f64 / cols as f64, (c + 1) as f64 / cols as f64);
            let y1 = (rows - r) as f64;
            Rectangle::new([(x0, y1 - 1.0), (x1, y1)], shade.filled())
        })
    }))?;
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let axes = Axes {
            x_desc: "|cos| threshold",
            y_desc: "coverage (%)",
            x_range: 0.0..1.0,
            y_range: 0.0..100.0,
            legend: SeriesLabelPosition::LowerLeft,
        };
        let svg = line_chart(
            "t",
            &axes,
            &[
                Series { name: "all models".into(), points: vec![(0.0, 100.0), (1.0, 0.0)], markers: false },
                Series { name: "published8".into(), points: vec![(0.5, 50.0)], markers: true },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.contains("all models") && svg.contains("coverage (%)"));
        assert!(svg.contains("published8") && svg.contains("<circle"));
        let svg = heatmap("h", "depth", &["key1".into(), "key2".into()], &[vec![0.1, 0.9], vec![0.0, 0.5]]);
        assert!(svg.contains("key1") && svg.contains("key2") && svg.matches("<rect").count() >= 4);
    }
}
