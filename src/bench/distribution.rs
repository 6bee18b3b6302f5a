//! A run's latency distribution: the merged HDR histogram, its percentile spectrum, and the
//! `.hgrm` text that HdrHistogram's own tools read (`--hgrm FILE`).
//!
//! An HDR histogram keeps every latency within 0.1 % (3 significant digits) from a nanosecond to
//! an hour in a fixed few KiB, however many operations a run makes, and two of them add up
//! exactly: so each generator thread records into its own, and the run's is their sum.
//!
//! The `.hgrm` format is the one HdrHistogram's `outputPercentileDistribution` prints and wrk2's
//! "Detailed Percentile spectrum" shows: a header line, one row per step of the spectrum (value in
//! milliseconds, percentile as a fraction, how many operations took at most that long, and
//! `1/(1-percentile)`, the x axis of HdrHistogram's plots), then `#[Mean ...]`, `#[Max ...]` and
//! `#[Buckets ...]` footer lines. The steps halve the distance to 100 % five ticks at a time, so
//! the tail gets as many rows as the body.

use std::fmt::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks, in nanoseconds: one hour, the longest run allowed.
/// Longer values are recorded as this bound (they cannot happen within a bounded run).
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

/// Significant decimal digits a histogram keeps: 3 means every value within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Spectrum steps per halving of the distance to 100 %: HdrHistogram's usual 5.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Nanoseconds per millisecond: `.hgrm` values are in milliseconds, the unit HdrHistogram's
/// plotter labels its axis with.
const NS_PER_MS: f64 = 1e6;

/// An empty histogram of nanoseconds, from 1 ns to an hour at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy new_with_bounds' rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// The latencies of a run's completed operations, every one of them, to 3 significant digits.
#[derive(Clone, PartialEq)]
pub struct Distribution {
    histogram: Histogram<u64>,
}

/// One step of the percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The fraction of operations at or below `value`, 0 to 1.
    pub quantile: f64,
    /// The latency at that quantile (the highest value of its histogram bucket).
    pub value: Duration,
    /// Operations that took at most `value`.
    pub count: u64,
}

impl Distribution {
    /// The distribution a histogram of nanoseconds holds.
    pub(crate) fn new(histogram: Histogram<u64>) -> Distribution {
        Distribution { histogram }
    }

    /// Operations measured.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0 to 1); zero when nothing was measured.
    pub fn quantile(&self, q: f64) -> Duration {
        self.steps_at([q])
            .next()
            .map_or(Duration::ZERO, |step| step.value)
    }

