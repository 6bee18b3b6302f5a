//! The live page (`GET /` of the admin service) in headless Chromium, against fixed replies.
//!
//! A tiny responder on `127.0.0.1:0` serves the page and fixed `/stats.json` and `/connections`
//! bodies in the shape the admin service sends them (see `src/service/admin/page.html`), so
//! these tests prove what the page does with a reply, and that the browser harness works,
//! without a running server. The end-to-end test against the real admin service lives with the
//! service's own tests.
//!
//! `docs/admin-page.png` is made here too, by an ignored test run by hand:
//! `cargo test --test page -- --ignored screenshot`.

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::browser::{dump_dom, screenshot};
use common::{WAIT, join_within};

/// The page, exactly as the admin service compiles it in.
const PAGE: &str = include_str!("../src/service/admin/page.html");

/// Wall-clock bound of one Chromium run: a few seconds alone, far more on a loaded machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many connections the responder serves before its thread ends on its own: the page makes
/// a handful of requests per second of virtual time, and Chromium may open a few spare sockets.
const MAX_CONNECTIONS: usize = 200;

/// How long the responder waits for a request head. Chromium opens sockets ahead of need that
/// may never carry a request; each is dropped after this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `/`, `/stats.json` and `/connections` with fixed bodies, one thread per connection,
/// `Connection: close` on every reply. Stopped and joined on drop.
struct Fixture {
    addr: SocketAddr,
    /// The request lines received, in order: what the page asked for.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The fixed replies.
struct Replies {
    stats: String,
    /// How many `/stats.json` requests, the first ones, get `503` instead, as from a server in
    /// trouble; counts down as they are answered.
    stats_failures: AtomicUsize,
    connections: String,
}

impl Replies {
    fn new(stats: String, connections: String) -> Replies {
        Replies {
            stats,
            stats_failures: AtomicUsize::new(0),
            connections,
        }
    }

    /// The same replies, but the first `n` stats requests fail.
    fn failing_stats(self, n: usize) -> Replies {
        self.stats_failures.store(n, Ordering::Relaxed);
        self
    }
}

impl Fixture {
    fn start(replies: Replies) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fixture responder");
        let addr = listener.local_addr().expect("the responder's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(replies);
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            thread::spawn(move || {
                for stream in listener.incoming().take(MAX_CONNECTIONS) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, replies) = (Arc::clone(&requests), Arc::clone(&replies));
                    thread::spawn(move || answer(stream, &replies, &requests));
                }
            })
        };
        Fixture {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn requested(&self) -> Vec<String> {
        self.requests.lock().expect("no responder panicked").clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The accept loop blocks in accept(): one more connection wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.addr, WAIT);
        if let Some(thread) = self.thread.take() {
            join_within(thread, WAIT, "the fixture responder to stop");
        }
    }
}

/// Reads one request head (bounded in size and time) and answers it.
fn answer(mut stream: TcpStream, replies: &Replies, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next().unwrap_or_default().to_string();
    let target = line.split(' ').nth(1).unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let fail = || {
        let failures = &replies.stats_failures;
        failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    };
    let (status, kind, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE),
        "/stats.json" if fail() => ("503 Service Unavailable", "text/plain", "down\n"),
        "/stats.json" => ("200 OK", "application/json", replies.stats.as_str()),
        "/connections" => ("200 OK", "application/json", replies.connections.as_str()),
        _ => ("404 Not Found", "text/plain", "not found\n"),
    };
    requests.lock().expect("no responder panicked").push(line);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

// ---- fixture data -------------------------------------------------------------------------

/// One endpoint of `/connections`.
struct Endpoint {
    key: usize,
    generation: usize,
    service: &'static str,
    kind: &'static str,
    peer: Option<String>,
    state: &'static str,
    interest: &'static str,
    bytes: (u64, u64),
    buffered: u64,
    age: f64,
    idle: f64,
}

impl Endpoint {
    /// A connection with everything but its identity and state at plain values.
    fn connection(key: usize, service: &'static str, state: &'static str) -> Endpoint {
        Endpoint {
            key,
            generation: key,
            service,
            kind: "connection",
            peer: Some(format!("127.0.0.1:{}", 40000 + key)),
            state,
            interest: "R",
            bytes: (64, 64),
            buffered: 0,
            age: 3.25,
            idle: 0.5,
        }
    }

