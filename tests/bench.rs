//! `readyloop bench`, the load generator, against real servers: a short run of each scenario
//! against an in-process readyloop, error counting against fake servers that misbehave on
//! purpose, the unreachable case, `--requests`, the open loop against a server that stalls,
//! and the command line's output (table, sweep table, JSON, SVG, `.hgrm`) and exit status.
//!
//! Every run here lasts well under a second ([`SHORT`]) but the stall's, which must contain one
//! (1.2 s, the two loops side by side), and every wait is bounded, so the whole file takes a
//! few seconds. The fake servers are plain std threads: each accepts, does one wrong thing per
//! connection, and stops on drop.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{AT_ONCE, TestServer, WAIT, join_within};
use readyloop::bench::report::{MISMATCH, NOT_FOUND, RESET, SHORT_READ};
use readyloop::bench::{BenchError, Load, Mode, Report, Scenario, run};
use serde_json::{Value, json};

/// Length of every run: long enough for thousands of operations on loopback.
const SHORT: Duration = Duration::from_millis(400);

/// Held by the tests whose assertions are about time (a rate kept, a stall seen, every chat
/// datagram collected within the drain), so that two of them never compete for the CPU: on a
/// machine of two cores, the stall test's busy closed loop could starve the chat test's relay.
static TIMING: Mutex<()> = Mutex::new(());

/// Waits for the other timing-sensitive tests; a test that failed holding it passes it on.
fn timing_sensitive() -> MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A load of `scenario` against `target` for [`SHORT`], with `connections` clients on one thread.
fn load(scenario: Scenario, target: SocketAddr, connections: usize) -> Load {
    Load {
        scenario,
        target,
        connections,
        threads: 1,
        duration: SHORT,
        warmup: Duration::ZERO,
        requests: None,
        mode: Mode::Closed,
        pin: false,
        progress: false,
    }
}

/// An open loop at `rate` operations per second, each client keeping at most `max_inflight`.
fn open(rate: f64, max_inflight: usize) -> Mode {
    Mode::Open { rate, max_inflight }
}

fn echo(size: usize, pipeline: usize) -> Scenario {
    Scenario::Echo { size, pipeline }
}

/// Runs `load`, which must succeed, and checks what every report must satisfy.
#[track_caller]
fn run_ok(load: &Load) -> Report {
    let started = Instant::now();
    let report = run(load).unwrap_or_else(|e| panic!("{} run failed: {e}", load.scenario.name()));
    // Bounded: the warm-up and the duration, plus the drain (500 ms at most) and thread start-up.
    let took = started.elapsed();
    assert!(
        took < load.warmup + load.duration + AT_ONCE,
        "the run took {took:?}"
    );
    assert_eq!(report.scenario, load.scenario.name());
    assert!(report.elapsed <= load.duration, "{report:?}");
    assert_eq!(report.latency.count, report.operations, "{report:?}");
    report
}

#[track_caller]
fn assert_clean(report: &Report) {
    assert!(report.operations > 0, "no operations:\n{report}");
    assert!(report.errors.is_empty(), "errors:\n{report}");
    assert!(report.latency.p50 > Duration::ZERO && report.latency.max >= report.latency.p999);
}

// ---- each scenario against readyloop ----

#[test]
fn echo_round_trips_complete_without_errors() {
    let server = TestServer::start(|_| {});
    let report = run_ok(&Load {
        threads: 2,
        ..load(echo(100, 3), server.echo, 4)
    });
    assert_clean(&report);
    assert_eq!(report.bytes, report.operations * 100);
    assert!(report.per_second() > 0.0);
}

#[test]
fn connection_churn_completes_whole_connections_without_errors() {
    let server = TestServer::start(|_| {});
    let report = run_ok(&load(Scenario::Connect, server.echo, 4));
    assert_clean(&report);
    assert!(
        server.get(readyloop::Metric::Accepted) >= report.operations,
        "every operation is a new connection"
    );
}

