//! What a benchmark run measured: per-thread tallies and the merged [`Report`].
//!
//! Each generator thread counts into its own `Tally`, with no sharing and no locks; the threads
//! hand their tallies over when they end and `Tally::merge` adds them up. Latencies go into an
//! HDR histogram (see [`Distribution`]): it keeps the tail (p99.9, max) exact to 0.1 % in a few
//! KiB whatever the number of samples, where averages would hide it.
//!
//! Besides what the server did (operations, bytes, latency, errors by kind), a report says what
//! the generator did: how far an open loop fell behind its timetable ([`Behind`]) and how much
//! CPU its own threads spent ([`Generator`]), so that a generator that was itself the bottleneck
//! says so. The table is in `table.rs`, the JSON in [`json`](super::json); both show every error
//! kind counted: a benchmark that hides its failures measures nothing.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::distribution::{self, Distribution};
use super::pace::LATE;

/// Error kind: the connection (or the chat join) was refused, `ECONNREFUSED`.
pub const REFUSED: &str = "refused";
/// Error kind: the peer reset the connection (`ECONNRESET`, `EPIPE`, `ECONNABORTED`).
pub const RESET: &str = "reset";
/// Error kind: no progress within the per-operation timeout.
pub const TIMEOUT: &str = "timeout";
/// Error kind: the server closed an echo connection before echoing everything sent.
pub const CLOSED: &str = "closed";
/// Error kind: a download ended before the `<size>` bytes its header announced.
pub const SHORT_READ: &str = "short read";
/// Error kind: echoed bytes differ from the bytes sent.
pub const MISMATCH: &str = "mismatch";
/// Error kind: an answer that breaks the protocol (bad header, extra bytes, unknown text).
pub const PROTOCOL: &str = "protocol";
/// Error kind: the download server answered `ERR 404`.
pub const NOT_FOUND: &str = "not found";
/// Error kind: the download server answered `ERR 503` (too many files open).
pub const BUSY: &str = "busy";
/// Error kind: the download server refused the request (`ERR` 400, 403, 414, 416).
pub const REJECTED: &str = "rejected";
/// Error kind: the chat relay said `* slow down` (start it with `--chat-rate 0` for benchmarks).
pub const RATE_LIMITED: &str = "rate limited";
/// Error kind: the chat relay refused a member or a room (`* server full`, `* too many rooms`)
/// or a message (`* message too long`).
pub const CHAT_REFUSED: &str = "chat refused";
/// Error kind: no local port or descriptor left for a new connection (`EADDRNOTAVAIL`,
/// `EMFILE`): the generator's machine, not the server, ran out.
pub const LOCAL_LIMIT: &str = "local limit";
/// Error kind: any other I/O error.
pub const IO: &str = "io";

/// The error kind of an I/O error, for the error table.
pub(crate) fn classify(err: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => REFUSED,
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => RESET,
        TimedOut => TIMEOUT,
        UnexpectedEof => SHORT_READ,
        AddrNotAvailable | AddrInUse => LOCAL_LIMIT,
        _ if crate::sys::out_of_resources(err) => LOCAL_LIMIT,
        _ => IO,
    }
}

