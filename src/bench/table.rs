//! The tables people read: one run's [`Report`] as aligned label/value lines, and a sweep's runs
//! as one row each.
//!
//! A single run shows what wrk and oha users look for first (the achieved rate beside the one
//! asked for, mean and standard deviation, the percentile spectrum up to p99.99 and the maximum)
//! and what a generator must own up to: every error kind, how far an open loop fell behind its
//! timetable, and its own CPU per operation. A sweep's table puts each step on a row, so the
//! curve of latency against load reads top to bottom.

use std::fmt;
use std::time::Duration;

use super::report::{Report, noun};
use super::{Load, Scenario};

/// Width of the label column of a run's table.
const LABEL: usize = 12;
/// Width of each value column of a run's table.
const COLUMN: usize = 11;
/// Width of the rate column beside a total: room for `12345678.9/s` and `1234.56 MB/s`.
const RATE: usize = 14;
/// A sweep's columns and their widths: a duration takes up to 7 characters (`41.2 µs`), a
/// compact rate up to 7 (`1.25M`), so each column has room for its name and a space.
const SWEEP_COLUMNS: [(&str, usize); 12] = [
    ("c", 6),
    ("rate/s", 9),
    ("achieved/s", 12),
    ("mean", 10),
    ("p50", 10),
    ("p99", 10),
    ("p99.9", 10),
    ("p99.99", 10),
    ("max", 10),
    ("errors", 8),
    ("late", 8),
    ("CPU/op", 10),
];

/// The aligned table of one run:
///
/// ```text
/// scenario    echo, open loop at 1000.0/s, 2.00 s
/// requests           1998       999.0/s  of 1000.0/s asked
/// received         0.1 MB    0.06 MB/s
/// latency            mean      stdev        max
///                 41.0 µs    12.0 µs    4.00 ms
/// percentiles         p50        p75        p90        p99      p99.9     p99.99
///                 41.0 µs    48.0 µs    55.0 µs    90.0 µs    1.20 ms    3.00 ms
/// behind             none
/// errors             none
/// generator       12.1 µs  CPU per request, busiest thread 3 % busy
/// ```
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate:.1}/s"),
            None => "closed loop".to_string(),
        };
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "{:<LABEL$}{}, {mode}, {secs:.2} s",
            "scenario", self.scenario
        )?;
        // The rate asked for goes beside what it counts: chat messages sent, else operations.
        let asked = self
            .rate
            .map(|rate| format!("  of {rate:.1}/s asked"))
            .unwrap_or_default();
        let chat = self.scenario == "chat";
        if chat {
            writeln!(
                f,
                "{:<LABEL$}{:>COLUMN$}{:>RATE$}{asked}",
                "sent",
                self.sent,
                format!("{:.1}/s", self.achieved_rate())
            )?;
        }
        writeln!(
            f,
            "{:<LABEL$}{:>COLUMN$}{:>RATE$}{}",
            noun(self.scenario),
            self.operations,
            format!("{:.1}/s", self.per_second()),
            if chat { "" } else { &asked }
        )?;
        writeln!(
            f,
            "{:<LABEL$}{:>COLUMN$}{:>RATE$}",
            "received",
            format!("{:.1} MB", self.bytes as f64 / 1e6),
            format!("{:.2} MB/s", self.megabytes_per_second())
        )?;
        let l = &self.latency;
        let measured = l.count > 0;
        row(
            f,
            "latency",
            &[("mean", l.mean), ("stdev", l.stdev), ("max", l.max)],
            measured,
        )?;
        row(
            f,
            "percentiles",
            &[
                ("p50", l.p50),
                ("p75", l.p75),
                ("p90", l.p90),
                ("p99", l.p99),
                ("p99.9", l.p999),
                ("p99.99", l.p9999),
            ],
            measured,
        )?;
        if let Some(ratio) = self.delivery_ratio {
            writeln!(
                f,
                "{:<LABEL$}{:>COLUMN$}",
                "delivered",
                format!("{:.2} %", ratio * 100.0)
            )?;
        }
        if self.rate.is_some() {
            let b = &self.behind;
            if b.on_time() {
                writeln!(f, "{:<LABEL$}{:>COLUMN$}", "behind", "none")?;
            } else {
                writeln!(
                    f,
                    "{:<LABEL$}{:>COLUMN$}  started late, up to {} behind; {} never started",
                    "behind",
                    b.late,
                    human_duration(b.max_lag),
                    b.unstarted
                )?;
            }
        }
        if self.errors.is_empty() {
            writeln!(f, "{:<LABEL$}{:>COLUMN$}", "errors", "none")?;
        }
        for (i, (kind, count)) in self.errors.iter().enumerate() {
            let label = if i == 0 { "errors" } else { "" };
            writeln!(f, "{label:<LABEL$}{count:>COLUMN$}  {kind}")?;
        }
        let per = self
            .generator
            .per_operation(self.operations)
            .map_or("-".to_string(), human_duration);
        writeln!(
            f,
            "{:<LABEL$}{per:>COLUMN$}  CPU per {}, busiest thread {:.0} % busy{}",
            "generator",
            one(self.scenario),
            self.generator.busiest * 100.0,
            if self.generator.saturated() {
                " (saturated)"
            } else {
                ""
            }
        )
    }
}

