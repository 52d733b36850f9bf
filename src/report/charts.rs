//! SVG charts (plotters) for the notebooks and for `shear inspect --charts` / `shear report`.
//!
//! Every chart has a title, axis labels with units, and an opaque white background, so it reads the same
//! in light and dark Jupyter themes and as a file. In a notebook, a [`Svg`] or [`Html`] value as the last
//! expression of a cell is shown inline through evcxr's display protocol.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::DataFrame;

use crate::error::{Error, Result};

/// An SVG document. Shown inline by evcxr (`image/svg+xml`).
#[derive(Debug, Clone)]
pub struct Svg(pub String);

impl Svg {
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT", self.0);
    }

    /// Write the chart to `path` (the parent directory must exist).
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.0).map_err(|e| Error::io(path, e))
    }
}

/// An HTML fragment. Shown inline by evcxr (`text/html`).
#[derive(Debug, Clone)]
pub struct Html(pub String);

impl Html {
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.0);
    }
}

/// A DataFrame as an HTML table (polars has no HTML repr in Rust). Long frames show their first and last
/// `max_rows / 2` rows.
pub fn table(df: &DataFrame, max_rows: usize) -> Html {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut h = String::from("<table class=\"dataframe\">\n<thead><tr>");
    for c in df.columns() {
        h.push_str(&format!("<th>{}<br><small>{}</small></th>", esc(c.name()), esc(&c.dtype().to_string())));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    let n = df.height();
    let rows: Vec<Option<usize>> = if n <= max_rows {
        (0..n).map(Some).collect()
    } else {
        let half = max_rows / 2;
        (0..half).map(Some).chain(std::iter::once(None)).chain((n - half..n).map(Some)).collect()
    };
    for r in rows {
        h.push_str("<tr>");
        for c in df.columns() {
            let cell = match r {
                Some(i) => match c.get(i) {
                    Ok(v) => fmt_value(&v),
                    Err(_) => String::new(),
                },
                None => "…".to_string(),
            };
            h.push_str(&format!("<td>{}</td>", esc(&cell)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str(&format!("</tbody></table>\n<p><small>{} rows × {} columns</small></p>", n, df.width()));
    Html(h)
}

fn fmt_value(v: &polars::prelude::AnyValue) -> String {
    use polars::prelude::AnyValue as A;
    match v {
        A::Float64(x) => format!("{x:.4}"),
        A::Float32(x) => format!("{x:.4}"),
        A::String(s) => s.to_string(),
        A::Null => String::new(),
        other => other.to_string(),
    }
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines mark references and targets.
    pub dashed: bool,
    /// Palette index (default: the line's position), so a value and its target can share a colour.
    pub color: Option<usize>,
}

impl Line {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, dashed: false, color: None }
    }

    pub fn dashed(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, dashed: true, color: None }
    }

    pub fn color(mut self, palette_index: usize) -> Self {
        self.color = Some(palette_index);
        self
    }
}

/// Axis titles and size of a chart.
#[derive(Debug, Clone)]
pub struct Axes {
    pub title: String,
    pub x: String,
    pub y: String,
    pub size: (u32, u32),
}

impl Axes {
    pub fn new(title: impl Into<String>, x: impl Into<String>, y: impl Into<String>) -> Self {
        Self { title: title.into(), x: x.into(), y: y.into(), size: (720, 360) }
    }

    pub fn size(mut self, w: u32, h: u32) -> Self {
        self.size = (w, h);
        self
    }
}

/// Every chart's frame: the title above, room for tick labels and axis titles left and below.
fn builder<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    axes: &Axes,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(&axes.title, ("sans-serif", TITLE_PX).into_font().color(&BLACK))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(y_label_area);
    b
}

/// Font sizes in SVG pixels, chosen to stay legible when a 720-pixel chart fills a 1,400-pixel window
/// at half width.
const TITLE_PX: u32 = 20;
const AXIS_PX: u32 = 16;
const LABEL_PX: u32 = 15;
const LEGEND_PX: u32 = 15;
/// Width a legend allows per character of a name at `LEGEND_PX`.
const LEGEND_CHAR_PX: u32 = 8;

/// Tick labels of a count axis: whole numbers only (a tick at 2.5 masks gets no label), with thousands
/// separators.
fn count_label(y: &f64) -> String {
    if (y - y.round()).abs() < 1e-9 {
        thousands(*y)
    } else {
        String::new()
    }
}

/// A whole number with thousands separators: 1024000 → "1,024,000".
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn draw_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Invalid(format!("drawing a chart: {e}"))
}

