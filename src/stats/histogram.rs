//! Fixed-bucket histograms: how long loop passes take, how many events a `poll` returns, how
//! long connections live.
//!
//! Each histogram counts observations into a handful of buckets whose upper bounds are fixed when
//! the program is compiled, and keeps the sum of what it saw: the shape Prometheus expects
//! (`_bucket{le=...}`, `_sum`, `_count`). Recording is a binary search over at most
//! [`MAX_BOUNDS`] integers and two load-then-store updates, with no allocation, so the loop can
//! afford it on every pass. Values are recorded as integers (nanoseconds, events) so the hot path
//! does no floating point; the conversion to seconds happens when someone reads.
//!
//! What it leaves out: exact quantiles. A quantile read from buckets is only known to lie within
//! its bucket; [`HistogramSnapshot::quantile`] interpolates inside it, as Prometheus's
//! `histogram_quantile` does. Loop-pass bounds step by at most 2.5 times, events per poll by 2,
//! lifetimes by up to 5 (past a minute): that is the precision of a quantile read from them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::bump;

/// The most upper bounds a histogram may have; one more bucket (`+Inf`) takes the rest.
pub const MAX_BOUNDS: usize = 19;

/// The bucket layout of one histogram: its upper bounds and the unit they are in.
#[derive(Debug, PartialEq, Eq)]
pub struct Buckets {
    /// Inclusive upper bounds (`le`), strictly ascending, in the recorded integer unit.
    bounds: &'static [u64],
    /// Recorded units per exposed unit: 1e9 for nanoseconds shown as seconds, 1 for counts.
    /// Dividing (rather than multiplying by 1e-9) gives each bound's shortest decimal exactly.
    per_unit: u64,
}

impl Buckets {
    /// A layout, checked when the constant is evaluated: at most [`MAX_BOUNDS`] bounds, ascending.
    const fn new(bounds: &'static [u64], per_unit: u64) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "too many buckets");
        let mut i = 1;
        while i < bounds.len() {
            assert!(bounds[i - 1] < bounds[i], "bounds must ascend");
            i += 1;
        }
        Buckets { bounds, per_unit }
    }

    /// The upper bounds in the exposed unit (seconds, events), `+Inf` last.
    pub fn upper_bounds(&self) -> impl Iterator<Item = f64> + '_ {
        let finite = self.bounds.iter().map(|b| self.exposed(*b));
        finite.chain([f64::INFINITY])
    }

    fn exposed(&self, recorded: u64) -> f64 {
        recorded as f64 / self.per_unit as f64
    }
}

/// Time per loop pass, from `poll` returning to the next `poll`, in nanoseconds shown as seconds:
/// 1 µs to 1 s in 1-2.5-5 steps. An idle echo pass takes a few µs; a pass past 100 ms means a
/// handler blocked or a batch was enormous, and the top bound catches anything pathological.
pub const PASS_SECONDS: Buckets = Buckets::new(
    &[
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
    ],
    1_000_000_000,
);

/// Events returned by one `poll`: 0 (a timeout or a signal woke the loop), then powers of two up
/// to 1 024, the most one `poll` can return (`EVENTS_PER_POLL` in the event loop).
pub const EVENTS_PER_POLL: Buckets =
    Buckets::new(&[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], 1);

/// How long a connection lived, accept to close, in nanoseconds shown as seconds: 1 ms to 1 h.
/// 1-2.5-5 steps up to 10 s (one request, a short download), then 30 s, 1 min, 5 min, 15 min and
/// 1 h for the clients that stay (chatty echo sessions, large downloads, idle timeouts).
pub const LIFETIME_SECONDS: Buckets = Buckets::new(
    &[
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
        60_000_000_000,
        300_000_000_000,
        900_000_000_000,
        3_600_000_000_000,
    ],
    1_000_000_000,
);

