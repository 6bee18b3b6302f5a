//! What a benchmark run measured: per-thread tallies, the merged [`Report`], its table and JSON.
//!
//! Each generator thread counts into its own `Tally`, with no sharing and no locks; the threads
//! hand their tallies over when they end and `Tally::merge` adds them up. Latencies go into an
//! HDR histogram (nanoseconds, 3 significant digits): it keeps the tail (p99.9, max) exact to
//! 0.1 % in a few KiB whatever the number of samples, where averages would hide it.
//!
//! The table is for people; [`Report::to_json`] is for scripts and is written by hand (a dozen
//! fields do not justify a serialisation framework). Both show every error kind counted: a
//! benchmark that hides its failures measures nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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

/// Highest latency the histogram tracks, in nanoseconds: one hour, the longest run allowed.
/// Longer values are recorded as this bound (they cannot happen within a bounded run).
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

/// Significant decimal digits the histogram keeps: 3 means every value within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

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
            // The bounds are constants that satisfy new_with_bounds' rules (low >= 1,
            // high >= 2 * low, sigfig <= 5), so this cannot fail.
            latency: Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            errors: BTreeMap::new(),
            reached: false,
            first_failure: None,
            last_operation: None,
            load_ended: None,
        }
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
        self.reached |= other.reached;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.last_operation = self.last_operation.max(other.last_operation);
        self.load_ended = self.load_ended.max(other.load_ended);
    }
}

/// Latency percentiles of a run's completed operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile: the tail a busy loop's stalls show up in.
    pub p999: Duration,
    /// The slowest operation.
    pub max: Duration,
    /// Operations measured.
    pub count: u64,
}

impl Latency {
    /// The summary of a histogram of nanoseconds; all zero when it is empty.
    pub(crate) fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let at = |q: f64| Duration::from_nanos(histogram.value_at_quantile(q));
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(histogram.max()),
            count: histogram.len(),
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `echo`, `connect`, `download` or `chat`.
    pub scenario: &'static str,
    /// How long load was generated: the duration, or less when `--requests` ran out first.
    pub elapsed: Duration,
    /// Requests (echo), connections (connect), downloads (download) or deliveries (chat).
    pub operations: u64,
    /// Payload bytes received: echoed bytes, download bodies, relayed datagrams.
    pub bytes: u64,
    /// Latency of the completed operations (chat: one-way, sender to receiver).
    pub latency: Latency,
    /// Errors by kind; empty when none.
    pub errors: BTreeMap<&'static str, u64>,
    /// Chat only: deliveries received over deliveries expected (sent × room size).
    pub delivery_ratio: Option<f64>,
}