    /// The slowest operation.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.histogram.max())
    }

    /// The mean latency; zero when nothing was measured.
    pub fn mean(&self) -> Duration {
        nanos(self.histogram.mean())
    }

    /// The standard deviation of the latencies; zero when nothing was measured.
    pub fn stdev(&self) -> Duration {
        nanos(self.histogram.stdev())
    }

    /// The percentile spectrum, from the fastest operation to the slowest, in the steps of
    /// `.hgrm` files; empty when nothing was measured.
    pub fn spectrum(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for step in self.steps_at(ticks()) {
            steps.push(step);
            if step.count == self.count() {
                break;
            }
        }
        // Ticks only approach 100 %: the slowest operation's row says 100 %, as HdrHistogram's do.
        if let Some(&last) = steps.last() {
            if last.quantile < 1.0 {
                steps.push(Step {
                    quantile: 1.0,
                    ..last
                });
            }
        }
        steps
    }

    /// The step at each of `quantiles`, which ascend: the smallest value that at least that
    /// fraction of the operations took no longer than. One walk up the buckets serves them all.
    ///
    /// A bucket holds the quantile once `count / total >= q` in floating point, which names the
    /// operation a quantile written in decimal means (the 900th of 1 000 at 0.9, since 900 / 1 000
    /// rounds to the same double as 0.9 does) for any run of fewer than 10^15 operations.
    fn steps_at(&self, quantiles: impl IntoIterator<Item = f64>) -> impl Iterator<Item = Step> {
        let total = self.count() as f64;
        let mut buckets = self
            .histogram
            .iter_recorded()
            .scan(0, |count, bucket| {
                *count += bucket.count_at_value();
                Some((bucket.value_iterated_to(), *count))
            })
            .peekable();
        quantiles.into_iter().map_while(move |quantile| {
            while buckets
                .next_if(|&(_, count)| (count as f64) / total < quantile)
                .is_some()
            {}
            let &(value, count) = buckets.peek()?;
            Some(Step {
                quantile,
                value: Duration::from_nanos(value),
                count,
            })
        })
    }

    /// The spectrum in HdrHistogram's percentile-distribution text format (see the module doc).
    pub fn to_hgrm(&self) -> String {
        let ms = |d: Duration| d.as_nanos() as f64 / NS_PER_MS;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        for step in self.spectrum() {
            let _ = write!(
                out,
                "{:12.6} {:2.12} {:10}",
                ms(step.value),
                step.quantile,
                step.count
            );
            // At 100 % the last column would be infinite: HdrHistogram leaves it out.
            if step.quantile < 1.0 {
                let _ = write!(out, " {:14.2}", 1.0 / (1.0 - step.quantile));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.6}, StdDeviation   = {:12.6}]",
            ms(self.mean()),
            ms(self.stdev())
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.6}, Total count    = {:12}]",
            ms(self.max()),
            self.count()
        );
        // Sub-buckets: the power of two that holds 2 × 10^digits, as HdrHistogram sizes them.
        let sub_buckets = (2 * 10u64.pow(u32::from(self.histogram.sigfig()))).next_power_of_two();
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            self.histogram.buckets(),
            sub_buckets
        );
        out
    }
}

impl Default for Distribution {
    /// Nothing measured.
    fn default() -> Distribution {
        Distribution::new(histogram())
    }
}

/// The histogram holds thousands of counters; its summary is what a reader of `{:?}` wants.
impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("count", &self.count())
            .field("max", &self.max())
            .finish()
    }
}

/// Nanoseconds as a `Duration`; zero for nothing measured (the mean of nothing is NaN).
fn nanos(ns: f64) -> Duration {
    if ns.is_finite() && ns > 0.0 {
        Duration::from_nanos(ns.round() as u64)
    } else {
        Duration::ZERO
    }
}

