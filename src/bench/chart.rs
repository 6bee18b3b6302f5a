//! `--svg FILE`: a run's latency as a picture, written by hand as plain SVG.
//!
//! Two charts, each the one its benchmarkers draw:
//!
//! - a sweep's latency curve: p50, p99 and p99.9 (one line each) against the throughput each
//!   step achieved. Where the lines turn upward is the load the server can take; an open loop
//!   shows it honestly, as latency that grows while throughput stops growing.
//! - one run's percentile spectrum, as HdrHistogram plots it: latency against the percentile on
//!   a "nines" axis (0 %, 90 %, 99 %, 99.9 %, ... evenly spaced, the x value being
//!   `1/(1-percentile)` on a log scale), so the tail gets as much room as the median.
//!
//! Latency runs up a log axis in both: a loopback round trip of 20 µs and a stall of 200 ms fit
//! on one chart. The SVG is a few dozen elements: axes, grid, a `<g class="series">` per line
//! (its `data-name` the percentile) and a legend; no script, no fonts beyond the viewer's
//! sans-serif, no dependency.

use std::fmt::Write;
use std::time::Duration;

use super::table::human_duration;
use super::{Load, Report};

/// Size of the picture, in SVG user units (pixels at 100 %).
const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
/// Space around the plot for tick labels, axis titles, the title and the legend.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// One colour per series, in order (p50, p99, p99.9), distinguishable for the colour-blind.
const COLOURS: [&str; 3] = ["#0072b2", "#e69f00", "#d55e00"];

/// A sweep's chart: p50, p99 and p99.9 latency against achieved throughput, a point per step.
pub fn curve(title: &str, steps: &[(Load, Report)]) -> String {
    type Figure = fn(&Report) -> Duration;
    let percentiles: [(&str, Figure); 3] = [
        ("p50", |r| r.latency.p50),
        ("p99", |r| r.latency.p99),
        ("p99.9", |r| r.latency.p999),
    ];
    let measured: Vec<&Report> = steps
        .iter()
        .map(|(_, report)| report)
        .filter(|report| report.latency.count > 0)
        .collect();
    let x_max = measured
        .iter()
        .map(|r| r.achieved_rate())
        .fold(0.0, f64::max);
    let x = Axis::linear(x_max * 1.05, "throughput, operations per second");
    let y = Axis::latency(
        measured
            .iter()
            .flat_map(|r| percentiles.iter().map(|(_, at)| at(r)).collect::<Vec<_>>()),
    );
    let series = percentiles
        .iter()
        .map(|(name, at)| Series {
            name,
            points: measured
                .iter()
                .map(|r| (r.achieved_rate(), nanos(at(r))))
                .collect(),
            dots: true,
        })
        .collect::<Vec<_>>();
    draw(title, &x, &y, &series)
}

/// One run's chart: latency against percentile, from the fastest operation to the slowest.
pub fn spectrum(title: &str, report: &Report) -> String {
    let steps = report.distribution.spectrum();
    let count = report.distribution.count().max(1) as f64;
    // 1/(1-q) is infinite at 100 %: the slowest operation sits at the last "nine" the run's
    // operation count can resolve.
    let nines = |q: f64| {
        if q < 1.0 {
            (1.0 / (1.0 - q)).min(count)
        } else {
            count
        }
    };
    let x = Axis::nines(count);
    let y = Axis::latency(steps.iter().map(|s| s.value));
    let series = [Series {
        name: "latency",
        points: steps
            .iter()
            .map(|s| (nines(s.quantile), nanos(s.value)))
            .collect(),
        dots: false,
    }];
    draw(title, &x, &y, &series)
}

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    /// (x, y) in the axes' own units.
    points: Vec<(f64, f64)>,
    /// Mark each point: a sweep's steps are measurements, a spectrum is a curve.
    dots: bool,
}

/// How values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Base 10: each decade the same length.
    Log,
}

