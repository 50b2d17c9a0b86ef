//! The report's plots, drawn as SVG by hand (no plotting library): step
//! lines on a logarithmic time axis, one per system. Latencies of the
//! systems compared span three orders of magnitude (lrpm's restart in
//! milliseconds, supervisord's in a second), which only a logarithmic axis
//! shows on one plot.

use std::fmt::Write as _;

use crate::results::Subject;

/// One line of a plot: a system and its points `(x, y)`, `x` in
/// milliseconds (positive), sorted by `x`.
pub struct Line {
    /// Whose line.
    pub subject: Subject,
    /// Its label in the legend.
    pub label: String,
    /// Its points.
    pub points: Vec<(f64, f64)>,
}

/// A plot of step lines against a logarithmic time axis.
pub struct StepPlot {
    /// Its title, drawn at the top.
    pub title: String,
    /// What the y axis counts.
    pub y_label: String,
    /// The top of the y axis.
    pub y_max: f64,
    /// Whether the y ticks are percentages of `y_max` (a CDF).
    pub percent: bool,
    /// The lines.
    pub lines: Vec<Line>,
}

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// A line's colour: the same system has the same colour on every plot.
fn colour(subject: Subject) -> &'static str {
    match subject {
        Subject::Floor => "#7f7f7f",
        Subject::Lrpm => "#d62728",
        Subject::Supervisord => "#1f77b4",
        Subject::Pm2 => "#2ca02c",
        Subject::Circus => "#9467bd",
        Subject::S6 => "#ff7f0e",
    }
}

/// A time in milliseconds as a tick label: `100 µs`, `1 ms`, `10 s`.
fn tick_label(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.0} s", ms / 1000.0)
    }
}

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl StepPlot {
    /// The plot as an SVG document; `None` when no line has a point.
    pub fn render(&self) -> Option<String> {
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|x| *x > 0.0);
        let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        if lo > hi {
            return None;
        }
        // Whole decades around the data.
        let (d0, d1) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        // A point at 0 (or below the first decade) is drawn at the axis.
        let x_of = |ms: f64| LEFT + (ms.log10().max(d0) - d0) / (d1 - d0) * plot_w;
        let y_of = |y: f64| TOP + plot_h - y / self.y_max * plot_h;

        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
            LEFT + plot_w / 2.0,
            escape(&self.title)
        );
        // The grid and the axes' ticks: each decade, and 2× and 5× lightly.
        let mut decade = d0;
        while decade <= d1 {
            let ms = 10f64.powf(decade);
            let x = x_of(ms);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ccc\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                TOP + plot_h,
                TOP + plot_h + 18.0,
                tick_label(ms)
            );
            for minor in [2.0, 5.0] {
                if decade < d1 {
                    let x = x_of(ms * minor);
                    let _ = writeln!(
                        svg,
                        "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
                         stroke=\"#eee\"/>",
                        TOP + plot_h
                    );
                }
            }
            decade += 1.0;
        }
        for i in 0..=4 {
            let y = self.y_max * f64::from(i) / 4.0;
            let label = if self.percent {
                format!("{}%", i * 25)
            } else {
                format!("{y:.0}")
            };
            let _ = write!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ccc\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
                LEFT + plot_w,
                LEFT - 6.0,
                y_of(y) + 4.0,
                yy = y_of(y),
            );
        }
        let _ = write!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" \
             stroke=\"#333\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time (logarithmic)</text>\n\
             <text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
            LEFT + plot_w / 2.0,
            HEIGHT - 10.0,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, line) in self.lines.iter().enumerate() {
            if line.points.is_empty() {
                continue;
            }
            // A step line: flat until each point, then up to it.
            let mut path = String::new();
            let mut last_y = 0.0;
            for (j, &(x, y)) in line.points.iter().enumerate() {
                let (px, py) = (x_of(x), y_of(y));
                if j == 0 {
                    let _ = write!(path, "M{px:.1},{:.1} ", y_of(0.0));
                } else {
                    let _ = write!(path, "L{px:.1},{:.1} ", y_of(last_y));
                }
                let _ = write!(path, "L{px:.1},{py:.1} ");
                last_y = y;
            }
            let c = colour(line.subject);
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = LEFT + plot_w + 14.0;
            let _ = write!(
                svg,
                "<path d=\"{path}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>\n\
                 <line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{c}\" \
                 stroke-width=\"3\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(&line.label)
            );
        }
        svg.push_str("</svg>\n");
        Some(svg)
    }
}

/// The points of a CDF of `sorted` samples: the fraction at or below each.
pub fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// The points of a mass-start curve from the sorted `main` times: how many
/// workers have run their `main` at each.
pub fn running(sorted: &[f64]) -> Vec<(f64, f64)> {
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_a_path_per_line_and_a_legend() {
        let plot = StepPlot {
            title: "t <1>".into(),
            y_label: "share".into(),
            y_max: 1.0,
            percent: true,
            lines: vec![
                Line {
                    subject: Subject::Lrpm,
                    label: "lrpm".into(),
                    points: cdf(&[1.5, 2.0, 3.0]),
                },
                Line {
                    subject: Subject::S6,
                    label: "s6".into(),
                    points: cdf(&[900.0, 1000.0]),
                },
            ],
        };
        let svg = plot.render().expect("a plot");
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains(">lrpm<") && svg.contains(">s6<"));
        assert!(svg.contains("t &lt;1&gt;"));
        // Decades from 1 ms to 1 s.
        assert!(svg.contains(">1 ms<") && svg.contains(">1 s<"));
    }

    #[test]
    fn an_empty_plot_is_none() {
        let plot = StepPlot {
            title: String::new(),
            y_label: String::new(),
            y_max: 1.0,
            percent: false,
            lines: Vec::new(),
        };
        assert!(plot.render().is_none());
    }

    #[test]
    fn cdf_and_curve_count_up() {
        assert_eq!(cdf(&[1.0, 2.0]), vec![(1.0, 0.5), (2.0, 1.0)]);
        assert_eq!(running(&[1.0, 2.0]), vec![(1.0, 1.0), (2.0, 2.0)]);
    }
}