/// The quantiles of the spectrum's steps, where HdrHistogram puts them: `TICKS_PER_HALF_DISTANCE`
/// equal steps to 50 %, as many from there to 75 %, to 87.5 %, and so on towards 100 %. Each is
/// one division of whole numbers, so 75 % is 0.75 exactly: hdrhistogram's own iterator adds its
/// steps up and reaches 0.7500000000000002, where the step holds one operation too many.
fn ticks() -> impl Iterator<Item = f64> {
    let per_half = u128::from(TICKS_PER_HALF_DISTANCE);
    // Tick `k` of `of`: `of` doubles at each half distance. It stays far from overflowing, as
    // past 53 halvings `k / of` rounds to 1.0, which every run's slowest bucket holds.
    let (mut k, mut of) = (0, 2 * per_half);
    std::iter::from_fn(move || {
        let quantile = k as f64 / of as f64;
        k += 1;
        if of - k == per_half {
            (k, of) = (2 * k, 2 * of);
        }
        Some(quantile)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 to 1000 µs, once each.
    fn uniform() -> Distribution {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("within bounds");
        }
        Distribution::new(h)
    }

    #[test]
    fn mean_and_stdev_of_one_to_a_thousand_microseconds() {
        let d = uniform();
        let near = |got: Duration, want: f64| {
            let got = got.as_nanos() as f64;
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        };
        near(d.mean(), 500_500.0);
        // The population standard deviation of 1..=1000 is sqrt((1000² - 1) / 12) ≈ 288.675.
        near(d.stdev(), 288_675.0);
        assert_eq!(d.count(), 1000);
    }

    #[test]
    fn the_spectrum_runs_from_the_fastest_to_the_slowest_with_running_counts() {
        let steps = uniform().spectrum();
        let first = steps.first().expect("a first step");
        let last = steps.last().expect("a last step");
        assert_eq!((first.quantile, first.count), (0.0, 1));
        assert_eq!((last.quantile, last.count), (1.0, 1000));
        assert!(steps.windows(2).all(|w| w[0].quantile <= w[1].quantile
            && w[0].value <= w[1].value
            && w[0].count <= w[1].count));
        // The tail gets rows: several between 99 % and 100 %.
        assert!(steps.iter().filter(|s| s.quantile > 0.99).count() >= 5);
    }

    /// A step holds the operation its quantile names, as the report's percentiles do: at 75 %
    /// the 750th of 1 000. hdrhistogram's iterator reaches its ticks by repeated addition, 75 %
    /// as 0.7500000000000002, which is one operation further.
    #[test]
    fn each_step_holds_the_value_the_report_gives_for_its_quantile() {
        let d = uniform();
        let steps = d.spectrum();
        for q in [0.5, 0.75, 0.9] {
            let step = steps
                .iter()
                .find(|s| s.quantile == q)
                .unwrap_or_else(|| panic!("no step at {q}: {steps:?}"));
            let rank = (q * 1000.0) as u64;
            assert_eq!((step.value, step.count), (d.quantile(q), rank), "at {q}");
        }
    }

    /// The steps stand where HdrHistogram's iterator puts its own, less its rounding, and as
    /// many of them: on a long-tailed run of 100 000 operations and on a run of one.
    #[test]
    fn the_steps_stand_where_hdrhistograms_do() {
        let mut long_tailed = histogram();
        for i in 1..=100_000u64 {
            long_tailed
                .record(1_000 + i * i / 1_000)
                .expect("within bounds");
        }
        let mut one = histogram();
        one.record(42_000).expect("within bounds");
        for h in [long_tailed, one] {
            let theirs: Vec<f64> = h
                .iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|step| step.quantile_iterated_to())
                .collect();
            let ours: Vec<f64> = Distribution::new(h)
                .spectrum()
                .iter()
                .map(|s| s.quantile)
                .collect();
            assert_eq!(ours.len(), theirs.len(), "{ours:?}\n{theirs:?}");
            assert!(
                ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() < 1e-12),
                "{ours:?}\n{theirs:?}"
            );
        }
    }

    #[test]
    fn hgrm_has_the_header_rows_and_footer_hdrhistogram_prints() {
        let text = uniform().to_hgrm();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // 1 µs is 0.001 ms; the median of 1..=1000 µs is 500 µs.
        assert_eq!(
            lines[2],
            "    0.001000 0.000000000000          1           1.00"
        );
        assert!(
            lines.contains(&"    0.500223 0.500000000000        500           2.00"),
            "{text}"
        );
        let last = lines[lines.len() - 4];
        assert!(last.ends_with(" 1.000000000000       1000"), "{last:?}");
        assert!(lines[lines.len() - 3].starts_with("#[Mean    =     0.50"));
        assert!(lines[lines.len() - 2].ends_with("Total count    =         1000]"));
        assert_eq!(
            lines[lines.len() - 1],
            format!(
                "#[Buckets = {:12}, SubBuckets     =         2048]",
                uniform().histogram.buckets()
            )
        );
    }

    #[test]
    fn an_empty_distribution_is_all_zero_and_still_a_valid_file() {
        let d = Distribution::default();
        assert_eq!(
            (d.count(), d.mean(), d.stdev()),
            (0, Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(d.quantile(0.99), Duration::ZERO);
        assert!(d.spectrum().is_empty());
        let text = d.to_hgrm();
        assert!(text.contains("Total count    =            0]"), "{text}");
    }

    #[test]
    fn debug_shows_the_summary_not_the_counters() {
        assert_eq!(
            format!("{:?}", uniform()),
            "Distribution { count: 1000, max: 1.000447ms }"
        );
    }
}