/// Two lines: the names right-aligned above their values.
fn row(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    figures: &[(&str, Duration)],
    measured: bool,
) -> fmt::Result {
    write!(f, "{label:<LABEL$}")?;
    for (name, _) in figures {
        write!(f, "{name:>COLUMN$}")?;
    }
    writeln!(f)?;
    write!(f, "{:<LABEL$}", "")?;
    for (_, value) in figures {
        write!(f, "{:>COLUMN$}", shown(*value, measured))?;
    }
    writeln!(f)
}

/// A latency, or a dash when nothing was measured rather than a misleading "0 ns".
fn shown(value: Duration, measured: bool) -> String {
    if measured {
        human_duration(value)
    } else {
        "-".to_string()
    }
}

/// One operation of a scenario, in the generator line.
fn one(scenario: &str) -> &'static str {
    match scenario {
        "echo" => "request",
        "connect" => "connection",
        "download" => "download",
        "chat" => "delivery",
        _ => "operation",
    }
}

/// The table of a sweep: one row per step, in the order they ran.
///
/// ```text
///      c   rate/s  achieved/s      mean       p50       p99     p99.9    p99.99       max  errors    late    CPU/op
///     50    10.0k       10.0k   41.0 µs   38.2 µs   90.1 µs    250 µs   1.20 ms   2.31 ms       0       0   8.12 µs
/// ```
///
/// `rate/s` is the rate asked for (`closed` for a closed loop); `achieved/s` what the run made
/// of it (chat: messages sent per second); `late` the operations that started late.
pub fn sweep(steps: &[(Load, Report)]) -> String {
    let mut out = String::new();
    for (name, width) in SWEEP_COLUMNS {
        out.push_str(&format!("{name:>width$}"));
    }
    out.push('\n');
    for (load, report) in steps {
        let l = &report.latency;
        let measured = l.count > 0;
        let connections = match &load.scenario {
            Scenario::Chat { senders, .. } => *senders,
            Scenario::Echo { .. } | Scenario::Connect | Scenario::Download { .. } => {
                load.connections
            }
        };
        let cells = [
            connections.to_string(),
            load.mode.rate().map_or("closed".to_string(), compact),
            compact(report.achieved_rate()),
            shown(l.mean, measured),
            shown(l.p50, measured),
            shown(l.p99, measured),
            shown(l.p999, measured),
            shown(l.p9999, measured),
            shown(l.max, measured),
            report.error_count().to_string(),
            report.behind.late.to_string(),
            report
                .generator
                .per_operation(report.operations)
                .map_or("-".to_string(), human_duration),
        ];
        for (cell, (_, width)) in cells.iter().zip(SWEEP_COLUMNS) {
            out.push_str(&format!("{cell:>width$}"));
        }
        out.push('\n');
    }
    out
}