#[test]
fn downloads_are_verified_against_their_size() {
    let root = tempfile::tempdir().unwrap();
    let size = 256 * 1024;
    std::fs::write(root.path().join("data.bin"), common::payload(1, size)).unwrap();
    let dir = root.path().to_path_buf();
    let server = TestServer::start(move |config| config.root = dir);
    let name = "data.bin".to_string();
    let report = run_ok(&load(Scenario::Download { name }, server.files, 2));
    assert_clean(&report);
    // Bytes of downloads cut off by the end of the run count too, but not as downloads.
    assert!(
        report.bytes >= report.operations * size as u64,
        "{report:?}"
    );
    assert!(report.megabytes_per_second() > 0.0);
}

#[test]
fn chat_messages_reach_every_socket_in_the_room() {
    let _timing = timing_sensitive();
    let server = TestServer::start(|config| config.chat_rate = 0);
    let scenario = Scenario::Chat {
        senders: 2,
        members: 3,
        size: 64,
        members_at: Vec::new(),
    };
    let report = run_ok(&Load {
        threads: 2,
        ..load(scenario, server.chat, 0)
    });
    assert_clean(&report);
    let ratio = report
        .delivery_ratio
        .expect("chat reports a delivery ratio");
    // Loopback loses nothing at this rate; leave room for a scheduler hiccup all the same.
    assert!((0.95..=1.0).contains(&ratio), "delivery ratio {ratio}");
}

#[test]
fn requests_end_the_run_at_exactly_that_count() {
    let server = TestServer::start(|_| {});
    let report = run_ok(&Load {
        duration: Duration::from_secs(10),
        requests: Some(300),
        ..load(echo(16, 2), server.echo, 4)
    });
    assert_eq!(report.operations, 300);
    assert!(report.errors.is_empty(), "{report}");
    // The run ends with its last request, not at the duration.
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
}

// ---- errors are counted, by kind ----

#[test]
fn a_server_that_resets_every_connection_counts_resets() {
    let server = FakeServer::start(|stream| {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream); // SO_LINGER 0: RST instead of FIN
    });
    for scenario in [echo(64, 1), Scenario::Connect] {
        let report = run_ok(&load(scenario, server.addr, 2));
        assert_eq!(report.operations, 0, "{report}");
        assert!(report.errors.get(RESET).is_some_and(|n| *n > 0), "{report}");
        assert_eq!(report.errors.len(), 1, "only resets:\n{report}");
    }
}

#[test]
fn a_download_shorter_than_its_header_is_a_short_read() {
    let server = FakeServer::start(|stream| {
        read_request_line(&stream);
        let mut stream = stream;
        let _ = stream.write_all(b"OK 100\n0123456789");
    });
    let name = "anything".to_string();
    let report = run_ok(&load(Scenario::Download { name }, server.addr, 2));
    assert_eq!(report.operations, 0, "{report}");
    assert!(
        report.errors.get(SHORT_READ).is_some_and(|n| *n > 0),
        "{report}"
    );
    assert_eq!(
        report.bytes % 10,
        0,
        "the 10 bytes of each reply are counted"
    );
}

#[test]
fn a_missing_file_is_counted_as_not_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let server = TestServer::start(move |config| config.root = dir);
    let name = "missing.bin".to_string();
    let report = run_ok(&load(Scenario::Download { name }, server.files, 1));
    assert_eq!(report.operations, 0);
    assert!(
        report.errors.get(NOT_FOUND).is_some_and(|n| *n > 0),
        "{report}"
    );
}

