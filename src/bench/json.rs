//! `--json`: each run as one JSON document, the run's parameters beside its results, so that a
//! file of results says what produced it.
//!
//! ```text
//! {"parameters":{"scenario":"echo","target":"127.0.0.1:7788","connections":50,...,
//!                "mode":"open","rate":10000.0,...,"readyloop_version":"0.1.0"},
//!  "results":{"elapsed_s":10.0,"operations":99990,...,"latency_ns":{...},"errors":{},...},
//!  "error":null}
//! ```
//!
//! The shape never changes: a key that does not apply to a scenario is `null` (a chat run has no
//! `connections`, a closed loop no `rate`), and a failure is the same document with `error` set
//! and `results` null, or present when the run measured something before it was judged a failure
//! (the chat relay's rate limit). A sweep prints an array of these documents, one per step.
//! Durations are integer nanoseconds (`_ns`) or seconds as a float (`_s`). The documents are
//! plain structs deriving `Serialize`, as the admin service's are: the shape is the structs'.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::Report;
use super::{Load, Mode, Scenario};

/// One run as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// What was asked; `null` only when the flags themselves were refused.
    parameters: Option<Parameters<'a>>,
    /// What was measured; `null` when the run failed before measuring.
    results: Option<Results<'a>>,
    /// Why the run failed, as the table's stderr line says it; `null` for a success.
    error: Option<String>,
}

impl<'a> Document<'a> {
    /// The document of a run of `load`: its report, or the error that stopped it, or both.
    pub fn new(
        load: Option<&'a Load>,
        report: Option<&'a Report>,
        error: Option<String>,
    ) -> Document<'a> {
        Document {
            parameters: load.map(Parameters::new),
            results: report.map(Results::new),
            error,
        }
    }
}

/// A run's parameters: every flag that shapes the load, and the generator's version.
#[derive(Debug, Serialize)]
struct Parameters<'a> {
    scenario: &'static str,
    target: String,
    /// `-c`; `null` for chat, whose sockets are `senders` and `members`.
    connections: Option<usize>,
    senders: Option<usize>,
    members: Option<usize>,
    /// The relays the members join instead of `target` (`--members-at`): chat only.
    members_at: Option<Vec<String>>,
    /// Bytes per message: echo and chat.
    size: Option<usize>,
    /// Echo only.
    pipeline: Option<usize>,
    /// The file a download run fetches.
    name: Option<&'a str>,
    /// `closed` or `open`.
    mode: &'static str,
    /// Operations per second asked for; `null` for a closed loop.
    rate: Option<f64>,
    max_inflight: Option<usize>,
    duration_s: f64,
    warmup_s: f64,
    requests: Option<u64>,
    threads: usize,
    readyloop_version: &'static str,
}