/// Colour-blind-safe qualitative palette (Okabe–Ito), dark enough on white.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

/// The drawn range of an axis whose finite data span `lo..=hi`: widened by `pad` of the span on each
/// side, or by 0.5 when the data are flat. A span that overflows f64 (values near ±1e308, as in a corrupt
/// log) is refused: plotters cannot place ticks on an infinite axis and would never return.
fn axis_range(axes: &Axes, (lo, hi): (f64, f64), pad: f64) -> Result<(f64, f64)> {
    if !(lo.is_finite() && hi.is_finite()) {
        return Ok((0.0, 1.0));
    }
    if (hi - lo).abs() < 1e-12 {
        return Ok((lo - 0.5, hi + 0.5));
    }
    let p = (hi - lo) * pad;
    let range = (lo - p, hi + p);
    if !(range.0.is_finite() && range.1.is_finite() && (range.1 - range.0).is_finite()) {
        return Err(Error::Invalid(format!(
            "chart `{}`: values from {lo:e} to {hi:e} are too far apart to draw (a corrupt log?)",
            axes.title
        )));
    }
    Ok(range)
}

fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// At most `max` points, evenly spaced, always keeping the last: a chart is ~700 px wide, and long runs
/// would otherwise make SVGs of hundreds of kB.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if out.last() != points.last() {
        out.push(*points.last().unwrap());
    }
    out
}

/// Lines over a shared x axis (e.g. a metric against the optimizer step); lines of more than 200 points
/// are thinned to 200.
pub fn line_chart(axes: &Axes, lines: &[Line]) -> Result<Svg> {
    if lines.iter().all(|l| l.points.is_empty()) {
        return Err(Error::Invalid(format!("chart `{}`: no data points", axes.title)));
    }
    let (x0, x1) = axis_range(axes, extent(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0))), 0.0)?;
    let (y0, y1) = axis_range(axes, extent(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1))), 0.05)?;
    let integer_x = lines.iter().all(|l| l.points.iter().all(|p| p.0.fract() == 0.0));
    // The legend goes beside the plot, never over the data.
    let legend_w = if lines.len() > 1 {
        (lines.iter().map(|l| l.name.chars().count()).max().unwrap_or(0) as u32 * LEGEND_CHAR_PX + 44).min(340)
    } else {
        0
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (axes.size.0 + legend_w, axes.size.1)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = root.split_horizontally(axes.size.0);
        let mut chart = builder(&plot, axes, 64).build_cartesian_2d(x0..x1, y0..y1).map_err(draw_err)?;
        let x_fmt = |x: &f64| if integer_x { thousands(*x) } else { format!("{x}") };
        chart
            .configure_mesh()
            .x_desc(&axes.x)
            .y_desc(&axes.y)
            .x_label_formatter(&x_fmt)
            .light_line_style(RGBColor(235, 235, 235))
            .label_style(("sans-serif", LABEL_PX).into_font().color(&BLACK))
            .axis_desc_style(("sans-serif", AXIS_PX).into_font().color(&BLACK))
            .draw()
            .map_err(draw_err)?;
        for (i, line) in lines.iter().enumerate() {
            let points = thin(&line.points, 200);
            let style = PALETTE[line.color.unwrap_or(i) % PALETTE.len()].stroke_width(2);
            if line.dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style)).map_err(draw_err)?;
            } else {
                chart.draw_series(LineSeries::new(points, style)).map_err(draw_err)?;
            }
        }
        if legend_w > 0 {
            draw_legend(&legend, lines)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Svg(out))
}