/// A live histogram, written by the loop's thread only (see [`Stats`](super::Stats)).
#[derive(Debug)]
pub struct Histogram {
    buckets: &'static Buckets,
    /// Observations per bucket (not cumulative), `+Inf` at `bounds.len()`; slots past it unused.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    /// Sum of every observation, in the recorded unit. As nanoseconds it wraps after 584 years of
    /// summed time, which Prometheus would read as a counter reset.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with the given layout.
    pub fn new(buckets: &'static Buckets) -> Self {
        Histogram {
            buckets,
            counts: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation, in the recorded unit (nanoseconds, events).
    pub fn observe(&self, value: u64) {
        // The first bound not below `value`; past the last bound it is the `+Inf` bucket.
        let bucket = self.buckets.bounds.partition_point(|bound| *bound < value);
        bump(&self.counts[bucket], 1);
        bump(&self.sum, value);
    }

    /// Every bucket and the sum, as they are now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets,
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A histogram's figures at one moment.
///
/// Read on the loop's own thread, a snapshot is exact. Read from another thread, the buckets are
/// loaded one by one while the loop may record, so the sum can be a few observations ahead of or
/// behind the buckets; the count is always the buckets' total, so `_count` equals the `+Inf`
/// bucket as Prometheus requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: &'static Buckets,
    counts: [u64; MAX_BOUNDS + 1],
    sum: u64,
}

impl HistogramSnapshot {
    /// How many observations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations, in the exposed unit (seconds, events).
    pub fn sum(&self) -> f64 {
        self.buckets.exposed(self.sum)
    }

    /// Each bucket's upper bound in the exposed unit and its own count (not cumulative), in
    /// ascending order, the `+Inf` bucket last.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets.upper_bounds().zip(self.counts.iter().copied())
    }

    /// What was observed after `earlier` (a snapshot of the same histogram) up to this one.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets,
            counts: std::array::from_fn(|i| self.counts[i].wrapping_sub(earlier.counts[i])),
            sum: self.sum.wrapping_sub(earlier.sum),
        }
    }

    /// The mean observation, or `None` when there was none.
    pub fn mean(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum() / count as f64)
    }

    /// The `q`-quantile (0.99 for p99), or `None` when nothing was observed.
    ///
    /// Found as Prometheus's `histogram_quantile` finds it: the bucket holding the rank, then a
    /// straight line from its lower to its upper bound. So it is exact to within that bucket. A
    /// rank in the `+Inf` bucket reads as the highest finite bound, the most the layout can say.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let (mut below, mut lower) = (0, 0.0);
        for (upper, n) in self.buckets() {
            if n > 0 && (below + n) as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
            }
            below += n;
            lower = upper;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 1;
    const US: u64 = 1_000 * NS;
    const MS: u64 = 1_000 * US;

    /// Equal but for floating-point rounding (a rank of `0.99 * 100` is not exactly 99).
    fn about(value: Option<f64>, expected: f64) -> bool {
        value.is_some_and(|v| (v - expected).abs() <= expected * 1e-9)
    }

    fn counts(snapshot: &HistogramSnapshot) -> Vec<(f64, u64)> {
        snapshot.buckets().filter(|(_, n)| *n > 0).collect()
    }

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let histogram = Histogram::new(&PASS_SECONDS);
        histogram.observe(0);
        histogram.observe(US); // on a bound: `le` is inclusive
        histogram.observe(US + 1);
        histogram.observe(2 * 1_000 * MS); // past the last bound
        let snapshot = histogram.snapshot();
        assert_eq!(
            counts(&snapshot),
            [(0.000001, 2), (0.0000025, 1), (f64::INFINITY, 1)]
        );
        assert_eq!(snapshot.count(), 4);
        assert_eq!(snapshot.sum(), (2 * US + 1 + 2_000 * MS) as f64 / 1e9);
    }

    #[test]
    fn bounds_are_shown_in_the_exposed_unit_with_their_shortest_decimal() {
        let bounds: Vec<String> = PASS_SECONDS.upper_bounds().map(|b| b.to_string()).collect();
        assert_eq!(bounds[0], "0.000001");
        assert_eq!(bounds[1], "0.0000025");
        assert_eq!(bounds[18], "1");
        assert_eq!(bounds[19], "inf");
        let hour = LIFETIME_SECONDS.upper_bounds().nth(17);
        assert_eq!(hour, Some(3600.0));
        let events: Vec<f64> = EVENTS_PER_POLL.upper_bounds().collect();
        assert_eq!(events[..3], [0.0, 1.0, 2.0]);
        assert_eq!(events[11], 1024.0);
    }

    #[test]
    fn every_layout_has_room_for_its_buckets() {
        for layout in [&PASS_SECONDS, &EVENTS_PER_POLL, &LIFETIME_SECONDS] {
            assert!(layout.bounds.len() <= MAX_BOUNDS);
            assert!(layout.bounds.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn a_delta_holds_only_what_was_observed_in_between() {
        let histogram = Histogram::new(&EVENTS_PER_POLL);
        histogram.observe(1);
        histogram.observe(1);
        let earlier = histogram.snapshot();
        histogram.observe(3);
        histogram.observe(5);
        let delta = histogram.snapshot().since(&earlier);
        assert_eq!(counts(&delta), [(4.0, 1), (8.0, 1)]);
        assert_eq!(delta.count(), 2);
        assert_eq!(delta.mean(), Some(4.0));
    }

    #[test]
    fn an_empty_histogram_has_no_mean_and_no_quantile() {
        let snapshot = Histogram::new(&PASS_SECONDS).snapshot();
        assert_eq!(snapshot.mean(), None);
        assert_eq!(snapshot.quantile(0.99), None);
    }

    #[test]
    fn a_quantile_is_interpolated_inside_the_bucket_that_holds_its_rank() {
        let histogram = Histogram::new(&PASS_SECONDS);
        // 99 passes of 8 µs fall in (5 µs, 10 µs]; one of 40 µs falls in (25 µs, 50 µs].
        (0..99).for_each(|_| histogram.observe(8 * US));
        histogram.observe(40 * US);
        let snapshot = histogram.snapshot();
        // Rank 99 of 100 is the last of the 99 in (5, 10]: the bucket's upper bound.
        assert!(about(snapshot.quantile(0.99), 0.00001));
        // Rank 50 lies 50/99 of the way through that bucket.
        assert!(about(
            snapshot.quantile(0.5),
            0.000005 + 0.000005 * 50.0 / 99.0
        ));
        // Rank 100 is in (25, 50]: the only observation there, so its upper bound.
        assert!(about(snapshot.quantile(1.0), 0.00005));
    }

    #[test]
    fn a_quantile_past_the_last_bound_reads_as_the_last_bound() {
        let histogram = Histogram::new(&PASS_SECONDS);
        histogram.observe(5_000 * MS);
        assert_eq!(histogram.snapshot().quantile(0.99), Some(1.0));
    }
}