#[test]
fn an_echo_that_changes_bytes_is_a_mismatch() {
    let server = FakeServer::start(|mut stream| {
        let mut buf = [0; 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            buf[..n].make_ascii_uppercase();
            if stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let report = run_ok(&load(echo(64, 1), server.addr, 2));
    assert_eq!(report.operations, 0, "{report}");
    assert!(
        report.errors.get(MISMATCH).is_some_and(|n| *n > 0),
        "{report}"
    );
}

#[test]
fn an_absent_server_is_unreachable_and_says_why() {
    let absent = free_port();
    let scenarios = [
        echo(64, 1),
        Scenario::Connect,
        Scenario::Download { name: "f".into() },
        Scenario::Chat {
            senders: 1,
            members: 1,
            size: 64,
            members_at: Vec::new(),
        },
    ];
    for scenario in scenarios {
        let name = scenario.name();
        let started = Instant::now();
        let load = Load {
            duration: Duration::from_secs(10),
            ..load(scenario, absent, 2)
        };
        match run(&load) {
            Err(e @ BenchError::Unreachable { .. }) => assert_eq!(
                e.to_string(),
                format!("cannot reach {absent}: Connection refused"),
                "{name}"
            ),
            other => panic!("{name}: expected Unreachable, got {other:?}"),
        }
        // Every client was refused at once: the run stops without waiting for its duration.
        let took = started.elapsed();
        assert!(took < AT_ONCE, "{name} gave up after {took:?}");
    }
}

#[test]
fn an_invalid_load_is_refused_before_anything_runs() {
    let result = run(&Load {
        threads: 3,
        ..load(Scenario::Connect, free_port(), 2)
    });
    assert!(matches!(result, Err(BenchError::Invalid(m)) if m.contains("--threads")));
}

// ---- the open loop ----

/// The server stops reading for 200 ms of every second. An open loop keeps sending on its
/// timetable through the stall, and every message due during it waits, up to the whole 200 ms:
/// a sixth of the run's messages, so p99 shows the stall. A closed loop's two connections each
/// wait once, two messages in thousands, and its p99 stays small: coordinated omission.
#[test]
fn a_stall_shows_in_the_open_loops_p99_and_hides_from_the_closed_loops() {
    let _timing = timing_sensitive();
    let stalling = FakeServer::start_stalling();
    // 1.2 s holds the stall at 0.8 s to 1 s of the server's clock, whatever the start-up took.
    let stall_run = |mode| Load {
        duration: Duration::from_millis(1200),
        mode,
        ..load(echo(64, 1), stalling.addr, 2)
    };
    // The two loops side by side: the stall is the server's, the same for both.
    let (open_loop, closed_loop) = thread::scope(|s| {
        let open_loop = s.spawn(|| run_ok(&stall_run(open(1000.0, 64))));
        let closed_loop = s.spawn(|| run_ok(&stall_run(Mode::Closed)));
        (
            open_loop.join().expect("the open loop"),
            closed_loop.join().expect("the closed loop"),
        )
    });
    assert!(
        open_loop.latency.p99 >= Duration::from_millis(150),
        "open loop:\n{open_loop}"
    );
    assert!(
        closed_loop.latency.p99 < Duration::from_millis(50),
        "closed loop:\n{closed_loop}"
    );
    assert!(
        closed_loop.latency.max >= Duration::from_millis(150),
        "the closed loop did meet the stall, once per connection:\n{closed_loop}"
    );
}

/// 2000 requests a second for one second after a 200 ms warm-up: exactly the 2000 due in the
/// measured second are counted, and none of the warm-up's.
#[test]
fn the_rate_is_held_within_two_percent_when_the_server_keeps_up() {
    let _timing = timing_sensitive();
    let server = TestServer::start(|_| {});
    let report = run_ok(&Load {
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        mode: open(2000.0, 64),
        ..load(echo(64, 1), server.echo, 4)
    });
    assert_clean(&report);
    let achieved = report.achieved_rate();
    assert!(
        (1960.0..=2040.0).contains(&achieved),
        "{achieved}/s:\n{report}"
    );
    assert_eq!(report.rate, Some(2000.0));
    assert_eq!(report.behind.unstarted, 0, "{report}");
}

#[test]
fn every_scenario_runs_in_an_open_loop() {
    let _timing = timing_sensitive();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("small.bin"), common::payload(2, 1000)).unwrap();
    let dir = root.path().to_path_buf();
    let server = TestServer::start(move |config| {
        config.root = dir;
        config.chat_rate = 0;
    });
    let chat = Scenario::Chat {
        senders: 2,
        members: 2,
        size: 64,
        members_at: Vec::new(),
    };
    let download = Scenario::Download {
        name: "small.bin".into(),
    };
    for (scenario, target, max_inflight) in [
        (Scenario::Connect, server.echo, 1),
        (download, server.files, 1),
        (chat, server.chat, 8),
    ] {
        let name = scenario.name();
        let report = run_ok(&Load {
            mode: open(200.0, max_inflight),
            ..load(scenario, target, 2)
        });
        assert_clean(&report);
        // 200/s for 0.4 s: 80 due. A chat sender's timetable starts once the room is complete,
        // and a busy machine may hold the last few back past the end: the rate itself is the
        // test above's.
        let started = if name == "chat" {
            report.sent
        } else {
            report.operations
        };
        assert!((60..=81).contains(&started), "{name}: {started}\n{report}");
    }
}

// ---- the command line ----

#[test]
fn the_command_prints_the_table_and_exits_0() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let out = bench_command(&["echo", &addr, "-c", "2", "--duration", "200ms"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for label in ["scenario", "requests", "latency", "p99.9", "errors"] {
        assert!(out.stdout.contains(label), "no {label}: {out:?}");
    }
    // stderr is not a terminal here: no progress line (a warning about a busy generator
    // thread may come, on a busy machine).
    assert!(
        out.stderr
            .lines()
            .all(|line| line.contains("generator thread was busy")),
        "{out:?}"
    );
}

#[test]
fn the_command_with_json_prints_one_object_only() {
    let server = TestServer::start(|config| config.chat_rate = 0);
    let addr = server.chat.to_string();
    let out = bench_command(&[
        "chat",
        &addr,
        "--members",
        "2",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["parameters"]["scenario"], "chat");
    assert_eq!(doc["error"], Value::Null);
    assert!(
        doc["results"]["delivery_ratio"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{doc}"
    );
}

#[test]
fn the_command_against_an_absent_server_fails_with_a_clear_message() {
    let absent = free_port().to_string();
    let out = bench_command(&["echo", &absent, "--duration", "5s"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("readyloop bench: cannot reach {absent}: Connection refused")
    );
}

#[test]
fn the_command_refuses_invalid_flags_with_status_2() {
    let out = bench_command(&["connect", "-c", "0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("-c (--connections) must be at least 1"),
        "{out:?}"
    );
}

#[test]
fn the_table_says_which_loop_ran_with_the_full_spectrum_and_the_generators_cost() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "2",
        "--rate",
        "1k",
        "--duration",
        "200ms",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("open loop at 1000.0/s"), "{out:?}");
    assert!(out.stdout.contains("of 1000.0/s asked"), "{out:?}");
    for label in [
        "mean",
        "stdev",
        "p75",
        "p99.99",
        "behind",
        "CPU per request",
    ] {
        assert!(out.stdout.contains(label), "no {label}: {out:?}");
    }
    let closed = bench_command(&["echo", &addr, "-c", "2", "--duration", "100ms"]);
    assert!(closed.stdout.contains("closed loop"), "{closed:?}");
}

#[test]
fn json_puts_the_parameters_beside_the_results() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "3",
        "--size",
        "32",
        "--rate",
        "500",
        "--max-inflight",
        "4",
        "--duration",
        "200ms",
        "--warmup",
        "100ms",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let doc = out.json();
    assert_eq!(
        doc["parameters"],
        json!({
            "scenario": "echo", "target": addr, "connections": 3, "senders": null,
            "members": null, "members_at": null, "size": 32, "pipeline": 1, "name": null, "mode": "open",
            "rate": 500.0, "max_inflight": 4, "duration_s": 0.2, "warmup_s": 0.1,
            "requests": null, "threads": 1,
            "readyloop_version": env!("CARGO_PKG_VERSION"),
        })
    );
    let results = &doc["results"];
    let keys: Vec<&str> = object_keys(results);
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
    assert_eq!(
        object_keys(&results["latency_ns"]),
        [
            "count", "max", "mean", "p50", "p75", "p90", "p99", "p999", "p9999", "stdev"
        ]
    );
    assert_eq!(
        object_keys(&results["generator"]),
        [
            "busiest_thread",
            "cpu_ns",
            "cpu_ns_per_operation",
            "saturated"
        ]
    );
    assert_eq!(results["errors"], json!({}));
    assert_eq!(results["latency_ns"]["count"], results["operations"]);
    assert_eq!(doc["error"], Value::Null);
}

#[test]
fn json_on_failure_is_a_document_with_the_error_and_the_status_is_not_0() {
    let absent = free_port().to_string();
    let out = bench_command(&["echo", &absent, "--duration", "5s", "--json"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let doc = out.json();
    assert_eq!(
        doc["error"],
        json!(format!("cannot reach {absent}: Connection refused"))
    );
    assert_eq!(doc["results"], Value::Null);
    assert_eq!(doc["parameters"]["target"], json!(absent));

    let out = bench_command(&["connect", "-c", "0", "--json"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.json()["parameters"], Value::Null);
    assert!(
        out.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("-c")),
        "{out:?}"
    );
}

#[test]
fn chat_fails_when_the_relays_rate_limit_was_what_it_measured() {
    // The server's default rate limit is on.
    let server = TestServer::start(|_| {});
    let addr = server.chat.to_string();
    let out = bench_command(&["chat", &addr, "--members", "1", "--duration", "300ms"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.contains("rate limited"),
        "the table shows it: {out:?}"
    );
    assert!(out.stderr.contains("--chat-rate 0"), "{out:?}");
}

#[test]
fn a_rate_sweep_prints_one_table_and_a_json_array() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let sweep = [
        "echo",
        &addr,
        "-c",
        "2",
        "--rate",
        "500,1k",
        "--duration",
        "150ms",
    ];
    let out = bench_command(&sweep);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The load line of each step as it starts, then the table: a header and a row per step.
    assert_eq!(lines.len(), 5, "{out:?}");
    assert!(lines[0].contains("open loop at 500.0/s") && lines[1].contains("at 1000.0/s"));
    let header: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "c",
            "rate/s",
            "achieved/s",
            "mean",
            "p50",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "errors",
            "late",
            "CPU/op"
        ]
    );
    for (row, rate) in lines[3..].iter().zip(["500.0", "1.0k"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((cells[0], cells[1]), ("2", rate), "{row}");
    }

    let out = bench_command(&[&sweep[..], &["--json"]].concat());
    assert_eq!(out.code, Some(0), "{out:?}");
    let Value::Array(steps) = out.json() else {
        panic!("not an array: {out:?}");
    };
    let rates: Vec<&Value> = steps.iter().map(|s| &s["parameters"]["rate"]).collect();
    assert_eq!(rates, [&json!(500.0), &json!(1000.0)]);
    assert!(
        steps
            .iter()
            .all(|s| s["results"]["operations"].as_u64() > Some(0))
    );
}

#[test]
fn a_connection_sweep_runs_a_step_per_count_and_refuses_two_sweeps_at_once() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let out = bench_command(&["echo", &addr, "-c", "1,3", "--duration", "100ms", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let Value::Array(steps) = out.json() else {
        panic!("not an array: {out:?}");
    };
    let counts: Vec<&Value> = steps
        .iter()
        .map(|s| &s["parameters"]["connections"])
        .collect();
    assert_eq!(counts, [&json!(1), &json!(3)]);

    let out = bench_command(&["echo", &addr, "-c", "1,3", "--rate", "1k,2k"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("not both"), "{out:?}");
}

/// The sweep's chart: well-formed XML with one line per percentile, a point per step.
#[test]
fn svg_of_a_sweep_draws_one_series_per_percentile() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("curve.svg");
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "2",
        "--rate",
        "500,1k,2k",
        "--duration",
        "150ms",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let series = svg_series(&svg);
    let names: Vec<&str> = series.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["p50", "p99", "p99.9"]);
    assert!(series.iter().all(|(_, points)| *points == 3), "{series:?}");
}

#[test]
fn svg_of_one_run_draws_its_percentile_spectrum() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("spectrum.svg");
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "2",
        "--duration",
        "150ms",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let series = svg_series(&svg);
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].1 > 10, "a spectrum has many steps: {series:?}");
}

/// The `.hgrm` file reads back to the run's own figures: the rows at 50, 75 and 90 % are its
/// p50, p75 and p90 to the nanosecond, and the footer its maximum and count.
#[test]
fn hgrm_parses_back_to_the_same_percentiles() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.hgrm");
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "2",
        "--duration",
        "200ms",
        "--json",
        "--hgrm",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let latency = out.json()["results"]["latency_ns"].clone();
    let hgrm = Hgrm::read(&path);
    for (quantile, name) in [(0.5, "p50"), (0.75, "p75"), (0.9, "p90")] {
        let row = hgrm
            .rows
            .iter()
            .find(|row| row.1 == quantile)
            .unwrap_or_else(|| panic!("no row at {quantile}: {hgrm:?}"));
        assert_eq!(json!(row.0), latency[name], "{name}");
    }
    assert_eq!(json!(hgrm.max_ns), latency["max"]);
    assert_eq!(json!(hgrm.count), latency["count"]);
    let last = hgrm.rows.last().expect("rows");
    assert_eq!((last.1, last.2), (1.0, hgrm.count));
    assert!(
        hgrm.rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].2 <= w[1].2)
    );
}