/// One row per line: a short solid or dashed stroke in the line's colour and its name.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, lines: &[Line]) -> Result<()> {
    let font = ("sans-serif", LEGEND_PX).into_font().color(&BLACK);
    for (i, line) in lines.iter().enumerate() {
        let y = 44 + i as i32 * 20;
        let color = PALETTE[line.color.unwrap_or(i) % PALETTE.len()];
        let segments: Vec<(i32, i32)> = if line.dashed { vec![(4, 10), (14, 20), (24, 30)] } else { vec![(4, 30)] };
        for (a, b) in segments {
            area.draw(&PathElement::new(vec![(a, y), (b, y)], color.stroke_width(2))).map_err(draw_err)?;
        }
        area.draw(&Text::new(line.name.clone(), (36, y - 7), font.clone())).map_err(draw_err)?;
    }
    Ok(())
}

/// The mesh of a chart over categories at x = 0, 1, …: every `every`-th one labelled (plotters is asked
/// for `ticks` x ticks), no vertical grid, whole-number y ticks only when the values are `counts`.
fn category_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    axes: &Axes,
    labels: &[String],
    (ticks, every): (usize, usize),
    counts: bool,
) -> Result<()> {
    let n = labels.len();
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n && (i as usize).is_multiple_of(every) {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    if counts {
        mesh.y_label_formatter(&count_label);
    }
    mesh.disable_x_mesh()
        .x_desc(&axes.x)
        .y_desc(&axes.y)
        .x_labels(ticks)
        .x_label_formatter(&label)
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", LABEL_PX).into_font().color(&BLACK))
        .axis_desc_style(("sans-serif", AXIS_PX).into_font().color(&BLACK))
        .draw()
        .map_err(draw_err)
}

/// Vertical bars, one per labelled category (labels are drawn under every `label_every`-th bar).
pub fn bar_chart(axes: &Axes, labels: &[String], values: &[f64], reference: Option<(&str, f64)>) -> Result<Svg> {
    if labels.len() != values.len() || values.is_empty() {
        return Err(Error::Invalid(format!(
            "chart `{}`: {} labels for {} values",
            axes.title,
            labels.len(),
            values.len()
        )));
    }
    let max = extent(values.iter().copied().chain(reference.map(|r| r.1))).1;
    let top = if max > 0.0 { axis_range(axes, (0.0, max), 0.1)?.1 } else { 1.0 };
    let n = values.len();
    let label_every = n.div_ceil(32).max(1);
    // The reference line's legend goes beside the plot, never over the bars.
    let legend = reference.map(|(name, _)| Line::dashed(name, vec![]).color(1));
    let legend_w = legend.as_ref().map(|l| (l.name.chars().count() as u32 * LEGEND_CHAR_PX + 44).min(340)).unwrap_or(0);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (axes.size.0 + legend_w, axes.size.1)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend_area) = root.split_horizontally(axes.size.0);
        let mut chart =
            builder(&plot, axes, 64).build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top).map_err(draw_err)?;
        let counts = values.iter().all(|v| v.fract() == 0.0);
        category_mesh(&mut chart, axes, labels, (n.min(32), label_every), counts)?;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| Rectangle::new([(i as f64 - 0.4, 0.0), (i as f64 + 0.4, v)], PALETTE[0].filled())),
            )
            .map_err(draw_err)?;
        if let (Some((_, r)), Some(legend)) = (reference, &legend) {
            let style = PALETTE[1].stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(vec![(-0.5, r), (n as f64 - 0.5, r)], 6, 4, style))
                .map_err(draw_err)?;
            draw_legend(&legend_area, std::slice::from_ref(legend))?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Svg(out))
}

