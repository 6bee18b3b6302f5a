//! The 1-second history (when samples are taken, what the ring keeps, what the rates say) and
//! the `/stats.json` document, parsed back.

use serde_json::{Value, json};

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// The wall-clock time the tests' histories start at, in seconds since the Unix epoch.
const UNIX_START: u64 = 1_764_650_000;

fn started(stats: &Stats) -> (History, Instant) {
    let now = Instant::now();
    let mut history = History::default();
    history.start(now, UNIX_EPOCH + Duration::from_secs(UNIX_START), stats);
    (history, now)
}

fn render(phase: Phase, stats: &Stats, history: &History) -> Vec<u8> {
    let mut out = Vec::new();
    let uptime = Duration::from_millis(12_500);
    render_stats_json(uptime, phase, &stats.snapshot(), history, &mut out);
    out
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("the body is JSON")
}

/// An object's keys, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"));
    object.keys().map(String::as_str).collect()
}

fn sorted(mut names: Vec<&str>) -> Vec<&str> {
    names.sort_unstable();
    names
}

// ---- when samples are taken --------------------------------------------------------------------

#[test]
fn nothing_is_sampled_before_start_or_before_the_second_is_up() {
    let stats = Stats::default();
    let mut idle = History::default();
    assert_eq!(idle.deadline(), None);
    idle.sample_if_due(Instant::now(), &stats);
    assert!(idle.samples.is_empty());

    let (mut history, start) = started(&stats);
    assert_eq!(history.deadline(), Some(start + SECOND));
    history.sample_if_due(start + SECOND / 2, &stats);
    assert!(history.samples.is_empty());
    history.sample_if_due(start + SECOND, &stats);
    assert_eq!(history.samples.len(), 1);
    assert_eq!(history.deadline(), Some(start + 2 * SECOND));
}

#[test]
fn the_ring_keeps_the_last_300_seconds_oldest_first_without_growing() {
    let stats = Stats::default();
    let (mut history, start) = started(&stats);
    let capacity = history.samples.capacity();
    for second in 1..=SAMPLES as u32 + 5 {
        history.sample_if_due(start + second * SECOND, &stats);
    }
    assert_eq!(history.samples.len(), SAMPLES);
    assert_eq!(history.samples.capacity(), capacity, "allocated once");
    let times: Vec<u64> = history.samples.iter().map(|s| s.t).collect();
    let expected: Vec<u64> = (6..=SAMPLES as u64 + 5).map(|s| UNIX_START + s).collect();
    assert_eq!(times, expected, "the first five seconds made room");
}

#[test]
fn a_late_pass_stretches_the_interval_and_does_not_catch_up() {
    let stats = Stats::default();
    let (mut history, start) = started(&stats);
    stats.service_add(ServiceId::Echo, ServiceMetric::Requests, 100);
    history.sample_if_due(start + 4 * SECOND, &stats);
    assert_eq!(
        history.samples.len(),
        1,
        "one sample for the late pass, not four"
    );
    assert_eq!(history.samples[0].rates.echo_requests, 25.0, "100 over 4 s");
    assert_eq!(history.deadline(), Some(start + 5 * SECOND));
}

// ---- what a sample says ------------------------------------------------------------------------

#[test]
fn rates_are_each_counters_growth_per_second_and_gauges_are_levels() {
    let stats = Stats::default();
    let (mut history, start) = started(&stats);
    let add = |service, metric, n| stats.service_add(service, metric, n);
    add(ServiceId::Echo, ServiceMetric::Requests, 100);
    add(ServiceId::Echo, ServiceMetric::BytesIn, 6400);
    add(ServiceId::Echo, ServiceMetric::BytesOut, 6400);
    add(ServiceId::Echo, ServiceMetric::Open, 2);
    add(ServiceId::Files, ServiceMetric::Requests, 3);
    add(ServiceId::Files, ServiceMetric::BytesOut, 1 << 20);
    add(ServiceId::Chat, ServiceMetric::Requests, 7);
    add(ServiceId::Chat, ServiceMetric::BytesIn, 300);
    add(ServiceId::Admin, ServiceMetric::Requests, 1);
    add(ServiceId::Admin, ServiceMetric::Open, 1);
    stats.add(Metric::ChatMembers, 2);
    history.sample_if_due(start + SECOND, &stats);
    add(ServiceId::Echo, ServiceMetric::Requests, 1);
    history.sample_if_due(start + 2 * SECOND, &stats);

    let (first, second) = (history.samples[0], history.samples[1]);
    let expected = Rates {
        echo_requests: 100.0,
        files_requests: 3.0,
        chat_requests: 7.0,
        admin_requests: 1.0,
        bytes_in: 6700.0,
        bytes_out: 6400.0 + 1048576.0,
    };
    assert_eq!(first.rates, expected);
    let occupancy = Occupancy {
        open_echo: 2,
        open_files: 0,
        open_admin: 1,
        chat_members: 2,
    };
    assert_eq!(first.occupancy, occupancy);
    let only_one_echo = Rates {
        echo_requests: 1.0,
        ..Rates::default()
    };
    assert_eq!(second.rates, only_one_echo);
    assert_eq!(second.occupancy, occupancy, "still open: levels, not rates");
}