impl Report {
    /// Builds the report of a run from its merged tally. `room` is the chat room's size (every
    /// message is delivered to each member, senders included), `None` for TCP scenarios.
    pub(crate) fn new(
        scenario: &'static str,
        elapsed: Duration,
        tally: &Tally,
        room: Option<usize>,
    ) -> Report {
        Report {
            scenario,
            elapsed,
            operations: tally.operations,
            bytes: tally.bytes,
            latency: Latency::from_histogram(&tally.latency),
            errors: tally.errors.clone(),
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

    /// Megabytes (10⁶ bytes) received per second.
    pub fn megabytes_per_second(&self) -> f64 {
        rate(self.bytes as f64 / 1e6, self.elapsed)
    }

    /// Errors of every kind together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One JSON object on one line, for scripts:
    ///
    /// ```text
    /// {"scenario":"echo","elapsed_s":10.0,"operations":1234,"per_second":123.4,"bytes":78976,
    ///  "megabytes_per_second":0.0079,"latency_ns":{"p50":..,"p90":..,"p99":..,"p999":..,
    ///  "max":..,"count":1234},"errors":{"reset":2},"delivery_ratio":null}
    /// ```
    pub fn to_json(&self) -> String {
        let l = &self.latency;
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, count)| format!("{}:{count}", json_string(kind)))
            .collect();
        format!(
            concat!(
                "{{\"scenario\":{},\"elapsed_s\":{},\"operations\":{},\"per_second\":{},",
                "\"bytes\":{},\"megabytes_per_second\":{},\"latency_ns\":{{\"p50\":{},",
                "\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"count\":{}}},",
                "\"errors\":{{{}}},\"delivery_ratio\":{}}}"
            ),
            json_string(self.scenario),
            json_number(self.elapsed.as_secs_f64()),
            self.operations,
            json_number(self.per_second()),
            self.bytes,
            json_number(self.megabytes_per_second()),
            l.p50.as_nanos(),
            l.p90.as_nanos(),
            l.p99.as_nanos(),
            l.p999.as_nanos(),
            l.max.as_nanos(),
            l.count,
            errors.join(","),
            self.delivery_ratio.map_or("null".to_string(), json_number),
        )
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

/// Width of the label column of the table.
const LABEL: usize = 12;
/// Width of each value column of the table.
const COLUMN: usize = 11;
/// Width of the rate column beside a total: room for `12345678.9/s` and `1234.56 MB/s`.
const RATE: usize = 14;

/// The aligned table:
///
/// ```text
/// scenario    echo, 10.00 s
/// requests        1234567    123456.7/s
/// received       158.0 MB    15.80 MB/s
/// latency             p50        p90        p99      p99.9        max
///                 41.2 µs    55.0 µs    90.1 µs    1.20 ms    4.51 ms
/// errors             none
/// ```
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "{:<LABEL$}{}, {secs:.2} s", "scenario", self.scenario)?;
        writeln!(
            f,
            "{:<LABEL$}{:>COLUMN$}{:>RATE$}",
            noun(self.scenario),
            self.operations,
            format!("{:.1}/s", self.per_second())
        )?;
        writeln!(
            f,
            "{:<LABEL$}{:>COLUMN$}{:>RATE$}",
            "received",
            format!("{:.1} MB", self.bytes as f64 / 1e6),
            format!("{:.2} MB/s", self.megabytes_per_second())
        )?;
        write!(f, "{:<LABEL$}", "latency")?;
        for name in ["p50", "p90", "p99", "p99.9", "max"] {
            write!(f, "{name:>COLUMN$}")?;
        }
        writeln!(f)?;
        write!(f, "{:<LABEL$}", "")?;
        let l = &self.latency;
        for value in [l.p50, l.p90, l.p99, l.p999, l.max] {
            // No sample, no latency: a dash rather than a misleading "0 ns".
            let shown = if l.count == 0 {
                "-".to_string()
            } else {
                human_duration(value)
            };
            write!(f, "{shown:>COLUMN$}")?;
        }
        writeln!(f)?;
        if let Some(ratio) = self.delivery_ratio {
            writeln!(
                f,
                "{:<LABEL$}{:>COLUMN$}",
                "delivered",
                format!("{:.2} %", ratio * 100.0)
            )?;
        }
        if self.errors.is_empty() {
            return writeln!(f, "{:<LABEL$}{:>COLUMN$}", "errors", "none");
        }
        for (i, (kind, count)) in self.errors.iter().enumerate() {
            let label = if i == 0 { "errors" } else { "" };
            writeln!(f, "{label:<LABEL$}{count:>COLUMN$}  {kind}")?;
        }
        Ok(())
    }
}

/// `amount` per second of `elapsed`, or 0 when no time passed.
fn rate(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

/// A duration with three significant digits and the unit that suits it: `850 ns`, `41.2 µs`,
/// `1.20 ms`, `2.50 s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    if unit == "ns" {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.decimals$} {unit}")
    }
}

