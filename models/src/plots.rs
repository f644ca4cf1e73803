//! PNG plots a person would rather look at than read: training curves and confusion matrices.

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

/// Plotting failed (file system or drawing).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}. Check that the folder exists and is writable")]
pub struct PlotError {
    path: String,
    message: String,
}

fn err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.display().to_string(),
        message,
    }
}

/// Draws into an RGB buffer of `w`×`h` and writes it as PNG.
fn render<F>(path: &Path, w: u32, h: u32, draw: F) -> Result<(), PlotError>
where
    F: FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), String>,
{
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            register_font("sans-serif", style, FONT).ok();
        }
    });
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .map_err(err(path))?;
        draw(root.clone()).map_err(err(path))?;
        root.present()
            .map_err(|e| e.to_string())
            .map_err(err(path))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer sized to the image");
    img.save(path).map_err(|e| e.to_string()).map_err(err(path))
}

/// One named series of (x, y) points.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// Line chart of several series against a shared x axis.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (x0, x1) = if x0 < x1 {
        (x0, x1)
    } else {
        (x0 - 1.0, x0 + 1.0)
    };
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    render(path, 900, 520, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // A marker on every point, so that a one-epoch run (a single point, no line) still
            // shows its value.
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// Heat map of a confusion matrix, rows = true class, columns = predicted, row-normalised.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    labels: &[String],
    counts: &[Vec<u32>],
) -> Result<(), PlotError> {
    let n = labels.len().max(1);
    let cell = (760 / n as u32).clamp(2, 40);
    let side = cell * n as u32;
    let show_names = n <= 60;
    let margin = if show_names { 120 } else { 40 };
    render(path, side + margin + 20, side + margin + 50, |root| {
        // Segmented axes: one segment per class, its name at the segment's centre. The first
        // true class is drawn as the top row, so row names are looked up from the top.
        let axis = || (0..n - 1).into_segmented();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(if show_names { margin - 10 } else { 20 })
            .y_label_area_size(if show_names { margin - 10 } else { 20 })
            .build_cartesian_2d(axis(), axis())
            .map_err(|e| e.to_string())?;
        let row = |value: &SegmentValue<usize>| {
            if show_names {
                row_name(labels, value)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&row)
            .y_label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 12))
            .x_desc("predicted")
            .y_desc("true")
            .draw()
            .map_err(|e| e.to_string())?;
        let edge = |i: usize| {
            if i < n {
                SegmentValue::Exact(i)
            } else {
                SegmentValue::Last
            }
        };
        let cells = counts.iter().enumerate().flat_map(|(t, row)| {
            let total: u32 = row.iter().sum::<u32>().max(1);
            row.iter().enumerate().map(move |(p, &c)| {
                let v = c as f64 / total as f64;
                let shade = (255.0 * (1.0 - v)) as u8;
                let y = n - 1 - t;
                Rectangle::new(
                    [(edge(p), edge(y)), (edge(p + 1), edge(y + 1))],
                    RGBColor(shade, shade, 255).filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(|e| e.to_string())?;
        // Column names written downwards from the axis by hand: plotters centres rotated tick
        // labels on the tick, which pushes long names out of the label area.
        if show_names {
            let font = ("sans-serif", 11)
                .into_font()
                .transform(FontTransform::Rotate90);
            let (_, axis_y) = chart.backend_coord(&(edge(0), edge(0)));
            for (i, label) in labels.iter().enumerate() {
                let (x, _) = chart.backend_coord(&(SegmentValue::CenterOf(i), edge(0)));
                root.draw(&Text::new(
                    label.as_str(),
                    (x + 5, axis_y + 6),
                    font.clone(),
                ))
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// The class named at a position of the row axis: segment centres only; the axis counts from
/// the bottom and the first class is the top row.
fn row_name(labels: &[String], value: &SegmentValue<usize>) -> String {
    let SegmentValue::CenterOf(i) = *value else {
        return String::new();
    };
    labels
        .len()
        .checked_sub(1 + i)
        .and_then(|c| labels.get(c))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let curve = dir.path().join("c.png");
        let series = [Series {
            name: "loss",
            points: vec![(1., 2.), (2., 1.5), (3., 1.)],
        }];
        line_chart(&curve, "loss", "epoch", &series).unwrap();
        let cm = dir.path().join("m.png");
        let labels = vec!["a".to_string(), "b".to_string()];
        confusion_matrix(&cm, "confusion", &labels, &[vec![3, 1], vec![0, 4]]).unwrap();
        let single = dir.path().join("one.png");
        confusion_matrix(&single, "one class", &labels[..1], &[vec![2]]).unwrap();
        for p in [curve, cm] {
            let img = image::open(&p).unwrap();
            assert!(img.width() > 100);
        }
    }

    /// Centre of the fully saturated (count = whole row) cells of a drawn 3×3 matrix with a
    /// single non-empty row `t`, all of it predicted as `p`.
    fn dark_centre(t: usize, p: usize) -> (f64, f64) {
        let mut counts = vec![vec![0u32; 3]; 3];
        counts[t][p] = 5;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        confusion_matrix(&path, "confusion", &labels, &counts).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let dark: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 == [0, 0, 255])
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(!dark.is_empty());
        let mean = |f: fn(&(u32, u32)) -> u32| {
            dark.iter().map(|p| f(p) as f64).sum::<f64>() / dark.len() as f64
        };
        (mean(|p| p.0), mean(|p| p.1))
    }

    #[test]
    fn row_names_sit_at_segment_centres_the_first_class_on_top() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let at = |v| row_name(&labels, &v);
        assert_eq!(at(SegmentValue::CenterOf(0)), "c");
        assert_eq!(at(SegmentValue::CenterOf(2)), "a");
        assert_eq!(at(SegmentValue::CenterOf(3)), "");
        assert_eq!(at(SegmentValue::Exact(1)), "");
        assert_eq!(at(SegmentValue::Last), "");
    }

    #[test]
    fn the_first_true_class_is_the_top_row_and_the_first_prediction_the_left_column() {
        let top_left = dark_centre(0, 0);
        let top_right = dark_centre(0, 2);
        let bottom_left = dark_centre(2, 0);
        assert!(top_left.0 < top_right.0 && (top_left.1 - top_right.1).abs() < 1.0);
        assert!(top_left.1 < bottom_left.1 && (top_left.0 - bottom_left.0).abs() < 1.0);
    }

    #[test]
    fn a_one_point_curve_still_shows_its_point() {
        let dir = tempfile::tempdir().unwrap();
        let curve = dir.path().join("one.png");
        let series = [Series {
            name: "val top-1",
            points: vec![(1., 0.5)],
        }];
        line_chart(&curve, "accuracy", "epoch", &series).unwrap();
        let (r, g, b) = Palette99::pick(0).rgb();
        let img = image::open(&curve).unwrap().to_rgb8();
        // The legend's sample line is 18 px long; the marker adds a filled disc of radius 3.
        let coloured = img.pixels().filter(|p| p.0 == [r, g, b]).count();
        assert!(
            coloured > 18 * 2 + 20,
            "only {coloured} pixels of the series colour"
        );
    }
}