impl<'a> Parameters<'a> {
    fn new(load: &'a Load) -> Parameters<'a> {
        let (mut connections, mut senders, mut members) = (Some(load.connections), None, None);
        let mut members_at = None;
        let (mut size, mut pipeline, mut name) = (None, None, None);
        match &load.scenario {
            Scenario::Echo {
                size: bytes,
                pipeline: depth,
            } => (size, pipeline) = (Some(*bytes), Some(*depth)),
            Scenario::Connect => {}
            Scenario::Download { name: file } => name = Some(file.as_str()),
            Scenario::Chat {
                senders: s,
                members: m,
                size: bytes,
                members_at: relays,
            } => {
                (connections, senders, members, size) = (None, Some(*s), Some(*m), Some(*bytes));
                members_at = Some(relays.iter().map(ToString::to_string).collect());
            }
        }
        let max_inflight = match load.mode {
            Mode::Closed => None,
            Mode::Open { max_inflight, .. } => Some(max_inflight),
        };
        Parameters {
            scenario: load.scenario.name(),
            target: load.target.to_string(),
            connections,
            senders,
            members,
            members_at,
            size,
            pipeline,
            name,
            mode: load.mode.name(),
            rate: load.mode.rate(),
            max_inflight,
            duration_s: load.duration.as_secs_f64(),
            warmup_s: load.warmup.as_secs_f64(),
            requests: load.requests,
            threads: load.threads,
            readyloop_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Results<'a> {
    elapsed_s: f64,
    operations: u64,
    per_second: f64,
    /// What the run made of `rate`: operations per second, or chat messages sent per second.
    achieved_rate: f64,
    /// Chat messages sent; 0 for TCP scenarios.
    sent: u64,
    bytes: u64,
    megabytes_per_second: f64,
    latency_ns: LatencyNs,
    errors: &'a BTreeMap<&'static str, u64>,
    behind: BehindJson,
    generator: GeneratorJson,
    /// Chat only.
    delivery_ratio: Option<f64>,
}

impl<'a> Results<'a> {
    fn new(report: &'a Report) -> Results<'a> {
        let l = &report.latency;
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Results {
            elapsed_s: report.elapsed.as_secs_f64(),
            operations: report.operations,
            per_second: report.per_second(),
            achieved_rate: report.achieved_rate(),
            sent: report.sent,
            bytes: report.bytes,
            megabytes_per_second: report.megabytes_per_second(),
            latency_ns: LatencyNs {
                count: l.count,
                mean: ns(l.mean),
                stdev: ns(l.stdev),
                p50: ns(l.p50),
                p75: ns(l.p75),
                p90: ns(l.p90),
                p99: ns(l.p99),
                p999: ns(l.p999),
                p9999: ns(l.p9999),
                max: ns(l.max),
            },
            errors: &report.errors,
            behind: BehindJson {
                late: report.behind.late,
                max_lag_ns: ns(report.behind.max_lag),
                unstarted: report.behind.unstarted,
            },
            generator: GeneratorJson {
                cpu_ns: ns(report.generator.cpu),
                cpu_ns_per_operation: report.generator.per_operation(report.operations).map(ns),
                busiest_thread: report.generator.busiest,
                saturated: report.generator.saturated(),
            },
            delivery_ratio: report.delivery_ratio,
        }
    }
}

/// The latency figures, in nanoseconds.
#[derive(Debug, Serialize)]
struct LatencyNs {
    count: u64,
    mean: u64,
    stdev: u64,
    p50: u64,
    p75: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    p9999: u64,
    max: u64,
}

/// [`Behind`](super::report::Behind), with its delay in nanoseconds.
#[derive(Debug, Serialize)]
struct BehindJson {
    late: u64,
    max_lag_ns: u64,
    unstarted: u64,
}

/// [`Generator`](super::report::Generator), with what the table derives from it.
#[derive(Debug, Serialize)]
struct GeneratorJson {
    cpu_ns: u64,
    /// `null` without operations.
    cpu_ns_per_operation: Option<u64>,
    /// The busiest thread's CPU time over the measured wall time.
    busiest_thread: f64,
    saturated: bool,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::bench::cli::loopback;
    use crate::bench::report::Tally;

    fn echo_load() -> Load {
        Load {
            scenario: Scenario::Echo {
                size: 64,
                pipeline: 1,
            },
            target: loopback(7788),
            connections: 4,
            threads: 1,
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            requests: None,
            mode: Mode::Open {
                rate: 1000.0,
                max_inflight: 8,
            },
            pin: false,
            progress: false,
        }
    }

    fn parse(document: &Document<'_>) -> Value {
        serde_json::to_value(document).expect("a document serialises")
    }

    #[test]
    fn the_parameters_say_what_was_run() {
        let load = echo_load();
        let doc = parse(&Document::new(Some(&load), None, None));
        assert_eq!(
            doc["parameters"],
            json!({
                "scenario": "echo", "target": "127.0.0.1:7788", "connections": 4,
                "senders": null, "members": null, "members_at": null, "size": 64, "pipeline": 1,
                "name": null, "mode": "open", "rate": 1000.0, "max_inflight": 8, "duration_s": 2.0,
                "warmup_s": 0.5, "requests": null, "threads": 1,
                "readyloop_version": env!("CARGO_PKG_VERSION"),
            })
        );
    }

    #[test]
    fn chat_parameters_name_senders_and_members_instead_of_connections() {
        let load = Load {
            scenario: Scenario::Chat {
                senders: 2,
                members: 9,
                size: 64,
                members_at: vec![loopback(8081)],
            },
            mode: Mode::Closed,
            ..echo_load()
        };
        let doc = parse(&Document::new(Some(&load), None, None));
        let p = &doc["parameters"];
        assert_eq!(
            (p["connections"].clone(), p["senders"].clone()),
            (Value::Null, json!(2))
        );
        assert_eq!(
            (p["mode"].clone(), p["rate"].clone()),
            (json!("closed"), Value::Null)
        );
        assert_eq!(p["max_inflight"], Value::Null);
        assert_eq!(p["members_at"], json!(["127.0.0.1:8081"]));
    }

    #[test]
    fn the_results_hold_every_figure() {
        let mut tally = Tally::new();
        tally.complete(Duration::from_micros(40), 64, std::time::Instant::now());
        tally.error("reset");
        tally.cpu = Duration::from_micros(10);
        let report = Report::new("echo", Some(1.0), Duration::from_secs(1), &tally, None);
        let doc = parse(&Document::new(None, Some(&report), None));
        let r = &doc["results"];
        let keys: Vec<&str> = r
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "achieved_rate",
                "behind",
                "bytes",
                "delivery_ratio",
                "elapsed_s",
                "errors",
                "generator",
                "latency_ns",
                "megabytes_per_second",
                "operations",
                "per_second",
                "sent"
            ]
        );
        assert_eq!(r["errors"], json!({"reset": 1}));
        assert_eq!(r["latency_ns"]["count"], json!(1));
        assert_eq!(r["generator"]["cpu_ns_per_operation"], json!(10_000));
        assert_eq!(
            r["behind"],
            json!({"late": 0, "max_lag_ns": 0, "unstarted": 0})
        );
        assert_eq!(doc["error"], Value::Null);
    }

    #[test]
    fn a_failure_is_the_same_document_with_its_error() {
        let doc = parse(&Document::new(None, None, Some("cannot reach it".into())));
        assert_eq!(
            doc,
            json!({"parameters": null, "results": null, "error": "cannot reach it"})
        );
    }
}
