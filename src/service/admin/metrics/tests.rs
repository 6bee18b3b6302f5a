//! The `/metrics` body: it names what the issue names, and each sample moves by exactly what was
//! recorded. (Prometheus's own checker, `promtool`, is run on the live endpoint in
//! `tests/admin.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::stats::Stats;

/// Stats with something recorded in every figure, so that no family renders as zero alone.
fn populated() -> Stats {
    let stats = Stats::default();
    for (i, metric) in Metric::ALL.iter().enumerate() {
        stats.add(*metric, i as u64 + 1);
    }
    for (i, service) in ServiceId::ALL.iter().enumerate() {
        for metric in ServiceMetric::ALL {
            stats.service_add(*service, metric, 10 * (i as u64 + 1));
        }
    }
    stats.observe_pass(Duration::from_micros(7));
    stats.observe_pass(Duration::from_millis(30));
    stats.observe_events(0);
    stats.observe_events(3);
    for service in CONNECTED {
        stats.observe_lifetime(*service, Duration::from_millis(1500));
    }
    stats
}

fn body(stats: &Stats, process: Process) -> String {
    let mut out = String::new();
    render(stats.snapshot(), process, &mut out).expect("a String takes any text");
    out
}

/// Each sample line as `name{labels}` and its value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            (series.to_owned(), value)
        })
        .collect()
}

