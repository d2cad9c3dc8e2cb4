//! A small SVG line-plot writer for benchmark results: latency against payload (log x),
//! throughput against workers, latency CDFs. No dependency: the output is a few hundred
//! bytes of hand-written SVG per series that any browser or markdown viewer shows.
//!
//! ```text
//!  title
//!  ┌──────────────────────────┐  legend
//!  │ y ticks   polyline+dots  │
//!  └──────────────────────────┘
//!        x ticks, x label
//! ```

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
/// Plot area margins: left (y tick labels), right (legend), top (title), bottom (x labels).
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// One colour per series, repeated beyond eight (colour-blind safe, Okabe–Ito).
const COLOURS: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000",
];

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; values ≤ 0 cannot be placed and are left out.
    Log,
}

/// How tick labels print a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    Plain,
    /// Bytes: 1K, 4M (powers of 1024).
    Bytes,
    /// Nanoseconds: 350ns, 1.2µs, 3ms.
    Nanos,
    /// A fraction printed as a percentage.
    Percent,
}

/// An axis: its label, scale and tick units.
#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    pub units: Units,
}

impl Axis {
    pub fn new(label: &str, scale: Scale, units: Units) -> Self {
        Self {
            label: label.into(),
            scale,
            units,
        }
    }
}

/// One line of the plot: points joined in the order of x.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
        }
    }
}

/// A line plot.
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

impl Plot {
    pub fn new(title: &str, x: Axis, y: Axis) -> Self {
        Self {
            title: title.into(),
            x,
            y,
            series: Vec::new(),
        }
    }