    /// One of the server's own endpoints: a listener, the relay, signals or the waker.
    fn server(key: usize, service: &'static str, kind: &'static str, state: &'static str) -> Self {
        Endpoint {
            peer: None,
            kind,
            bytes: (0, 0),
            ..Endpoint::connection(key, service, state)
        }
    }

    fn id(&self) -> String {
        format!("#{}.{}", self.key, self.generation)
    }
}

fn connections_json(endpoints: &[Endpoint]) -> String {
    let objects: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let peer = e.peer.as_ref().map_or("null".into(), |p| format!("\"{p}\""));
            format!(
                r#"{{"key":{},"id":"{}","service":"{}","kind":"{}","peer":{peer},"state":"{}","interest":"{}","bytes_in":{},"bytes_out":{},"buffered":{},"age_seconds":{},"idle_seconds":{}}}"#,
                e.key,
                e.id(),
                e.service,
                e.kind,
                e.state,
                e.interest,
                e.bytes.0,
                e.bytes.1,
                e.buffered,
                e.age,
                e.idle
            )
        })
        .collect();
    format!("[{}]", objects.join(","))
}

/// One second of history, in `/stats.json`'s sample shape.
#[derive(Clone, Copy, Default)]
struct Sample {
    requests: [f64; 4],
    bytes: (f64, f64),
    open: [u64; 4],
    events_per_poll: f64,
    pass_p99: f64,
}

/// A `/stats.json` body: `open` connections now, and `history` ending at the present.
fn stats_json(open: u64, phase: &str, history: &[Sample]) -> String {
    const NOW: u64 = 1_764_650_000;
    let mut samples = String::new();
    for (i, s) in history.iter().enumerate() {
        let t = NOW - (history.len() - 1 - i) as u64;
        let [echo, files, chat, admin] = s.requests;
        let [open_echo, open_files, members, open_admin] = s.open;
        let _ = write!(
            samples,
            r#"{}{{"t":{t},"echo_requests":{echo},"files_requests":{files},"chat_requests":{chat},"admin_requests":{admin},"bytes_in":{},"bytes_out":{},"open_echo":{open_echo},"open_files":{open_files},"open_admin":{open_admin},"chat_members":{members},"events_per_poll":{},"pass_p99_seconds":{}}}"#,
            if i == 0 { "" } else { "," },
            s.bytes.0,
            s.bytes.1,
            s.events_per_poll,
            s.pass_p99
        );
    }
    let last = history.last().copied().unwrap_or_default();
    let [echo, files, chat, admin] = last.requests;
    let [open_echo, open_files, members, open_admin] = last.open;
    format!(
        r#"{{"server":{{"version":"0.1.0","uptime_seconds":{uptime},"phase":"{phase}"}},
"totals":{{"accepted":{accepted},"open":{open},"bytes_in":123456789,"bytes_out":9876543210}},
"services":{{"echo":{{"open":{open_echo},"requests":{echo_total},"bytes_in":40960000,"bytes_out":40960000}},
"files":{{"open":{open_files},"requests":812,"bytes_in":24360,"bytes_out":9835470000}},
"chat":{{"members":{members},"requests":51234,"bytes_in":3074040,"bytes_out":9222120}},
"admin":{{"open":{open_admin},"requests":311,"bytes_in":99520,"bytes_out":5210000}}}},
"rates":{{"echo_requests":{echo},"files_requests":{files},"chat_requests":{chat},"admin_requests":{admin},"bytes_in":{},"bytes_out":{}}},
"loop":{{"events_per_poll":{},"pass_p99_seconds":{}}},
"history":{{"interval_seconds":1,"samples":[{samples}]}}}}"#,
        last.bytes.0,
        last.bytes.1,
        last.events_per_poll,
        last.pass_p99,
        uptime = 3600 * 26 + 754,
        accepted = open * 9 + 17,
        echo_total = 1_234_567,
    )
}

/// The few endpoints of a quiet server: its own five, an echo client, a download, the page's
/// own admin connection, and two vacant keys (6 and 8).
fn quiet_table() -> Vec<Endpoint> {
    vec![
        Endpoint::server(0, "echo", "listener", "ACCEPTING"),
        Endpoint::server(1, "files", "listener", "ACCEPTING"),
        Endpoint::server(2, "", "waker", "-"),
        Endpoint::server(3, "", "signals", "-"),
        Endpoint::server(4, "admin", "listener", "ACCEPTING"),
        Endpoint::connection(5, "echo", "OPEN"),
        Endpoint::connection(7, "files", "REPLYING"),
        Endpoint::connection(9, "admin", "READING"),
    ]
}