/// Bars in groups: `series[s].1[g]` is series `s`'s bar in group `g` (e.g. a model's accuracy on a task).
/// `marks` draws one dashed level across each group's bars (e.g. chance); the legend sits beside the plot.
pub fn grouped_bar_chart(
    axes: &Axes,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    marks: Option<(&str, &[f64])>,
) -> Result<Svg> {
    if groups.is_empty() || series.is_empty() || series.iter().any(|(_, v)| v.len() != groups.len()) {
        return Err(Error::Invalid(format!("chart `{}`: every series needs one value per group", axes.title)));
    }
    if marks.is_some_and(|(_, m)| m.len() != groups.len()) {
        return Err(Error::Invalid(format!("chart `{}`: one mark per group", axes.title)));
    }
    let values = series.iter().flat_map(|(_, v)| v.iter().copied());
    let max = extent(values.chain(marks.iter().flat_map(|(_, m)| m.iter().copied()))).1;
    let top = if max > 0.0 { axis_range(axes, (0.0, max), 0.1)?.1 } else { 1.0 };
    let (n, k) = (groups.len(), series.len());
    let width = 0.8 / k as f64;
    let names: Vec<&str> = series.iter().map(|(s, _)| s.as_str()).chain(marks.map(|(m, _)| m)).collect();
    let legend_w = (names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32 * LEGEND_CHAR_PX + 44).min(340);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (axes.size.0 + legend_w, axes.size.1)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = root.split_horizontally(axes.size.0);
        let mut chart =
            builder(&plot, axes, 64).build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top).map_err(draw_err)?;
        category_mesh(&mut chart, axes, groups, (n + 1, 1), false)?;
        for (s, (_, v)) in series.iter().enumerate() {
            let left = |g: usize| g as f64 - 0.4 + s as f64 * width;
            let bars = v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(|(g, &y)| {
                Rectangle::new(
                    [(left(g) + 0.01, 0.0), (left(g) + width - 0.01, y)],
                    PALETTE[s % PALETTE.len()].filled(),
                )
            });
            chart.draw_series(bars).map_err(draw_err)?;
        }
        if let Some((_, m)) = marks {
            for (g, &y) in m.iter().enumerate() {
                let style = BLACK.stroke_width(2);
                let level = vec![(g as f64 - 0.45, y), (g as f64 + 0.45, y)];
                chart.draw_series(DashedLineSeries::new(level, 5, 3, style)).map_err(draw_err)?;
            }
        }
        let font = ("sans-serif", LEGEND_PX).into_font().color(&BLACK);
        for (i, name) in names.iter().enumerate() {
            let y = 44 + i as i32 * 20;
            if i < k {
                let swatch = Rectangle::new([(4, y - 6), (30, y + 6)], PALETTE[i % PALETTE.len()].filled());
                legend.draw(&swatch).map_err(draw_err)?;
            } else {
                for (a, b) in [(4, 10), (14, 20), (24, 30)] {
                    legend.draw(&PathElement::new(vec![(a, y), (b, y)], BLACK.stroke_width(2))).map_err(draw_err)?;
                }
            }
            legend.draw(&Text::new(name.to_string(), (36, y - 7), font.clone())).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Svg(out))
}

/// A heat map: `values[row][col]` in `[0, max]`, each cell labelled with its value (`decimals` places);
/// row 0 at the top.
pub struct Grid {
    pub values: Vec<Vec<f64>>,
    pub max: f64,
    pub decimals: usize,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Cells drawn with a heavy frame (e.g. what materialization keeps); empty: none.
    pub marked: Vec<Vec<bool>>,
    /// Rows drawn in grey (e.g. removed layers); empty: none.
    pub greyed_rows: Vec<bool>,
    /// A heavy vertical separator after every `col_group` columns (e.g. the query heads of a KV group);
    /// 0: none.
    pub col_group: usize,
    /// A line under the plot explaining the marks.
    pub note: Option<String>,
}

