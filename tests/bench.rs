//! `readyloop bench`, the load generator, against real servers: a short run of each scenario
//! against an in-process readyloop, error counting against fake servers that misbehave on
//! purpose, the unreachable case, `--requests`, and the command line's output and exit status.
//!
//! Every run here lasts well under a second ([`SHORT`]) and every wait is bounded, so the whole
//! file takes a few seconds. The fake servers are plain std threads: each accepts, does one
//! wrong thing per connection, and stops on drop.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{AT_ONCE, TestServer, WAIT, join_within};
use readyloop::bench::report::{MISMATCH, NOT_FOUND, RESET, SHORT_READ};
use readyloop::bench::{BenchError, Load, Report, Scenario, run};

/// Length of every run: long enough for thousands of operations on loopback.
const SHORT: Duration = Duration::from_millis(400);

/// A load of `scenario` against `target` for [`SHORT`], with `connections` clients on one thread.
fn load(scenario: Scenario, target: SocketAddr, connections: usize) -> Load {
    Load {
        scenario,
        target,
        connections,
        threads: 1,
        duration: SHORT,
        requests: None,
        pin: false,
        progress: false,
    }
}

fn echo(size: usize, pipeline: usize) -> Scenario {
    Scenario::Echo { size, pipeline }
}

/// Runs `load`, which must succeed, and checks what every report must satisfy.
#[track_caller]
fn run_ok(load: &Load) -> Report {
    let started = Instant::now();
    let report = run(load).unwrap_or_else(|e| panic!("{} run failed: {e}", load.scenario.name()));
    // Bounded: the duration, plus the drain (500 ms at most) and thread start-up.
    let took = started.elapsed();
    assert!(took < load.duration + AT_ONCE, "the run took {took:?}");
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

// ---- the JSON shape ----

#[test]
fn json_is_one_object_with_every_figure() {
    let server = TestServer::start(|_| {});
    let report = run_ok(&load(echo(64, 1), server.echo, 2));
    let json = report.to_json();
    assert!(!json.contains('\n'));
    let Json::Object(fields) = Json::parse(&json).unwrap_or_else(|e| panic!("{e}: {json}")) else {
        panic!("not an object: {json}");
    };
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "bytes",
            "delivery_ratio",
            "elapsed_s",
            "errors",
            "latency_ns",
            "megabytes_per_second",
            "operations",
            "per_second",
            "scenario"
        ]
    );
    assert_eq!(fields["scenario"], Json::String("echo".into()));
    assert_eq!(fields["operations"], Json::Number(report.operations as f64));
    assert_eq!(fields["delivery_ratio"], Json::Null);
    assert_eq!(fields["errors"], Json::Object(BTreeMap::new()));
    let Json::Object(latency) = &fields["latency_ns"] else {
        panic!("latency_ns is not an object: {json}");
    };
    let names: Vec<&str> = latency.keys().map(String::as_str).collect();
    assert_eq!(names, ["count", "max", "p50", "p90", "p99", "p999"]);
    assert_eq!(
        latency["p99"],
        Json::Number(report.latency.p99.as_nanos() as f64)
    );
}

#[test]
fn json_lists_errors_by_kind_and_the_delivery_ratio() {
    let report = Report {
        scenario: "chat",
        elapsed: Duration::from_millis(1500),
        operations: 10,
        bytes: 640,
        latency: Default::default(),
        errors: BTreeMap::from([("rate limited", 3), ("reset", 1)]),
        delivery_ratio: Some(0.5),
    };
    let Ok(Json::Object(fields)) = Json::parse(&report.to_json()) else {
        panic!("not a JSON object: {}", report.to_json());
    };
    assert_eq!(fields["elapsed_s"], Json::Number(1.5));
    assert_eq!(fields["delivery_ratio"], Json::Number(0.5));
    let errors = BTreeMap::from([
        ("rate limited".to_string(), Json::Number(3.0)),
        ("reset".to_string(), Json::Number(1.0)),
    ]);
    assert_eq!(fields["errors"], Json::Object(errors));
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
    // stderr is not a terminal here: no progress line.
    assert_eq!(out.stderr, "", "{out:?}");
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
    match Json::parse(out.stdout.trim_end()) {
        Ok(Json::Object(fields)) => {
            assert_eq!(fields["scenario"], Json::String("chat".into()));
            assert!(matches!(fields["delivery_ratio"], Json::Number(r) if r > 0.0));
        }
        other => panic!("{other:?}: {out:?}"),
    }
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

/// A JSON value: just enough of RFC 8259 to check the shape of `--json` without a dependency.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Parses exactly one value, with nothing but whitespace around it.
    fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = parser.value()?;
        parser.space();
        if parser.at != parser.bytes.len() {
            return Err(format!("trailing text at byte {}", parser.at));
        }
        Ok(value)
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, expected: u8) -> Result<(), String> {
        self.space();
        if self.bytes.get(self.at) == Some(&expected) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!(
                "expected `{}` at byte {}",
                expected as char, self.at
            ))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at byte {}", self.at))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(format!("no value at byte {}", self.at)),
        }
    }

    fn object(&mut self) -> Result<Json, String> {
        self.eat(b'{')?;
        let mut fields = BTreeMap::new();
        self.space();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(Json::Object(fields));
        }
        loop {
            self.space();
            let key = self.string()?;
            self.eat(b':')?;
            let value = self.value()?;
            if fields.insert(key.clone(), value).is_some() {
                return Err(format!("duplicate key {key}"));
            }
            self.space();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                _ => return Err(format!("expected `,` or `}}` at byte {}", self.at)),
            }
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.space();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.space();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(format!("expected `,` or `]` at byte {}", self.at)),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match byte {
                b'"' => return Ok(out),
                b'\\' => {
                    let escaped = self.bytes.get(self.at).copied();
                    self.at += 1;
                    match escaped {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'n') => out.push('\n'),
                        Some(b't') => out.push('\t'),
                        Some(b'r') => out.push('\r'),
                        Some(b'u') => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("bad \\u escape")?;
                            self.at += 4;
                            out.push(char::from_u32(hex).ok_or("bad \\u escape")?);
                        }
                        _ => return Err(format!("bad escape at byte {}", self.at)),
                    }
                }
                0..0x20 => return Err(format!("raw control character at byte {}", self.at)),
                _ => {
                    // Copy the whole UTF-8 sequence this byte starts.
                    let start = self.at - 1;
                    while self.bytes.get(self.at).is_some_and(|b| b & 0xC0 == 0x80) {
                        self.at += 1;
                    }
                    let text = std::str::from_utf8(&self.bytes[start..self.at])
                        .map_err(|e| e.to_string())?;
                    out.push_str(text);
                }
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| e.to_string())?;
        // JSON forbids leading zeros, a bare `.5` and a trailing `5.`; Rust's parser does not.
        let digits = text.trim_start_matches('-');
        if (digits.starts_with('0') && digits.len() > 1 && digits.as_bytes()[1].is_ascii_digit())
            || digits.starts_with('.')
            || text.ends_with('.')
        {
            return Err(format!("not a JSON number: {text}"));
        }
        text.parse()
            .map(Json::Number)
            .map_err(|_| format!("not a number: {text}"))
    }
}