/// The text inside the element with `id` in a DOM dump, up to the next tag.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id} in the DOM:\n{dom}"));
    let text = &dom[start..];
    let text = &text[text.find('>').expect("the tag ends") + 1..];
    &text[..text.find('<').unwrap_or(text.len())]
}

/// The markup inside `<ol id="slots">`: the slot grid alone, without the legend's samples.
fn slot_grid(dom: &str) -> &str {
    let start = dom.find("id=\"slots\"").expect("the page has a slot grid");
    let grid = &dom[start..];
    &grid[..grid.find("</ol>").expect("the grid ends")]
}

// ---- tests --------------------------------------------------------------------------------

#[test]
fn page_shows_the_open_connection_count_and_one_slot_per_endpoint() {
    let table = quiet_table();
    let fixture = Fixture::start(Replies::new(
        stats_json(3, "running", &[Sample::default(); 3]),
        connections_json(&table),
    ));

    let dom = dump_dom(&fixture.url(), BROWSER_TIMEOUT);

    assert_eq!(text_of(&dom, "open-connections"), "3", "DOM:\n{dom}");
    assert_eq!(text_of(&dom, "phase"), "running");
    assert_eq!(text_of(&dom, "version"), "0.1.0");
    assert_eq!(text_of(&dom, "uptime"), "1 d 02:12:34");
    assert_eq!(text_of(&dom, "status"), "live");
    let grid = slot_grid(&dom);
    assert_eq!(
        grid.matches("data-id=").count(),
        table.len(),
        "grid:\n{grid}"
    );
    for endpoint in &table {
        assert!(
            grid.contains(&format!("data-id=\"{}\"", endpoint.id())),
            "no slot for {}:\n{grid}",
            endpoint.id()
        );
    }
    assert_eq!(grid.matches("class=\"slot vacant\"").count(), 2, "{grid}");
    let requested = fixture.requested();
    assert!(
        requested.contains(&"GET /connections?limit=2000 HTTP/1.1".to_string()),
        "the page must ask for a bounded table; it asked for {requested:?}"
    );
}

#[test]
fn page_says_disconnected_while_stats_fail() {
    let replies = Replies::new(
        stats_json(3, "running", &[]),
        connections_json(&quiet_table()),
    );
    let fixture = Fixture::start(replies.failing_stats(usize::MAX));

    let dom = dump_dom(&fixture.url(), BROWSER_TIMEOUT);

    assert_eq!(text_of(&dom, "status"), "disconnected, retrying", "{dom}");
    assert_eq!(text_of(&dom, "open-connections"), "–");
}

#[test]
fn page_recovers_when_stats_come_back() {
    let replies = Replies::new(
        stats_json(3, "running", &[]),
        connections_json(&quiet_table()),
    );
    let fixture = Fixture::start(replies.failing_stats(2));

    let dom = dump_dom(&fixture.url(), BROWSER_TIMEOUT);

    let polls = fixture
        .requested()
        .iter()
        .filter(|line| line.starts_with("GET /stats.json "))
        .count();
    assert!(polls > 2, "the page polled stats only {polls} times");
    assert_eq!(text_of(&dom, "status"), "live", "{dom}");
    assert_eq!(text_of(&dom, "open-connections"), "3");
}

#[test]
fn page_says_how_much_of_a_table_cut_at_the_limit_it_shows() {
    let table: Vec<Endpoint> = (0..2000)
        .map(|key| Endpoint::connection(key, "echo", "OPEN"))
        .collect();
    let fixture = Fixture::start(Replies::new(
        stats_json(10_000, "draining", &[Sample::default()]),
        connections_json(&table),
    ));

    let dom = dump_dom(&fixture.url(), BROWSER_TIMEOUT);

    assert_eq!(text_of(&dom, "open-connections"), "10000");
    assert_eq!(text_of(&dom, "phase"), "draining");
    assert!(
        text_of(&dom, "slots-note").starts_with("Showing 2000 of 10000 open connections"),
        "{}",
        text_of(&dom, "slots-note")
    );
    assert_eq!(slot_grid(&dom).matches("data-id=").count(), 2000);
}