#[test]
fn hgrm_of_a_sweep_writes_a_file_per_step() {
    let server = TestServer::start(|_| {});
    let addr = server.echo.to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.hgrm");
    let out = bench_command(&[
        "echo",
        &addr,
        "-c",
        "1,2",
        "--duration",
        "100ms",
        "--hgrm",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for step in ["steps.c-1.hgrm", "steps.c-2.hgrm"] {
        assert!(Hgrm::read(&dir.path().join(step)).count > 0, "{step}");
    }
}

// ---- helpers ----

/// A port on 127.0.0.1 where nothing listens (just bound and released; the kernel does not hand
/// it out again at once).
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Reads a request line, waiting at most a second.
fn read_request_line(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let _ = BufReader::new(stream).read_line(&mut String::new());
}

/// A TCP server that hands every connection to `handle` on a thread of its own, until dropped.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // Bounded: every handler's reads time out.
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let handle = Arc::clone(&handle);
                    thread::spawn(move || handle(stream));
                }
            })
        };
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl FakeServer {
    /// An echo server that stops reading for the last 200 ms of every second of its clock,
    /// on every connection at once.
    fn start_stalling() -> FakeServer {
        let start = Instant::now();
        FakeServer::start(move |mut stream| {
            let mut buf = [0; 4096];
            loop {
                let into_second = start.elapsed().subsec_millis();
                if into_second >= 800 {
                    // The stall is the server's behaviour under test, not synchronisation.
                    thread::sleep(Duration::from_millis(u64::from(1000 - into_second)));
                }
                match stream.read(&mut buf) {
                    Ok(n @ 1..) if stream.write_all(&buf[..n]).is_ok() => {}
                    _ => break,
                }
            }
        })
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, WAIT);
        if let Some(thread) = self.thread.take() {
            join_within(thread, WAIT, "the fake server to stop");
        }
    }
}