    /// Adds a series (builder style).
    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// The plot as an SVG document. Points that cannot be placed (not finite, or ≤ 0 on a
    /// log axis) are left out; a plot without any point says so in its area.
    pub fn to_svg(&self) -> String {
        let placeable = |p: &(f64, f64)| {
            p.0.is_finite()
                && p.1.is_finite()
                && (self.x.scale == Scale::Linear || p.0 > 0.0)
                && (self.y.scale == Scale::Linear || p.1 > 0.0)
        };
        let series: Vec<(&str, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|s| {
                let mut pts: Vec<(f64, f64)> = s.points.iter().copied().filter(placeable).collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (s.label.as_str(), pts)
            })
            .collect();
        let all = || series.iter().flat_map(|(_, p)| p.iter());
        let xr = Range::of(all().map(|p| p.0), self.x.scale);
        let yr = Range::of(all().map(|p| p.1), self.y.scale);

        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |x: f64| LEFT + xr.fraction(x) * pw;
        let py = |y: f64| TOP + ph - yr.fraction(y) * ph;

        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        for t in xr.ticks(self.x.units) {
            let x = px(t);
            let _ = writeln!(
                s,
                r##"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                TOP + ph
            );
            let _ = writeln!(
                s,
                r#"<text class="xtick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + ph + 16.0,
                escape(&format_value(t, self.x.units))
            );
        }
        for t in yr.ticks(self.y.units) {
            let y = py(t);
            let _ = writeln!(
                s,
                r##"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r#"<text class="ytick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                escape(&format_value(t, self.y.units))
            );
        }
        // Axes.
        let _ = writeln!(
            s,
            r#"<rect class="axes" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text class="xlabel" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            HEIGHT - 16.0,
            escape(&axis_title(&self.x))
        );
        let _ = writeln!(
            s,
            r#"<text class="ylabel" x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(&axis_title(&self.y))
        );
        if all().next().is_none() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
                LEFT + pw / 2.0,
                TOP + ph / 2.0
            );
        }
        // Series: a polyline, a dot per point, a legend entry.
        for (i, (label, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let coords: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
                coords.join(" "),
                escape(label)
            );
            for &(x, y) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                    px(x),
                    py(y)
                );
            }
            let ly = TOP + 10.0 + 18.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/>"#,
                lx + 18.0
            );
            let _ = writeln!(
                s,
                r#"<text class="legend" x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                ly + 4.0,
                escape(label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn axis_title(axis: &Axis) -> String {
    match axis.scale {
        Scale::Linear => axis.label.clone(),
        Scale::Log => format!("{} (log scale)", axis.label),
    }
}

/// The span of an axis, in scale units (log10 of the values on a log axis).
#[derive(Debug, Clone, Copy)]
struct Range {
    lo: f64,
    hi: f64,
    scale: Scale,
}

impl Range {
    fn of(values: impl Iterator<Item = f64>, scale: Scale) -> Self {
        let t = |v: f64| match scale {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        };
        let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(t(v)), hi.max(t(v)))
        });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        match scale {
            // Whole decades, so that the ticks sit at the ends.
            Scale::Log => {
                lo = lo.floor();
                hi = hi.ceil();
                if hi <= lo {
                    hi = lo + 1.0;
                }
            }
            // From zero when all values are positive (ratios and rates read better so).
            Scale::Linear => {
                if lo > 0.0 {
                    lo = 0.0;
                }
                if hi <= lo {
                    hi = lo + 1.0;
                }
                let step = nice_step(hi - lo);
                lo = (lo / step).floor() * step;
                hi = (hi / step).ceil() * step;
            }
        }
        Self { lo, hi, scale }
    }

    /// Where `v` lies between the ends, 0 to 1.
    fn fraction(&self, v: f64) -> f64 {
        let t = match self.scale {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        };
        (t - self.lo) / (self.hi - self.lo)
    }

    /// Tick values: each decade on a log axis (every other one beyond eight; powers of two
    /// for bytes), round steps on a linear one.
    fn ticks(&self, units: Units) -> Vec<f64> {
        match self.scale {
            // Byte counts read best at powers of two (1, 16, 256, 4K, …).
            Scale::Log if units == Units::Bytes => {
                let lo = (self.lo * std::f64::consts::LOG2_10).ceil() as i32;
                let hi = (self.hi * std::f64::consts::LOG2_10).floor() as i32;
                let step = ((hi - lo) / 8 + 1).max(1);
                // Even steps keep the ticks on powers of four (1, 16, 256, …).
                let step = (step + step % 2) as usize;
                (lo..=hi).step_by(step).map(|e| 2f64.powi(e)).collect()
            }
            Scale::Log => {
                let decades = (self.hi - self.lo).round() as i32;
                let every = if decades > 8 { 2 } else { 1 };
                (0..=decades)
                    .step_by(every)
                    .map(|d| 10f64.powi(self.lo as i32 + d))
                    .collect()
            }
            Scale::Linear => {
                let step = nice_step(self.hi - self.lo);
                let n = ((self.hi - self.lo) / step).round() as i32;
                (0..=n).map(|i| self.lo + step * f64::from(i)).collect()
            }
        }
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into 4 to 10 pieces.
fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label.
pub fn format_value(v: f64, units: Units) -> String {
    match units {
        Units::Plain => {
            if v.abs() >= 1e6 {
                format!("{}M", trim(v / 1e6))
            } else if v.abs() >= 1e3 {
                format!("{}k", trim(v / 1e3))
            } else {
                trim(v)
            }
        }
        Units::Bytes => {
            let (k, m) = (1024.0, 1024.0 * 1024.0);
            if v >= m {
                format!("{}M", trim(v / m))
            } else if v >= k {
                format!("{}K", trim(v / k))
            } else {
                trim(v)
            }
        }
        Units::Nanos => {
            if v >= 1e9 {
                format!("{}s", trim(v / 1e9))
            } else if v >= 1e6 {
                format!("{}ms", trim(v / 1e6))
            } else if v >= 1e3 {
                format!("{}µs", trim(v / 1e3))
            } else {
                format!("{}ns", trim(v))
            }
        }
        Units::Percent => format!("{}%", trim(v * 100.0)),
    }
}

/// At most three significant decimals, no trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The points of a latency CDF from a histogram: (latency in ns, fraction at or below it),
/// one point per distinct recorded value bucket, thinned to about `max_points`.
pub fn cdf_points(hist: &hdrhistogram::Histogram<u64>, max_points: usize) -> Vec<(f64, f64)> {
    let total = hist.len();
    if total == 0 {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut seen = 0u64;
    for v in hist.iter_recorded() {
        seen += v.count_since_last_iteration();
        points.push((
            hist.highest_equivalent(v.value_iterated_to()) as f64,
            seen as f64 / total as f64,
        ));
    }
    if points.len() > max_points.max(2) {
        // Keep the ends and evenly spaced points between them.
        let step = points.len() as f64 / max_points as f64;
        let last = points[points.len() - 1];
        points = (0..max_points)
            .map(|i| points[(i as f64 * step) as usize])
            .collect();
        if points.last() != Some(&last) {
            points.push(last);
        }
    }
    points
}

/// Writes `plot` to `path` as SVG.
///
/// # Errors
/// When the file cannot be written.
pub fn write(plot: &Plot, path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, plot.to_svg())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].to_string())
    }

    fn sweep() -> Plot {
        Plot::new(
            "latency <vs> payload & \"more\"",
            Axis::new("payload", Scale::Log, Units::Bytes),
            Axis::new("p50", Scale::Log, Units::Nanos),
        )
        .with(Series::new(
            "rafi <echo>",
            vec![(4096.0, 900.0), (1.0, 600.0), (64.0, 700.0), (0.0, 500.0)],
        ))
        .with(Series::new("mpi", vec![(1.0, 350.0), (4096.0, 800.0)]))
    }

    #[test]
    fn svg_structure() {
        let svg = sweep().to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "one polyline per series"
        );
        assert_eq!(svg.matches("</polyline>").count(), 2);
        assert!(svg.contains("class=\"axes\""));
        assert!(svg.contains("class=\"xtick\""));
        assert!(svg.contains("class=\"ytick\""));
        assert!(svg.contains("payload (log scale)"));
        // Every element opened is closed: tags are either self-closing or paired.
        for name in ["text", "title", "polyline"] {
            assert_eq!(
                svg.matches(&format!("<{name}")).count(),
                svg.matches(&format!("</{name}>")).count(),
                "{name}"
            );
        }
    }

    #[test]
    fn labels_are_escaped() {
        let svg = sweep().to_svg();
        assert!(svg.contains("latency &lt;vs&gt; payload &amp; &quot;more&quot;"));
        assert!(svg.contains("rafi &lt;echo&gt;"));
        assert!(!svg.contains("<vs>"));
        assert!(!svg.contains("<echo>"));
        assert_eq!(escape("a'b"), "a&apos;b");
    }

    #[test]
    fn points_placed_monotonically_inside_the_area() {
        let svg = sweep().to_svg();
        let line = svg
            .lines()
            .find(|l| l.starts_with("<polyline"))
            .unwrap()
            .to_string();
        let pts: Vec<(f64, f64)> = attr(&line, "points")
            .unwrap()
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        // The 0 B point cannot sit on a log axis: three points, sorted by x.
        assert_eq!(pts.len(), 3);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "{pts:?}");
        // Higher latency is higher up (smaller y).
        assert!(pts.windows(2).all(|w| w[0].1 > w[1].1), "{pts:?}");
        for (x, y) in pts {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
        }
    }

    #[test]
    fn linear_axes_and_empty_plots() {
        let p = Plot::new(
            "throughput",
            Axis::new("workers", Scale::Linear, Units::Plain),
            Axis::new("ops/s", Scale::Linear, Units::Plain),
        )
        .with(Series::new("rafi", vec![(1.0, 2.5e6), (2.0, 4.9e6)]));
        let svg = p.to_svg();
        assert!(svg.contains(">0<"), "linear axes start at zero");
        assert!(svg.contains(">5M<") || svg.contains(">4M<"));
        let empty = Plot::new(
            "none",
            Axis::new("x", Scale::Log, Units::Plain),
            Axis::new("y", Scale::Linear, Units::Plain),
        )
        .with(Series::new("s", vec![(f64::NAN, 1.0), (-1.0, 2.0)]));
        assert!(empty.to_svg().contains("no data"));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_value(4.0 * 1024.0 * 1024.0, Units::Bytes), "4M");
        assert_eq!(format_value(1024.0, Units::Bytes), "1K");
        let bytes = Range::of([1.0, 4e6].into_iter(), Scale::Log);
        let ticks = bytes.ticks(Units::Bytes);
        assert!(ticks.len() <= 10 && ticks[0] == 1.0, "{ticks:?}");
        assert!(ticks.iter().all(|t| t.log2().fract() == 0.0), "{ticks:?}");
        assert_eq!(format_value(350.0, Units::Nanos), "350ns");
        assert_eq!(format_value(1500.0, Units::Nanos), "1.5µs");
        assert_eq!(format_value(0.99, Units::Percent), "99%");
        assert_eq!(format_value(2_000_000.0, Units::Plain), "2M");
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_one() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for v in 1..=5000u64 {
            h.record(v * 10).unwrap();
        }
        let pts = cdf_points(&h, 100);
        assert!(pts.len() <= 101 && pts.len() >= 50);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!((pts.last().unwrap().1 - 1.0).abs() < 1e-12);
        assert!(cdf_points(&hdrhistogram::Histogram::<u64>::new(3).unwrap(), 10).is_empty());
    }
}