/// A rate in at most 7 characters: `950.0`, `12.5k`, `1.25M`.
fn compact(rate: f64) -> String {
    if rate < 1e3 {
        format!("{rate:.1}")
    } else if rate < 1e6 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{:.2}M", rate / 1e6)
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::distribution::Distribution;
    use crate::bench::report::{Behind, Generator, Latency, RESET, TIMEOUT};

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn sample() -> Report {
        Report {
            scenario: "echo",
            rate: None,
            elapsed: Duration::from_secs(2),
            operations: 1000,
            sent: 0,
            bytes: 4_000_000,
            latency: Latency {
                mean: micros(45),
                stdev: micros(12),
                p50: micros(41),
                p75: micros(48),
                p90: micros(55),
                p99: micros(90),
                p999: Duration::from_micros(1200),
                p9999: Duration::from_millis(3),
                max: Duration::from_millis(4),
                count: 1000,
            },
            distribution: Distribution::default(),
            errors: BTreeMap::from([(RESET, 2), (TIMEOUT, 1)]),
            behind: Behind::default(),
            generator: Generator {
                cpu: Duration::from_millis(10),
                busiest: 0.5,
            },
            delivery_ratio: None,
        }
    }

    #[test]
    fn the_table_lines_up_and_lists_every_error_kind() {
        let table = sample().to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "scenario    echo, closed loop, 2.00 s");
        assert!(lines[1].starts_with("requests") && lines[1].ends_with("500.0/s"));
        // The names sit right above their values, right-aligned in the same columns.
        for label in ["latency", "percentiles"] {
            let names = lines.iter().position(|l| l.starts_with(label)).unwrap();
            assert_eq!(
                lines[names].chars().count(),
                lines[names + 1].chars().count(),
                "{label}"
            );
        }
        assert!(table.contains("      mean      stdev        max\n"));
        assert!(
            table.contains("     p50        p75        p90        p99      p99.9     p99.99\n")
        );
        assert!(
            table.contains("41.0 µs") && table.contains("1.20 ms") && table.contains("3.00 ms")
        );
        assert!(table.contains("\nerrors                2  reset\n"));
        assert!(table.contains("\n                      1  timeout\n"));
        assert!(!table.contains("delivered"));
        assert!(!table.contains("behind"), "a closed loop has no timetable");
        assert!(
            table.ends_with("generator       10.0 µs  CPU per request, busiest thread 50 % busy\n")
        );
    }

    #[test]
    fn an_open_loop_shows_the_rate_asked_for_and_how_far_it_fell_behind() {
        let report = Report {
            rate: Some(1000.0),
            behind: Behind {
                late: 312,
                max_lag: Duration::from_millis(180),
                unstarted: 12,
            },
            ..sample()
        };
        let table = report.to_string();
        assert!(table.starts_with("scenario    echo, open loop at 1000.0/s, 2.00 s\n"));
        assert!(table.contains("500.0/s  of 1000.0/s asked\n"), "{table}");
        assert!(table.contains(
            "\nbehind              312  started late, up to 180 ms behind; 12 never started\n"
        ));
        let on_time = Report {
            behind: Behind::default(),
            ..report
        };
        assert!(on_time.to_string().contains("\nbehind             none\n"));
    }

    #[test]
    fn a_saturated_generator_says_so() {
        let report = Report {
            generator: Generator {
                cpu: Duration::from_millis(10),
                busiest: 0.97,
            },
            ..sample()
        };
        assert!(
            report
                .to_string()
                .contains("busiest thread 97 % busy (saturated)\n")
        );
    }

    #[test]
    fn a_clean_chat_run_shows_its_sends_and_delivery_ratio() {
        let report = Report {
            scenario: "chat",
            rate: Some(50.0),
            sent: 100,
            errors: BTreeMap::new(),
            delivery_ratio: Some(0.995),
            ..sample()
        };
        let table = report.to_string();
        assert!(
            table.contains("\nsent                100        50.0/s  of 50.0/s asked\n"),
            "{table}"
        );
        assert!(
            table.contains("\ndeliveries         1000       500.0/s\n"),
            "{table}"
        );
        assert!(table.contains("delivered       99.50 %"));
        assert!(table.contains("errors             none"));
        assert!(table.contains("CPU per delivery"));
    }

    #[test]
    fn nothing_measured_shows_dashes_not_zeros() {
        let report = Report {
            operations: 0,
            latency: Latency::default(),
            ..sample()
        };
        let table = report.to_string();
        assert!(!table.contains("0 ns"), "{table}");
        assert!(
            table.contains("generator             -  CPU per request"),
            "{table}"
        );
    }

    #[test]
    fn rates_are_compact_in_a_sweep() {
        assert_eq!(compact(950.0), "950.0");
        assert_eq!(compact(12_500.0), "12.5k");
        assert_eq!(compact(1_250_000.0), "1.25M");
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