/// A server that accepts the connection (the kernel completes the handshake) but never answers
/// keeps the page loading for ever: the harness must kill the browser at its bound.
#[test]
#[should_panic(expected = "still running after 3s; killed")]
fn dump_dom_kills_a_browser_that_overruns_its_time() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let url = format!("http://{}/", silent.local_addr().expect("its address"));
    dump_dom(&url, Duration::from_secs(3));
}

/// Writes `docs/admin-page.png` from a busy server's figures: five minutes of load and a table
/// of a few hundred connections in every state.
#[test]
#[ignore = "writes docs/admin-page.png; run by hand after changing the page"]
fn screenshot_for_the_docs() {
    let mut random = Lcg(7);
    let history: Vec<Sample> = (0..300u32)
        .map(|i| {
            let t = f64::from(i);
            // A load test starting two minutes in, with a slow wave and some noise on top.
            let load = if i < 120 { 0.08 } else { 1.0 } * (1.0 + 0.25 * (t / 23.0).sin());
            let noise = |r: &mut Lcg| 0.85 + 0.3 * r.next();
            let echo = 14_000.0 * load * noise(&mut random);
            let files = 6.0 + 10.0 * load * noise(&mut random);
            let chat = 60.0 + 30.0 * (t / 11.0).sin().abs() * noise(&mut random);
            Sample {
                requests: [echo, files, chat, 1.0],
                bytes: (echo * 512.0 + chat * 60.0, echo * 512.0 + files * 3.1e6),
                open: [
                    (240.0 * load.min(1.0) + 6.0) as u64,
                    (files * 0.9) as u64,
                    38 + u64::from(i % 50) / 10,
                    1,
                ],
                events_per_poll: 1.2 + 9.0 * load * noise(&mut random),
                pass_p99: (25.0 + 130.0 * load * noise(&mut random)) * 1e-6,
            }
        })
        .collect();
    let mut table = vec![
        // In the order the binary inserts them (docs/DESIGN.md).
        Endpoint::server(0, "echo", "listener", "ACCEPTING"),
        Endpoint::server(1, "files", "listener", "ACCEPTING"),
        Endpoint::server(2, "chat", "relay", "READY"),
        Endpoint::server(3, "admin", "listener", "ACCEPTING"),
        Endpoint::server(4, "", "waker", "WAITING"),
        Endpoint::server(5, "", "signals", "WAITING"),
    ];
    let mut key = 6;
    while table.len() < 330 {
        let r = random.next();
        key += if random.next() < 0.08 { 2 } else { 1 };
        let (service, state, interest) = match r {
            r if r < 0.62 => ("echo", "OPEN", "R"),
            r if r < 0.72 => ("echo", "THROTTLED", "W"),
            r if r < 0.76 => ("echo", "DRAINING", "R"),
            r if r < 0.79 => ("echo", "HALF-CLOSED", "W"),
            r if r < 0.82 => ("echo", "LINGERING", "R"),
            r if r < 0.92 => ("files", "REPLYING", "W"),
            r if r < 0.95 => ("files", "REQUEST", "R"),
            r if r < 0.97 => ("files", "LINGERING", "R"),
            _ => ("admin", "READING", "R"),
        };
        let mut endpoint = Endpoint::connection(key, service, state);
        endpoint.generation = key + 4 * (random.next() * 900.0) as usize;
        endpoint.peer = Some(format!(
            "192.0.2.{}:{}",
            1 + (random.next() * 40.0) as u32,
            32768 + (random.next() * 28000.0) as u32
        ));
        endpoint.interest = interest;
        let sent = (random.next() * 4e6) as u64;
        endpoint.bytes = if service == "files" {
            (28, sent * 40)
        } else {
            (sent, sent)
        };
        endpoint.buffered = if state == "THROTTLED" { 65536 } else { 0 };
        endpoint.age = (random.next() * 170.0 * 100.0).round() / 100.0;
        endpoint.idle = (random.next() * 2.0 * 1000.0).round() / 1000.0;
        table.push(endpoint);
    }
    let open = (table.len() - 6) as u64;
    let shown = table
        .iter()
        .find(|e| e.state == "THROTTLED")
        .map_or(6, |e| e.key);
    let fixture = Fixture::start(Replies::new(
        stats_json(open, "running", &history),
        connections_json(&table),
    ));

    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/admin-page.png");
    let url = format!("{}#key={shown}", fixture.url());
    screenshot(&url, &png, (1280, 900), BROWSER_TIMEOUT);
}

/// A small deterministic generator, so the screenshot is the same picture every time.
struct Lcg(u64);

impl Lcg {
    /// The next number in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