/// One axis: its range, its scale, and where its labelled ticks go.
#[derive(Debug)]
struct Axis {
    scale: Scale,
    min: f64,
    max: f64,
    title: String,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// From 0 to `max` (at least 1), with 4 to 10 ticks on round numbers.
    fn linear(max: f64, title: &str) -> Axis {
        let max = if max.is_finite() && max > 1.0 {
            max
        } else {
            1.0
        };
        // The round step (1, 2 or 5 times a power of ten) that gives at most 10 ticks.
        let rough = max / 5.0;
        let power = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * power)
            .find(|step| max / step <= 10.0)
            .unwrap_or(10.0 * power);
        let ticks = (0..)
            .map(|i| i as f64 * step)
            .take_while(|v| *v <= max)
            .map(|v| (v, compact(v)))
            .collect();
        Axis {
            scale: Scale::Linear,
            min: 0.0,
            max,
            title: title.to_string(),
            ticks,
        }
    }

    /// Latencies in nanoseconds on whole decades around `values`, ticked at each decade.
    fn latency(values: impl Iterator<Item = Duration>) -> Axis {
        let (mut low, mut high) = (f64::INFINITY, 0.0f64);
        for value in values {
            let ns = nanos(value);
            low = low.min(ns);
            high = high.max(ns);
        }
        if !(low.is_finite() && high >= low) {
            (low, high) = (1e3, 1e6); // nothing measured: 1 µs to 1 ms, an empty frame
        }
        let first = low.log10().floor() as i32;
        let last = (high.log10().ceil() as i32).max(first + 1);
        let ticks = (first..=last)
            .map(|decade| {
                let ns = 10f64.powi(decade);
                (ns, human_duration(Duration::from_nanos(ns as u64)))
            })
            .collect();
        Axis {
            scale: Scale::Log,
            min: 10f64.powi(first),
            max: 10f64.powi(last),
            title: "latency".to_string(),
            ticks,
        }
    }

    /// `1/(1-percentile)` from 1 (0 %) to the decade past `count`, ticked at each "nine".
    fn nines(count: f64) -> Axis {
        let last = (count.log10().ceil() as i32).max(1);
        let ticks = (0..=last)
            .map(|nines| {
                let label = match nines {
                    0 => "0%".to_string(),
                    1 => "90%".to_string(),
                    n => format!("99.{}%", "9".repeat(n as usize - 2)).replace(".%", "%"),
                };
                (10f64.powi(nines), label)
            })
            .collect();
        Axis {
            scale: Scale::Log,
            min: 1.0,
            max: 10f64.powi(last),
            title: "percentile".to_string(),
            ticks,
        }
    }

    /// Where `value` falls, from 0 (`min`) to 1 (`max`); outside when out of range.
    fn fraction(&self, value: f64) -> f64 {
        match self.scale {
            Scale::Linear => (value - self.min) / (self.max - self.min),
            Scale::Log => {
                let value = value.max(self.min * 1e-3); // log of zero: far below the axis
                (value.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
            }
        }
    }
}

/// The whole picture.
fn draw(title: &str, x: &Axis, y: &Axis, series: &[Series<'_>]) -> String {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |v: f64| LEFT + x.fraction(v).clamp(0.0, 1.0) * plot_w;
    let py = |v: f64| TOP + plot_h - y.fraction(v).clamp(0.0, 1.0) * plot_h;
    let mut svg = String::new();
    // Writing to a String cannot fail; the results of `write!` below are ignored for that reason.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(title));
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    svg.push_str("<g class=\"grid\" stroke=\"#ddd\">\n");
    for (value, _) in &x.ticks {
        let at = px(*value);
        let _ = writeln!(
            svg,
            r#"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{:.1}"/>"#,
            TOP + plot_h
        );
    }
    for (value, _) in &y.ticks {
        let at = py(*value);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}"/>"#,
            LEFT + plot_w
        );
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    svg.push_str("<g class=\"x-axis\" text-anchor=\"middle\">\n");
    for (value, label) in &x.ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            px(*value),
            TOP + plot_h + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0,
        escape(&x.title)
    );
    svg.push_str("</g>\n<g class=\"y-axis\" text-anchor=\"end\">\n");
    for (value, label) in &y.ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT - 6.0,
            py(*value) + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(&y.title)
    );
    svg.push_str("</g>\n");
    for (i, line) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .map(|(vx, vy)| format!("{:.1},{:.1}", px(*vx), py(*vy)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<g class="series" data-name="{}" stroke="{colour}" fill="{colour}">"#,
            escape(line.name)
        );
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        if line.dots {
            for (vx, vy) in &line.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3"/>"#,
                    px(*vx),
                    py(*vy)
                );
            }
        }
        // The legend entry, right of the plot.
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke-width="2"/><text x="{}" y="{}" stroke="none" fill="black">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(line.name)
        );
        svg.push_str("</g>\n");
    }
    svg.push_str("</svg>\n");
    svg
}

/// Nanoseconds of `d` as a float, the latency axis's unit.
fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// A tick label for a rate: `0`, `500`, `20k`, `1.5M`.
fn compact(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{}k", value / 1e3)
    } else {
        format!("{value}")
    }
}

/// Text safe inside an element or a quoted attribute.
fn escape(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_numbers_from_zero() {
        let axis = Axis::linear(105_000.0, "t");
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "20k", "40k", "60k", "80k", "100k"]);
        assert_eq!(axis.fraction(0.0), 0.0);
        assert_eq!(axis.fraction(105_000.0), 1.0);
    }

    #[test]
    fn the_latency_axis_spans_whole_decades_around_the_values() {
        let axis =
            Axis::latency([Duration::from_micros(25), Duration::from_millis(180)].into_iter());
        assert_eq!((axis.min, axis.max), (1e4, 1e9));
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "10.0 µs", "100 µs", "1.00 ms", "10.0 ms", "100 ms", "1.00 s"
            ]
        );
        assert!(
            (axis.fraction(1e6) - 0.4).abs() < 1e-9,
            "each decade a fifth"
        );
    }

    #[test]
    fn the_percentile_axis_is_ticked_at_each_nine() {
        let axis = Axis::nines(25_000.0);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"a<b & "c">'"#),
            "a&lt;b &amp; &quot;c&quot;&gt;&apos;"
        );
    }
}