#[test]
fn the_body_has_the_families_and_labels_the_issue_names() {
    let body = body(&populated(), Process::read());
    let samples = samples(&body);
    for series in [
        r#"readyloop_connections_closed_total{reason="idle"}"#,
        r#"readyloop_connections_open{service="echo"}"#,
        r#"readyloop_connections_accepted_total{service="files"}"#,
        r#"readyloop_requests_total{service="chat"}"#,
        r#"readyloop_received_bytes_total{service="admin"}"#,
        r#"readyloop_sent_bytes_total{service="echo"}"#,
        r#"readyloop_download_body_bytes_total{method="sendfile"}"#,
        r#"readyloop_chat_datagrams_dropped_total{reason="queue"}"#,
        r#"readyloop_syscalls_total{call="epoll_wait"}"#,
        r#"readyloop_syscalls_total{call="recvfrom"}"#,
        r#"readyloop_loop_pass_seconds_bucket{le="1e-06"}"#,
        r#"readyloop_loop_pass_seconds_bucket{le="+Inf"}"#,
        "readyloop_loop_pass_seconds_sum",
        "readyloop_loop_pass_seconds_count",
        r#"readyloop_events_per_poll_bucket{le="1024"}"#,
        r#"readyloop_connection_lifetime_seconds_bucket{service="echo",le="3600"}"#,
        r#"readyloop_connection_lifetime_seconds_count{service="admin"}"#,
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(
            samples.contains_key(series),
            "{series} missing from\n{body}"
        );
    }
    assert!(body.contains("# TYPE readyloop_connection_lifetime_seconds histogram\n"));
    assert!(body.contains("# TYPE readyloop_connections_open gauge\n"));
    assert!(body.contains("# TYPE process_cpu_seconds_total counter\n"));
    assert!(
        samples
            .keys()
            .all(|s| s.starts_with("readyloop_") || s.starts_with("process_"))
    );
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

#[test]
fn chat_has_no_connection_figures() {
    let body = body(&populated(), Process::default());
    assert!(!body.contains(r#"readyloop_connections_open{service="chat"}"#));
    assert!(!body.contains(r#"readyloop_connection_lifetime_seconds_count{service="chat"}"#));
}

#[test]
fn absent_process_figures_are_left_out() {
    let body = body(&populated(), Process::default());
    assert!(!body.contains("process_"), "{body}");
    let partial = Process {
        open_fds: Some(7),
        ..Process::default()
    };
    let body = self::body(&Stats::default(), partial);
    assert!(body.contains("\nprocess_open_fds 7\n"), "{body}");
    assert!(!body.contains("process_max_fds"), "{body}");
}

#[test]
fn every_metric_is_exposed_exactly_once() {
    let mut exposed: Vec<Metric> = FAMILIES
        .iter()
        .flat_map(|family| match family.members {
            One(metric) => vec![metric],
            By(_, members) => members.iter().map(|(metric, _)| *metric).collect(),
        })
        .collect();
    exposed.extend(CloseReason::ALL.map(CloseReason::metric));
    exposed.extend(Call::ALL.map(Call::metric));
    // Sums over services: exposed only through their per-service figures.
    exposed.extend([
        Metric::Accepted,
        Metric::Open,
        Metric::BytesIn,
        Metric::BytesOut,
    ]);
    for metric in Metric::ALL {
        let times = exposed.iter().filter(|m| *m == metric).count();
        assert_eq!(times, 1, "{metric:?} is exposed {times} times");
    }
    for metric in ServiceMetric::ALL {
        let times = SERVICE_FAMILIES
            .iter()
            .filter(|f| f.metric == metric)
            .count();
        assert_eq!(times, 1, "{metric:?} is exposed {times} times");
    }
}

/// Adds `by` to every bucket of `family` (with `labels`, if any, before `le`) whose bound is at
/// least `value`: the buckets are cumulative. Then to its `_count`, and `value` to its `_sum`.
fn expect_observation(
    expected: &mut BTreeMap<String, f64>,
    family: &str,
    labels: &str,
    value: f64,
) {
    let bucket = format!("{family}_bucket{{{labels}le=\"");
    let mut moved = 0;
    for (series, count) in expected.iter_mut() {
        if let Some(le) = series.strip_prefix(&bucket) {
            let bound: f64 = le.trim_end_matches("\"}").parse().expect("a bound");
            if value <= bound {
                *count += 1.0;
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "no bucket of {family} {labels}");
    let plain = labels.trim_end_matches(',');
    let labels = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    *expected
        .get_mut(&format!("{family}_count{labels}"))
        .unwrap() += 1.0;
    *expected.get_mut(&format!("{family}_sum{labels}")).unwrap() += value;
}

#[test]
fn samples_move_by_exactly_what_was_recorded() {
    let stats = populated();
    let without_process = |stats: &Stats| samples(&body(stats, Process::default()));
    let mut expected = without_process(&stats);

    stats.service_add(ServiceId::Echo, ServiceMetric::Requests, 100);
    stats.service_add(ServiceId::Echo, ServiceMetric::BytesIn, 6400);
    stats.service_add(ServiceId::Echo, ServiceMetric::BytesOut, 6400);
    stats.service_add(ServiceId::Files, ServiceMetric::Accepted, 1);
    stats.service_sub(ServiceId::Admin, ServiceMetric::Open, 1);
    stats.service_add(ServiceId::Chat, ServiceMetric::Requests, 7);
    stats.count_close(CloseReason::Idle);
    stats.add(Metric::BodyBytesSendfile, 1 << 20);
    stats.add(Metric::ChatDroppedQueue, 2);
    stats.add(Metric::ChatMembers, 1);
    stats.add_calls(Call::ALL.map(|call| if call == Call::Sendto { 3 } else { 0 }));
    stats.observe_pass(Duration::from_micros(20));
    stats.observe_events(5);
    stats.observe_lifetime(ServiceId::Files, Duration::from_secs(2));

    for (series, by) in [
        (r#"readyloop_requests_total{service="echo"}"#, 100.0),
        (r#"readyloop_received_bytes_total{service="echo"}"#, 6400.0),
        (r#"readyloop_sent_bytes_total{service="echo"}"#, 6400.0),
        (
            r#"readyloop_connections_accepted_total{service="files"}"#,
            1.0,
        ),
        (r#"readyloop_connections_open{service="admin"}"#, -1.0),
        (r#"readyloop_requests_total{service="chat"}"#, 7.0),
        (r#"readyloop_connections_closed_total{reason="idle"}"#, 1.0),
        (
            r#"readyloop_download_body_bytes_total{method="sendfile"}"#,
            1048576.0,
        ),
        (
            r#"readyloop_chat_datagrams_dropped_total{reason="queue"}"#,
            2.0,
        ),
        ("readyloop_chat_members", 1.0),
        (r#"readyloop_syscalls_total{call="sendto"}"#, 3.0),
    ] {
        *expected.get_mut(series).expect(series) += by;
    }
    expect_observation(&mut expected, "readyloop_loop_pass_seconds", "", 0.00002);
    expect_observation(&mut expected, "readyloop_events_per_poll", "", 5.0);
    let files = r#"service="files","#;
    expect_observation(
        &mut expected,
        "readyloop_connection_lifetime_seconds",
        files,
        2.0,
    );

    let after = without_process(&stats);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (series, value) in &after {
        let wanted = expected[series];
        // Sums of seconds are added in floating point here and converted from integer
        // nanoseconds there: equal to the last few bits.
        let close = (value - wanted).abs() <= 1e-12 * wanted.abs().max(1.0);
        assert!(close, "{series} is {value}, expected {wanted}");
    }
}