/// What one generator thread counted.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Operations completed: echo round trips, connections, downloads or chat deliveries.
    pub operations: u64,
    /// Payload bytes received: echoed bytes, download bodies, or relayed datagrams.
    pub bytes: u64,
    /// Chat messages sent (the denominator of the delivery ratio); 0 for TCP scenarios.
    pub sent: u64,
    /// Latency of every completed operation, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// How far an open loop fell behind its timetable.
    pub behind: Behind,
    /// CPU time this thread used while measuring.
    pub cpu: Duration,
    /// That CPU time over the wall time it was measured in: 1.0 is a thread that never waited.
    pub busy: f64,
    /// Whether any connection (or chat join) of this thread ever succeeded.
    pub reached: bool,
    /// The first connection failure while the target had not yet been reached: the reason given
    /// when the whole run turns out to be unreachable.
    pub first_failure: Option<io::Error>,
    /// When the last operation completed: the end of a `--requests` run.
    pub last_operation: Option<Instant>,
    /// When this thread stopped generating load (run over, stop asked, or all its work done).
    pub load_ended: Option<Instant>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            operations: 0,
            bytes: 0,
            sent: 0,
            latency: distribution::histogram(),
            errors: BTreeMap::new(),
            behind: Behind::default(),
            cpu: Duration::ZERO,
            busy: 0.0,
            reached: false,
            first_failure: None,
            last_operation: None,
            load_ended: None,
        }
    }

    /// The warm-up is over: forgets what it counted, keeping only whether the target was
    /// reached (and why not, if it was not).
    pub fn restart(&mut self) {
        let reached = self.reached;
        let first_failure = self.first_failure.take();
        *self = Tally::new();
        self.reached = reached;
        self.first_failure = first_failure;
    }

    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// Errors of every kind together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Counts one completed operation that took `latency` and brought `bytes` bytes.
    pub fn complete(&mut self, latency: Duration, bytes: u64, now: Instant) {
        self.operations += 1;
        self.bytes += bytes;
        // Zero is below the histogram's lowest trackable value; a nanosecond is the resolution.
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(ns);
        self.last_operation = Some(now);
    }

    /// An open loop's operation started `lag` after its due instant.
    pub fn started_after(&mut self, lag: Duration) {
        if lag >= LATE {
            self.behind.late += 1;
        }
        self.behind.max_lag = self.behind.max_lag.max(lag);
    }

    /// Adds another thread's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.operations += other.operations;
        self.bytes += other.bytes;
        self.sent += other.sent;
        // Both histograms were made with the same bounds, so adding cannot fail; saturate anyway.
        if self.latency.add(&other.latency).is_err() {
            for value in other.latency.iter_recorded() {
                self.latency
                    .saturating_record_n(value.value_iterated_to(), value.count_at_value());
            }
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_insert(0) += count;
        }
        self.behind.late += other.behind.late;
        self.behind.max_lag = self.behind.max_lag.max(other.behind.max_lag);
        self.behind.unstarted += other.behind.unstarted;
        self.cpu += other.cpu;
        self.busy = self.busy.max(other.busy);
        self.reached |= other.reached;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.last_operation = self.last_operation.max(other.last_operation);
        self.load_ended = self.load_ended.max(other.load_ended);
    }
}

/// Latency figures of a run's completed operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    /// The mean: what wrk and oha print first, and what a stall drags up.
    pub mean: Duration,
    /// Standard deviation around the mean.
    pub stdev: Duration,
    /// Median.
    pub p50: Duration,
    /// 75th percentile.
    pub p75: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile: the tail a busy loop's stalls show up in.
    pub p999: Duration,
    /// 99.99th percentile.
    pub p9999: Duration,
    /// The slowest operation.
    pub max: Duration,
    /// Operations measured.
    pub count: u64,
}

impl Latency {
    /// The summary of a distribution; all zero when it is empty.
    pub(crate) fn of(distribution: &Distribution) -> Latency {
        if distribution.count() == 0 {
            return Latency::default();
        }
        let at = |q| distribution.quantile(q);
        Latency {
            mean: distribution.mean(),
            stdev: distribution.stdev(),
            p50: at(0.5),
            p75: at(0.75),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            p9999: at(0.9999),
            max: distribution.max(),
            count: distribution.count(),
        }
    }
}

/// How far an open loop fell behind its timetable; all zero for a closed loop, which has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Behind {
    /// Operations that started [`LATE`] or more after their due instant: held back by the
    /// in-flight bound, a reconnect, or a busy generator. Their latency includes the wait.
    pub late: u64,
    /// The longest any operation waited past its due instant.
    pub max_lag: Duration,
    /// Operations due before the load stopped that never started.
    pub unstarted: u64,
}

impl Behind {
    /// Every operation started within [`LATE`] of its due instant.
    pub fn on_time(&self) -> bool {
        self.late == 0 && self.unstarted == 0
    }
}

/// What the generator itself cost while it measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Generator {
    /// CPU time of every generator thread together, user and system.
    pub cpu: Duration,
    /// The busiest thread's CPU time over the measured wall time: 1.0 never waited for the
    /// server, so the generator, not the server, may have set the pace.
    pub busiest: f64,
}

impl Generator {
    /// A thread busy this much of the time is taken to be the bottleneck.
    pub const SATURATED: f64 = 0.9;

    /// Whether a generator thread was busy nearly all the time.
    pub fn saturated(&self) -> bool {
        self.busiest >= Generator::SATURATED
    }