pub fn heatmap(axes: &Axes, grid: &Grid) -> Result<Svg> {
    let values = &grid.values;
    let rows = values.len();
    let cols = values.first().map(|r| r.len()).unwrap_or(0);
    if rows == 0
        || cols == 0
        || values.iter().any(|r| r.len() != cols)
        || grid.col_labels.len() != cols
        || grid.row_labels.len() != rows
        || !(grid.marked.is_empty() || grid.marked.len() == rows && grid.marked.iter().all(|r| r.len() == cols))
        || !(grid.greyed_rows.is_empty() || grid.greyed_rows.len() == rows)
    {
        return Err(Error::Invalid(format!("chart `{}`: the heat map needs a non-empty rectangular grid", axes.title)));
    }
    let marked = |r: usize, c: usize| grid.marked.get(r).is_some_and(|row| row[c]);
    let greyed = |r: usize| grid.greyed_rows.get(r).copied().unwrap_or(false);
    let note_h = if grid.note.is_some() { 24 } else { 0 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, axes.size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, note_area) = root.split_vertically(axes.size.1 - note_h);
        let mut chart =
            builder(&plot, axes, 104).build_cartesian_2d(0f64..cols as f64, rows as f64..0f64).map_err(draw_err)?;
        let (col_labels, row_labels) = (&grid.col_labels, &grid.row_labels);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&axes.x)
            .y_desc(&axes.y)
            .x_labels(cols * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cols {
                    col_labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_labels(rows.min(40) * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (y - 0.5).round();
                if (y - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < rows {
                    row_labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", LABEL_PX).into_font().color(&BLACK))
            .axis_desc_style(("sans-serif", AXIS_PX).into_font().color(&BLACK))
            .draw()
            .map_err(draw_err)?;
        let shade = |v: f64| {
            // White (0) to the palette's blue (max): readable text on both ends.
            let t = if grid.max > 0.0 { (v / grid.max).clamp(0.0, 1.0) } else { 0.0 };
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
            RGBColor(mix(255, 0), mix(255, 90), mix(255, 160))
        };
        let cell_px = (axes.size.1 as f64 - 110.0 - note_h as f64) / rows as f64;
        for (r, row) in values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (c as f64, r as f64);
                let fill = if greyed(r) { RGBColor(222, 222, 222) } else { shade(v) };
                let cell = [(x, y), (x + 1.0, y + 1.0)];
                chart.draw_series(std::iter::once(Rectangle::new(cell, fill.filled()))).map_err(draw_err)?;
                let frame = RGBColor(200, 200, 200).stroke_width(1);
                chart.draw_series(std::iter::once(Rectangle::new(cell, frame))).map_err(draw_err)?;
                let dark = !greyed(r) && grid.max > 0.0 && v / grid.max > 0.55;
                let text_color = if greyed(r) {
                    RGBColor(120, 120, 120)
                } else if dark {
                    WHITE
                } else {
                    BLACK
                };
                let font = ("sans-serif", (cell_px * 0.62).clamp(9.0, 15.0))
                    .into_font()
                    .color(&text_color)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                let text = format!("{v:.*}", grid.decimals);
                chart.draw_series(std::iter::once(Text::new(text, (x + 0.5, y + 0.5), font))).map_err(draw_err)?;
            }
        }
        // Marks over every cell, so that no neighbour's fill covers them.
        for r in 0..rows {
            for c in (0..cols).filter(|&c| marked(r, c)) {
                let (x, y) = (c as f64, r as f64);
                let inset = [(x + 0.06, y + 0.1), (x + 0.94, y + 0.9)];
                let style = PALETTE[1].stroke_width(3);
                chart.draw_series(std::iter::once(Rectangle::new(inset, style))).map_err(draw_err)?;
            }
        }
        if grid.col_group > 0 {
            for c in (grid.col_group..cols).step_by(grid.col_group) {
                let line = PathElement::new(vec![(c as f64, 0.0), (c as f64, rows as f64)], BLACK.stroke_width(3));
                chart.draw_series(std::iter::once(line)).map_err(draw_err)?;
            }
        }
        if let Some(note) = &grid.note {
            let font = ("sans-serif", 13).into_font().color(&BLACK);
            note_area.draw(&Text::new(note.clone(), (16, 4), font)).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Svg(out))
}

/// A histogram of `values` over `[lo, hi]` in `bins` equal bins (values outside are clamped to the ends).
pub fn histogram(axes: &Axes, values: &[f64], lo: f64, hi: f64, bins: usize) -> Result<Svg> {
    if values.is_empty() || bins == 0 || hi <= lo {
        return Err(Error::Invalid(format!("chart `{}`: nothing to bin", axes.title)));
    }
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &v in values {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = *counts.iter().max().unwrap() as f64 * 1.1;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, axes.size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = builder(&root, axes, 64).build_cartesian_2d(lo..hi, 0f64..top.max(1.0)).map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(&axes.x)
            .y_desc(&axes.y)
            .y_label_formatter(&count_label)
            .light_line_style(RGBColor(235, 235, 235))
            .label_style(("sans-serif", LABEL_PX).into_font().color(&BLACK))
            .axis_desc_style(("sans-serif", AXIS_PX).into_font().color(&BLACK))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x = lo + i as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.92, c as f64)], PALETTE[0].filled())
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(Svg(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_get_thousands_separators() {
        for (x, want) in
            [(0.0, "0"), (999.0, "999"), (1000.0, "1,000"), (1_024_000.0, "1,024,000"), (-51_200.0, "-51,200")]
        {
            assert_eq!(thousands(x), want);
        }
        let svg =
            line_chart(&Axes::new("t", "tokens", "loss"), &[Line::new("a", vec![(0.0, 1.0), (1_000_000.0, 2.0)])])
                .unwrap();
        assert!(svg.0.contains("1,000,000"), "token ticks carry separators");
    }

    #[test]
    fn charts_carry_their_titles_labels_and_marks() {
        let axes = Axes::new("loss over steps", "step", "loss (nats/token)");
        let svg = line_chart(
            &axes,
            &[Line::new("train", vec![(1.0, 3.0), (2.0, 2.5)]), Line::dashed("target", vec![(1.0, 2.0), (2.0, 2.0)])],
        )
        .unwrap()
        .0;
        for needle in ["loss over steps", "step", "loss (nats/token)", "train", "target", "<svg"] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        let bars =
            bar_chart(&axes, &["a".into(), "b".into(), "c".into()], &[1.0, 2.0, 0.0], Some(("target", 1.5))).unwrap().0;
        // Three bars + the background: count filled rects of the palette's first colour.
        assert_eq!(bars.matches("fill=\"#0072B2\"").count(), 3, "{bars}");
        let grid = Grid {
            values: vec![vec![0.97, 0.0], vec![0.25, 1.0]],
            max: 1.0,
            decimals: 2,
            row_labels: vec!["0".into(), "1 (removed)".into()],
            col_labels: vec!["g0".into(), "g1".into()],
            marked: vec![vec![true, false], vec![false, true]],
            greyed_rows: vec![false, true],
            col_group: 1,
            note: Some("framed: kept".into()),
        };
        let hm = heatmap(&axes, &grid).unwrap().0;
        assert!(hm.contains("\ng1\n") && hm.contains("\n0.97\n") && hm.contains("framed: kept"), "{hm}");
        // Two framed cells (the palette's second colour), one greyed row of two cells.
        assert_eq!(hm.matches("stroke=\"#D55E00\"").count(), 2, "{hm}");
        assert_eq!(hm.matches("fill=\"#DEDEDE\"").count(), 2, "{hm}");
        assert!(heatmap(&axes, &Grid { marked: vec![vec![true]], ..grid }).is_err(), "marks must match the grid");
        let h = histogram(&axes, &[0.1, 0.2, 0.9, 5.0], 0.0, 1.0, 4).unwrap().0;
        assert_eq!(h.matches("fill=\"#0072B2\"").count(), 4);
        assert!(line_chart(&axes, &[Line::new("empty", vec![])]).is_err());
        let long: Vec<(f64, f64)> = (0..1001).map(|i| (i as f64, i as f64)).collect();
        let t = thin(&long, 200);
        assert!(t.len() <= 201 && t[0] == (0.0, 0.0) && *t.last().unwrap() == (1000.0, 1000.0));
        assert!(bar_chart(&axes, &["a".into()], &[1.0, 2.0], None).is_err());
    }
}