#[test]
fn loop_figures_come_from_what_the_histograms_gained_in_that_second() {
    let stats = Stats::default();
    // Recorded before the history started: part of no second.
    stats.observe_events(1000);
    stats.observe_pass(Duration::from_millis(500));
    let (mut history, start) = started(&stats);
    stats.observe_events(1);
    stats.observe_events(2);
    (0..99).for_each(|_| stats.observe_pass(Duration::from_micros(8)));
    stats.observe_pass(Duration::from_micros(40));
    history.sample_if_due(start + SECOND, &stats);
    history.sample_if_due(start + 2 * SECOND, &stats);

    let figures = history.samples[0].figures;
    assert_eq!(figures.events_per_poll, 1.5);
    // 99 of 100 passes lie in (5 µs, 10 µs]: the p99 is that bucket's upper bound.
    let p99 = figures.pass_p99_seconds;
    assert!((p99 - 0.00001).abs() < 1e-15, "p99 {p99}");
    let idle = history.samples[1].figures;
    assert_eq!(idle, LoopFigures::default(), "no pass in that second");
}

// ---- /stats.json -------------------------------------------------------------------------------

#[test]
fn stats_json_has_the_documented_shape() {
    let stats = Stats::default();
    let (mut history, start) = started(&stats);
    stats.add(Metric::Accepted, 10);
    stats.service_add(ServiceId::Echo, ServiceMetric::Requests, 100);
    stats.service_add(ServiceId::Echo, ServiceMetric::Open, 1);
    stats.add(Metric::ChatMembers, 2);
    stats.observe_events(3);
    history.sample_if_due(start + SECOND, &stats);
    let doc = parse(&render(Phase::Running, &stats, &history));

    let server = json!({"version": env!("CARGO_PKG_VERSION"), "uptime_seconds": 12.5,
                        "phase": "running"});
    assert_eq!(doc["server"], server);
    assert_eq!(
        keys(&doc),
        ["history", "loop", "rates", "server", "services", "totals"]
    );

    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(keys(&doc["totals"]), sorted(names));
    assert_eq!(doc["totals"]["accepted"], 10);

    let services = &doc["services"];
    assert_eq!(keys(services), ["admin", "chat", "echo", "files"]);
    for service in ["echo", "files", "admin"] {
        let figures = &services[service];
        assert_eq!(keys(figures), ["bytes_in", "bytes_out", "open", "requests"]);
    }
    assert_eq!(
        keys(&services["chat"]),
        ["bytes_in", "bytes_out", "members", "requests"]
    );
    assert_eq!(services["echo"]["requests"], 100);
    assert_eq!(services["echo"]["open"], 1);
    assert_eq!(services["chat"]["members"], 2);

    let rate_names = [
        "echo_requests",
        "files_requests",
        "chat_requests",
        "admin_requests",
        "bytes_in",
        "bytes_out",
    ];
    assert_eq!(keys(&doc["rates"]), sorted(rate_names.to_vec()));
    assert_eq!(doc["rates"]["echo_requests"], 100.0);
    assert_eq!(keys(&doc["loop"]), ["events_per_poll", "pass_p99_seconds"]);
    assert_eq!(doc["loop"]["events_per_poll"], 3.0);

    assert_eq!(doc["history"]["interval_seconds"], 1);
    let samples = doc["history"]["samples"].as_array().expect("an array");
    assert_eq!(samples.len(), 1);
    let mut sample_names = vec!["t", "open_echo", "open_files", "open_admin", "chat_members"];
    sample_names.extend(rate_names);
    sample_names.extend(["events_per_poll", "pass_p99_seconds"]);
    assert_eq!(keys(&samples[0]), sorted(sample_names));
    assert_eq!(samples[0]["t"], UNIX_START + 1);
    assert_eq!(samples[0]["echo_requests"], 100.0);
    assert_eq!(samples[0]["open_echo"], 1);
}

#[test]
fn totals_are_listed_in_the_summary_lines_order() {
    let stats = Stats::default();
    let body = render(Phase::Running, &stats, &History::default());
    let text = String::from_utf8(body).expect("UTF-8");
    let (_, totals) = text.split_once(r#""totals":{"#).expect("a totals object");
    let (totals, _) = totals.split_once('}').expect("the end of totals");
    let order: Vec<&str> = totals
        .split(',')
        .map(|pair| pair.split(':').next().unwrap_or("").trim_matches('"'))
        .collect();
    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(order, names);
}

#[test]
fn before_the_first_sample_rates_are_zero_and_the_history_empty() {
    let stats = Stats::default();
    let (history, _) = started(&stats);
    let doc = parse(&render(Phase::Draining, &stats, &history));
    assert_eq!(doc["server"]["phase"], "draining");
    assert_eq!(doc["rates"]["echo_requests"], 0.0);
    assert_eq!(doc["loop"]["pass_p99_seconds"], 0.0);
    assert_eq!(doc["history"]["samples"], json!([]));
}