    /// CPU per operation; `None` without operations.
    pub fn per_operation(&self, operations: u64) -> Option<Duration> {
        let ns = self.cpu.as_nanos() / u128::from(operations.max(1));
        (operations > 0).then(|| Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `echo`, `connect`, `download` or `chat`.
    pub scenario: &'static str,
    /// The rate asked for (`--rate`), operations per second (chat: messages sent); `None` for
    /// a closed loop.
    pub rate: Option<f64>,
    /// How long load was measured: the duration, or less when `--requests` ran out first. A
    /// warm-up comes before it and is not counted.
    pub elapsed: Duration,
    /// Requests (echo), connections (connect), downloads (download) or deliveries (chat).
    pub operations: u64,
    /// Chat: messages sent; 0 for TCP scenarios, whose operations are what they send.
    pub sent: u64,
    /// Payload bytes received: echoed bytes, download bodies, relayed datagrams.
    pub bytes: u64,
    /// Latency figures of the completed operations (chat: one-way, sender to receiver).
    pub latency: Latency,
    /// Every latency, for the percentile spectrum, `--hgrm` and `--svg`.
    pub distribution: Distribution,
    /// Errors by kind; empty when none.
    pub errors: BTreeMap<&'static str, u64>,
    /// How far an open loop fell behind its timetable.
    pub behind: Behind,
    /// The generator's own cost.
    pub generator: Generator,
    /// Chat only: deliveries received over deliveries expected (sent × room size).
    pub delivery_ratio: Option<f64>,
}

impl Report {
    /// Builds the report of a run from its merged tally. `room` is the chat room's size (every
    /// message is delivered to each member, senders included), `None` for TCP scenarios.
    pub(crate) fn new(
        scenario: &'static str,
        rate: Option<f64>,
        elapsed: Duration,
        tally: &Tally,
        room: Option<usize>,
    ) -> Report {
        let distribution = Distribution::new(tally.latency.clone());
        Report {
            scenario,
            rate,
            elapsed,
            operations: tally.operations,
            sent: tally.sent,
            bytes: tally.bytes,
            latency: Latency::of(&distribution),
            distribution,
            errors: tally.errors.clone(),
            behind: tally.behind,
            generator: Generator {
                cpu: tally.cpu,
                busiest: tally.busy,
            },
            delivery_ratio: room.and_then(|room| {
                let expected = tally.sent as f64 * room as f64;
                (expected > 0.0).then(|| tally.operations as f64 / expected)
            }),
        }
    }

    /// Operations per second; 0 for a run that lasted no time.
    pub fn per_second(&self) -> f64 {
        rate(self.operations as f64, self.elapsed)
    }

    /// The rate the run achieved, to set beside the one asked for: operations per second, or
    /// for chat, whose rate is of messages sent, messages sent per second.
    pub fn achieved_rate(&self) -> f64 {
        if self.scenario == "chat" {
            rate(self.sent as f64, self.elapsed)
        } else {
            self.per_second()
        }
    }

    /// Megabytes (10⁶ bytes) received per second.
    pub fn megabytes_per_second(&self) -> f64 {
        rate(self.bytes as f64 / 1e6, self.elapsed)
    }

    /// Errors of every kind together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What a scenario's operations are called, in the table and the progress line.
pub(crate) fn noun(scenario: &str) -> &'static str {
    match scenario {
        "echo" => "requests",
        "connect" => "connections",
        "download" => "downloads",
        "chat" => "deliveries",
        _ => "operations",
    }
}

/// `amount` per second of `elapsed`, or 0 when no time passed.
pub(crate) fn rate(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    // ---- the tally ----

    #[test]
    fn percentiles_of_one_to_a_thousand_microseconds() {
        let mut tally = Tally::new();
        let now = Instant::now();
        for us in 1..=1000 {
            tally.complete(micros(us), 10, now);
        }
        let l = Latency::of(&Distribution::new(tally.latency.clone()));
        let near = |got: Duration, want: u64| {
            let (got, want) = (got.as_nanos() as f64, (want * 1000) as f64);
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        };
        near(l.p50, 500);
        near(l.p75, 750);
        near(l.p90, 900);
        near(l.p99, 990);
        near(l.p999, 999);
        near(l.p9999, 1000);
        near(l.max, 1000);
        assert!(
            (l.mean.as_nanos() as f64 - 500_500.0).abs() <= 500.0,
            "{:?}",
            l.mean
        );
        assert_eq!(l.count, 1000);
        assert_eq!(tally.operations, 1000);
        assert_eq!(tally.bytes, 10_000);
    }

    #[test]
    fn an_empty_distribution_summarises_to_zero() {
        assert_eq!(Latency::of(&Distribution::default()), Latency::default());
    }

    #[test]
    fn merging_tallies_adds_samples_counts_errors_and_cpu() {
        let now = Instant::now();
        let mut a = Tally::new();
        let mut b = Tally::new();
        a.complete(micros(1), 1, now);
        b.complete(micros(1000), 2, now);
        a.error(RESET);
        b.error(RESET);
        b.error(TIMEOUT);
        b.sent = 7;
        a.started_after(Duration::from_millis(3));
        b.started_after(Duration::from_millis(8));
        b.behind.unstarted = 4;
        (a.cpu, a.busy) = (Duration::from_millis(10), 0.5);
        (b.cpu, b.busy) = (Duration::from_millis(30), 0.25);
        a.merge(b);
        assert_eq!(a.latency.len(), 2);
        assert!(a.latency.max() >= 999_000);
        assert_eq!((a.operations, a.bytes, a.sent), (2, 3, 7));
        assert_eq!(a.errors[RESET], 2);
        assert_eq!(a.errors[TIMEOUT], 1);
        assert_eq!(
            a.behind,
            Behind {
                late: 2,
                max_lag: Duration::from_millis(8),
                unstarted: 4
            }
        );
        assert_eq!((a.cpu, a.busy), (Duration::from_millis(40), 0.5));
    }

    #[test]
    fn a_zero_latency_is_recorded_as_one_nanosecond() {
        let mut tally = Tally::new();
        tally.complete(Duration::ZERO, 0, Instant::now());
        assert_eq!(tally.latency.max(), 1);
    }

    #[test]
    fn restarting_after_the_warm_up_keeps_only_reachability() {
        let mut tally = Tally::new();
        tally.complete(micros(5), 5, Instant::now());
        tally.error(RESET);
        tally.started_after(Duration::from_millis(2));
        tally.reached = true;
        tally.restart();
        assert_eq!(
            (tally.operations, tally.bytes, tally.latency.len()),
            (0, 0, 0)
        );
        assert!(tally.errors.is_empty());
        assert!(tally.behind.on_time());
        assert!(tally.reached);
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        let kind = |k: io::ErrorKind| classify(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), REFUSED);
        assert_eq!(kind(io::ErrorKind::ConnectionReset), RESET);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), RESET);
        assert_eq!(kind(io::ErrorKind::TimedOut), TIMEOUT);
        assert_eq!(kind(io::ErrorKind::AddrNotAvailable), LOCAL_LIMIT);
        assert_eq!(
            classify(&io::Error::from_raw_os_error(libc::EMFILE)),
            LOCAL_LIMIT
        );
        assert_eq!(kind(io::ErrorKind::PermissionDenied), IO);
    }

    // ---- the report ----

    #[test]
    fn rates_divide_by_the_elapsed_time_and_chat_achieves_its_sends() {
        let mut tally = Tally::new();
        let now = Instant::now();
        for _ in 0..1000 {
            tally.complete(micros(40), 4000, now);
        }
        tally.sent = 100;
        let report = Report::new("echo", None, Duration::from_secs(2), &tally, None);
        assert_eq!(report.per_second(), 500.0);
        assert_eq!(report.achieved_rate(), 500.0);
        assert_eq!(report.megabytes_per_second(), 2.0);
        let chat = Report::new("chat", Some(50.0), Duration::from_secs(2), &tally, Some(10));
        assert_eq!(chat.achieved_rate(), 50.0, "messages sent per second");
        assert_eq!(chat.delivery_ratio, Some(1.0));
        let instant = Report::new("echo", None, Duration::ZERO, &tally, None);
        assert_eq!(instant.per_second(), 0.0);
    }

    #[test]
    fn the_generator_is_saturated_past_ninety_percent_and_costs_cpu_per_operation() {
        let generator = Generator {
            cpu: Duration::from_millis(10),
            busiest: 0.95,
        };
        assert!(generator.saturated());
        assert_eq!(generator.per_operation(1000), Some(micros(10)));
        assert_eq!(generator.per_operation(0), None);
        assert!(!Generator::default().saturated());
    }
}