/// What a finished `readyloop bench` printed.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `readyloop bench ARGS`, killed if it has not exited within 10 s.
fn bench_command(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_readyloop"))
        .arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start readyloop bench");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for readyloop bench") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("readyloop bench {args:?} still running after 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        code: status.code(),
        stdout,
        stderr,
    }
}

impl Output {
    /// Standard output as one JSON value.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim_end())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// An object's keys, in order (serde_json keeps them sorted).
fn object_keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Each `<g class="series">` of an SVG file: its `data-name` and how many points its polyline
/// has. Parsing fails the test unless the file is well-formed XML.
fn svg_series(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("the SVG was written");
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{text}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("series"))
        .map(|g| {
            let name = g
                .attribute("data-name")
                .expect("a named series")
                .to_string();
            let points = g
                .children()
                .find(|n| n.has_tag_name("polyline"))
                .and_then(|line| line.attribute("points"))
                .map_or(0, |points| points.split_whitespace().count());
            (name, points)
        })
        .collect()
}

/// A `.hgrm` file read back: rows of (value in ns, quantile, count), and the footer's maximum
/// and count.
#[derive(Debug)]
struct Hgrm {
    rows: Vec<(u64, f64, u64)>,
    max_ns: u64,
    count: u64,
}

impl Hgrm {
    #[track_caller]
    fn read(path: &Path) -> Hgrm {
        let text = std::fs::read_to_string(path).expect("the .hgrm was written");
        let ns = |ms: &str| (ms.parse::<f64>().expect("a value in ms") * 1e6).round() as u64;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        let (mut rows, mut max_ns, mut count) = (Vec::new(), None, None);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            if let Some(footer) = line.strip_prefix("#[Max     =") {
                let (max, total) = footer.split_once(", Total count    =").expect("a max line");
                max_ns = Some(ns(max.trim()));
                count = total.trim_end_matches(']').trim().parse().ok();
            } else if !line.starts_with('#') {
                let cells: Vec<&str> = line.split_whitespace().collect();
                rows.push((
                    ns(cells[0]),
                    cells[1].parse().expect("a quantile"),
                    cells[2].parse().expect("a count"),
                ));
            }
        }
        Hgrm {
            rows,
            max_ns: max_ns.expect("a #[Max line"),
            count: count.expect("a total count"),
        }
    }
}