/// A JSON number; JSON has no NaN or infinity, so those become `null`.
fn json_number(value: f64) -> String {
    if value.is_finite() {
        // `{:?}` keeps a decimal point (`10.0`), and never uses an exponent JSON would refuse.
        format!("{value:?}")
    } else {
        "null".to_string()
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    // ---- the histogram summary ----

    #[test]
    fn percentiles_of_one_to_a_thousand_microseconds() {
        let mut tally = Tally::new();
        let now = Instant::now();
        for us in 1..=1000 {
            tally.complete(micros(us), 10, now);
        }
        let l = Latency::from_histogram(&tally.latency);
        let near = |got: Duration, want: u64| {
            let (got, want) = (got.as_nanos() as f64, (want * 1000) as f64);
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        };
        near(l.p50, 500);
        near(l.p90, 900);
        near(l.p99, 990);
        near(l.p999, 999);
        near(l.max, 1000);
        assert_eq!(l.count, 1000);
        assert_eq!(tally.operations, 1000);
        assert_eq!(tally.bytes, 10_000);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zero() {
        assert_eq!(
            Latency::from_histogram(&Tally::new().latency),
            Latency::default()
        );
    }

    #[test]
    fn merging_tallies_adds_samples_counts_and_errors() {
        let now = Instant::now();
        let mut a = Tally::new();
        let mut b = Tally::new();
        a.complete(micros(1), 1, now);
        b.complete(micros(1000), 2, now);
        a.error(RESET);
        b.error(RESET);
        b.error(TIMEOUT);
        b.sent = 7;
        a.merge(b);
        let l = Latency::from_histogram(&a.latency);
        assert_eq!(l.count, 2);
        assert!(l.max >= micros(999));
        assert_eq!((a.operations, a.bytes, a.sent), (2, 3, 7));
        assert_eq!(a.errors[RESET], 2);
        assert_eq!(a.errors[TIMEOUT], 1);
    }

    #[test]
    fn a_zero_latency_is_recorded_as_one_nanosecond() {
        let mut tally = Tally::new();
        tally.complete(Duration::ZERO, 0, Instant::now());
        assert_eq!(Latency::from_histogram(&tally.latency).max.as_nanos(), 1);
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

    fn sample() -> Report {
        Report {
            scenario: "echo",
            elapsed: Duration::from_secs(2),
            operations: 1000,
            bytes: 4_000_000,
            latency: Latency {
                p50: micros(41),
                p90: micros(55),
                p99: micros(90),
                p999: Duration::from_micros(1200),
                max: Duration::from_millis(4),
                count: 1000,
            },
            errors: BTreeMap::from([(RESET, 2), (TIMEOUT, 1)]),
            delivery_ratio: None,
        }
    }

    #[test]
    fn rates_divide_by_the_elapsed_time() {
        let report = sample();
        assert_eq!(report.per_second(), 500.0);
        assert_eq!(report.megabytes_per_second(), 2.0);
        let instant = Report {
            elapsed: Duration::ZERO,
            ..sample()
        };
        assert_eq!(instant.per_second(), 0.0);
    }

    #[test]
    fn the_table_lines_up_and_lists_every_error_kind() {
        let table = sample().to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "scenario    echo, 2.00 s");
        assert!(lines[1].starts_with("requests") && lines[1].ends_with("500.0/s"));
        // The percentile names sit right above their values, right-aligned in the same columns.
        let names = lines.iter().position(|l| l.starts_with("latency")).unwrap();
        assert_eq!(
            lines[names].chars().count(),
            lines[names + 1].chars().count()
        );
        assert!(lines[names + 1].contains("41.0 µs") && lines[names + 1].contains("1.20 ms"));
        assert!(table.contains("\nerrors                2  reset\n"));
        assert!(table.contains("\n                      1  timeout\n"));
        assert!(!table.contains("delivered"));
    }

    #[test]
    fn a_clean_run_says_no_errors_and_chat_shows_its_delivery_ratio() {
        let report = Report {
            scenario: "chat",
            errors: BTreeMap::new(),
            delivery_ratio: Some(0.995),
            ..sample()
        };
        let table = report.to_string();
        assert!(table.contains("deliveries"));
        assert!(table.contains("delivered       99.50 %"));
        assert!(table.contains("errors             none"));
    }

    #[test]
    fn json_holds_every_figure_on_one_line() {
        let json = sample().to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"scenario\":\"echo\",\"elapsed_s\":2.0,"));
        assert!(json.contains("\"per_second\":500.0"));
        assert!(json.contains("\"latency_ns\":{\"p50\":41000,\"p90\":55000,"));
        assert!(json.contains("\"errors\":{\"reset\":2,\"timeout\":1}"));
        assert!(json.ends_with("\"delivery_ratio\":null}"));
    }

    #[test]
    fn json_escapes_strings_and_refuses_non_finite_numbers() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_number(f64::NAN), "null");
        assert_eq!(json_number(0.5), "0.5");
        assert_eq!(json_number(1e21), "1e21");
    }

    #[test]
    fn durations_print_with_three_significant_digits() {
        assert_eq!(human_duration(Duration::from_nanos(850)), "850 ns");
        assert_eq!(human_duration(Duration::from_nanos(41_234)), "41.2 µs");
        assert_eq!(human_duration(Duration::from_micros(1_204)), "1.20 ms");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(human_duration(Duration::from_millis(2_500)), "2.50 s");
    }
}
