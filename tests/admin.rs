//! The admin HTTP service over real sockets: health, the connection list, the live page, its
//! limits, and services turned off.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::Running;
use common::http::{Client, get};
use common::prometheus::{promtool_check, samples};
use common::{
    AT_ONCE, IO_TIMEOUT, TestServer, WAIT, connect, prompt_bound, round_trip, slowest_round_trip,
    wait_until,
};
use readyloop::{Config, Metric, Server};
use serde_json::Value;

/// The rows of `/connections` (with `query`) whose `service` and `kind` match.
fn rows(admin: SocketAddr, query: &str, service: &str, kind: &str) -> Vec<Value> {
    let response = get(admin, &format!("/connections{query}"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let Value::Array(all) = response.json() else {
        panic!("an array: {}", response.text());
    };
    all.into_iter()
        .filter(|row| row["service"] == service && row["kind"] == kind)
        .collect()
}

// ---- health ----------------------------------------------------------------------------------

/// A client that never reads keeps the server draining for the whole (long) grace, so the admin
/// service is asked while the server drains.
#[test]
fn healthz_is_ok_while_serving_and_503_the_moment_draining_starts() {
    let server = TestServer::start(|c| c.shutdown_grace = Duration::from_secs(60));
    let ok = get(server.admin, "/healthz");
    assert_eq!((ok.status, ok.text()), (200, "ok\n"));

    let _hog = server.hog();
    server.shutdown();
    wait_until(WAIT, "the health check to say draining", || {
        get(server.admin, "/healthz").status == 503
    });
    let draining = get(server.admin, "/healthz");
    assert_eq!(draining.text(), "draining\n");
    assert!(!server.has_stopped(), "still draining: the hog holds it");
}

// ---- the connection list ---------------------------------------------------------------------

#[test]
fn connections_lists_a_thousand_open_echo_clients_each_with_its_state_and_peer() {
    let server = TestServer::start(|_| {});
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| connect(server.echo)).collect();
    // One exchange each: the rows then carry bytes, and every client is surely accepted.
    for client in &mut clients {
        round_trip(client, b"ping");
    }
    let listed = rows(server.admin, "", "echo", "connection");
    assert_eq!(listed.len(), 1000);
    let mut peers: Vec<String> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    let mut listed_peers: Vec<String> = listed
        .iter()
        .map(|row| row["peer"].as_str().expect("a peer").to_string())
        .collect();
    peers.sort();
    listed_peers.sort();
    assert_eq!(listed_peers, peers, "every client, by its address");
    for row in &listed {
        assert_eq!(row["state"], "OPEN", "{row}");
        assert_eq!(row["interest"], "R", "{row}");
        assert_eq!(
            (row["bytes_in"].as_u64(), row["bytes_out"].as_u64()),
            (Some(4), Some(4))
        );
        assert_eq!(row["buffered"], 0);
        assert!(row["id"].as_str().unwrap().starts_with('#'), "{row}");
    }
}

/// The chat relay is one row however many members talk through it, and it counts the bytes of
/// every datagram it received and sent, as a connection's row does.
#[test]
fn connections_lists_the_chat_relay_with_the_bytes_of_its_datagrams() {
    let server = TestServer::start(|c| c.chat_rate = 0);
    let chat = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    chat.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut heard = 0;
    for _ in 0..3 {
        chat.send_to(b"hello", server.chat).unwrap();
        let mut line = [0; 512];
        heard += chat.recv_from(&mut line).expect("the relayed line").0;
    }
    let relay = rows(server.admin, "", "chat", "relay");
    assert_eq!(relay.len(), 1, "{relay:?}");
    assert_eq!(relay[0]["bytes_in"], 15, "{}", relay[0]);
    let sent = get(server.admin, "/stats.json").json()["services"]["chat"]["bytes_out"].clone();
    assert_eq!(relay[0]["bytes_out"], sent, "the row and the service agree");
    assert!(
        sent.as_u64() >= Some(heard as u64),
        "{sent} < {heard} heard"
    );
}

#[test]
fn a_client_that_never_reads_is_listed_as_throttled_with_its_buffered_bytes() {
    let server = TestServer::start(|c| {
        c.high_water = 32 * 1024;
        c.low_water = 8 * 1024;
    });
    let _hog = server.hog();
    let listed = rows(server.admin, "?service=echo", "echo", "connection");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let row = &listed[0];
    assert_eq!(row["state"], "THROTTLED", "{row}");
    assert_eq!(row["interest"], "W", "{row}");
    let buffered = row["buffered"].as_u64().unwrap();
    assert!(
        (8 * 1024..=32 * 1024).contains(&buffered),
        "buffered {buffered} lies between the water marks"
    );
}

#[test]
fn connections_filters_by_service_and_limits_its_rows() {
    let server = TestServer::start(|_| {});
    let _echo: Vec<TcpStream> = (0..5).map(|_| connect(server.echo)).collect();
    let _files = connect(server.files);
    server.wait_for(WAIT, "six clients", |s| s.get(Metric::Open) == 6);

    let files = rows(server.admin, "?service=files", "files", "connection");
    assert_eq!(files.len(), 1);
    let Value::Array(only) = get(server.admin, "/connections?service=files").json() else {
        panic!("an array");
    };
    assert!(only.iter().all(|row| row["service"] == "files"), "{only:?}");

    let Value::Array(two) = get(server.admin, "/connections?limit=2").json() else {
        panic!("an array");
    };
    assert_eq!(two.len(), 2);
    assert_eq!(get(server.admin, "/connections?limit=many").status, 400);
}

/// 10 000 connections need 20 000 descriptors in one process, more than a default limit allows:
/// the server runs as its own process here. Its list (about 2.5 MB of JSON) goes out in pieces
/// while echo round trips are measured beside it.
#[test]
fn a_ten_thousand_connection_list_is_served_while_echo_stays_prompt() {
    let (_server, addresses) = Running::serve(&["--max-conns", "20000", "-q"]);
    let (echo, admin) = (addresses["echo"], addresses["admin"]);
    let clients: Vec<TcpStream> = (0..10_000).map(|_| connect(echo)).collect();
    let mut probe = connect(echo);
    let baseline = slowest_round_trip(&mut probe, 20);

    let lister = thread::spawn(move || rows(admin, "", "echo", "connection").len());
    let bound = prompt_bound(baseline);
    let mut slowest = Duration::ZERO;
    while !lister.is_finished() {
        let started = Instant::now();
        round_trip(&mut probe, b"still here?");
        slowest = slowest.max(started.elapsed());
    }
    let listed = common::join_within(lister, IO_TIMEOUT, "the list");
    assert_eq!(listed, 10_001, "every client and the probe");
    assert!(
        slowest <= bound,
        "an echo round trip took {slowest:?} while the list was served (bound {bound:?})"
    );
    drop(clients);
}

// ---- the page --------------------------------------------------------------------------------

#[test]
fn the_live_page_shows_the_open_connection_count_the_server_reports() {
    let server = TestServer::start(|_| {});
    let _clients: Vec<TcpStream> = (0..3).map(|_| connect(server.echo)).collect();
    server.wait_for(WAIT, "three clients", |s| s.get(Metric::Open) == 3);

    let page = get(server.admin, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let dom = common::browser::dump_dom(&format!("http://{}/", server.admin), IO_TIMEOUT * 6);
    assert!(
        dom.contains(r#"id="open-connections">3<"#),
        "the page shows 3 open connections:\n{dom}"
    );
}

// ---- HTTP and its limits ---------------------------------------------------------------------

#[test]
fn keep_alive_carries_several_requests_and_head_gets_no_body() {
    let server = TestServer::start(|_| {});
    let mut client = Client::new(server.admin);
    client
        .send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = client.response("GET");
    assert_eq!((first.status, first.text()), (200, "ok\n"));
    let second = client.response("HEAD");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("content-length"), Some("3"));
    // A streamed body on a kept connection comes in chunks, and the connection stays usable.
    for _ in 0..2 {
        client.send("GET /connections?limit=1 HTTP/1.1\r\nHost: t\r\n\r\n");
        let rows = client.response("GET");
        assert_eq!(rows.header("transfer-encoding"), Some("chunked"));
        assert!(rows.json().is_array());
    }
    client.send("GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(client.response("GET").status, 404);
    assert!(client.is_closed(), "closed after Connection: close");
}

#[test]
fn requests_the_service_will_not_answer_get_the_status_that_says_why() {
    let server = TestServer::start(|_| {});
    let refused = |request: &str| {
        let mut client = Client::new(server.admin);
        client.send(request);
        let response = client.response("GET");
        assert!(client.is_closed(), "closed after refusing {request:?}");
        response
    };
    let post = refused("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        refused("GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").status,
        400
    );
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(9000));
    assert_eq!(refused(&huge).status, 431);
    assert_eq!(refused("\x16\x03\x01 not http\r\n\r\n").status, 400);
}

#[test]
fn a_head_that_does_not_arrive_in_time_gets_408_and_a_close() {
    let server = TestServer::start(|c| c.admin_timeout = Duration::from_millis(300));
    let mut client = Client::new(server.admin);
    client.send("GET /healthz HTTP/1.1\r\n");
    let response = client.response("GET");
    assert_eq!(response.status, 408);
    assert!(client.is_closed());
}

#[test]
fn admin_connections_past_their_limit_are_closed_and_clients_are_not_counted() {
    let server = TestServer::start(|c| c.admin_max_conns = 2);
    let _held: Vec<TcpStream> = (0..2).map(|_| connect(server.admin)).collect();
    let mut extra = connect(server.admin);
    let mut byte = [0];
    assert_eq!(extra.read(&mut byte).unwrap(), 0, "closed at once");
    let stats = server.stats();
    assert_eq!(
        stats.get(Metric::Open),
        0,
        "admin connections are not clients"
    );
    assert_eq!(stats.get(Metric::ClosedLimit), 0);
}

/// Slowloris: every admin slot held by a client trickling a header byte at a time. Echo does not
/// notice, and each trickler is cut off at the head timeout however it paces its bytes.
#[test]
fn slowloris_on_the_admin_port_leaves_echo_prompt_and_is_cut_off_in_time() {
    let server = TestServer::start(|c| {
        c.admin_max_conns = 16;
        c.admin_timeout = Duration::from_millis(800);
    });
    let mut probe = connect(server.echo);
    let baseline = slowest_round_trip(&mut probe, 20);
    let mut tricklers: Vec<TcpStream> = (0..16).map(|_| connect(server.admin)).collect();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut cut = vec![false; tricklers.len()];
    while cut.iter().any(|c| !c) {
        assert!(started.elapsed() < AT_ONCE + WAIT, "tricklers still open");
        for (trickler, cut) in tricklers.iter_mut().zip(&mut cut) {
            if !*cut && trickler.write_all(b"X").is_err() {
                *cut = true;
            }
        }
        let trip = Instant::now();
        round_trip(&mut probe, b"slow loris?");
        slowest = slowest.max(trip.elapsed());
        thread::sleep(Duration::from_millis(50));
        for (trickler, cut) in tricklers.iter_mut().zip(&mut cut) {
            trickler.set_nonblocking(true).unwrap();
            let mut reply = [0; 64];
            if let Ok(n) = trickler.read(&mut reply) {
                assert!(n == 0 || reply.starts_with(b"HTTP/1.1 40"), "{reply:?}");
                *cut = true;
            }
            trickler.set_nonblocking(false).unwrap();
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "not before the timeout"
    );
    assert!(
        slowest <= prompt_bound(baseline),
        "echo took {slowest:?} beside the tricklers"
    );
}

// ---- services turned off ---------------------------------------------------------------------

#[test]
fn a_service_turned_off_binds_nothing_and_is_absent_from_the_startup_line() {
    for off in ["echo", "files", "chat", "admin"] {
        let mut config = Config {
            bind: "127.0.0.1".parse().unwrap(),
            echo_port: Some(0),
            files_port: Some(0),
            chat_port: Some(0),
            admin_port: Some(0),
            ..Config::default()
        };
        match off {
            "echo" => config.echo_port = None,
            "files" => config.files_port = None,
            "chat" => config.chat_port = None,
            _ => config.admin_port = None,
        }
        let server = Server::bind(config).expect("binds");
        let addresses = server.addresses();
        let line = addresses.to_string();
        assert!(!line.contains(&format!("{off}=")), "{off} in {line:?}");
        let on = [
            addresses.echo,
            addresses.files,
            addresses.chat,
            addresses.admin,
        ];
        assert_eq!(on.iter().filter(|a| a.is_some()).count(), 3, "{line}");
    }
}

#[test]
fn every_service_off_is_refused_at_start() {
    let config = Config {
        echo_port: None,
        files_port: None,
        chat_port: None,
        admin_port: Some(0),
        ..Config::default()
    };
    let error = Server::bind(config).expect_err("nothing to serve");
    assert!(
        error.to_string().contains("every service is off"),
        "{error}"
    );
}

// ---- metrics ---------------------------------------------------------------------------------

/// The live `/metrics` body, after real traffic on every service, is what Prometheus's own
/// checker accepts; and each client's traffic moves its service's samples by exactly what it did.
#[test]
fn metrics_pass_promtool_and_move_by_exactly_what_clients_did() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.bin"), vec![7u8; 1000]).unwrap();
    let dir = root.path().to_path_buf();
    let server = TestServer::start(|c| {
        c.root = dir;
        c.chat_rate = 0;
    });
    let before = samples(get(server.admin, "/metrics").text());

    let mut echo = connect(server.echo);
    round_trip(&mut echo, &[1u8; 1000]);
    drop(echo);
    let mut download = connect(server.files);
    download.write_all(b"GET a.bin\n").unwrap();
    let reply = common::read_to_eof_within(&mut download, WAIT).expect("the whole reply");
    assert_eq!(reply.len(), "OK 1000\n".len() + 1000);
    let chat = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    chat.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for _ in 0..3 {
        chat.send_to(b"hello", server.chat).unwrap();
        let mut heard = [0; 512];
        chat.recv_from(&mut heard).expect("the relayed line");
    }
    server.wait_for(WAIT, "both clients closed", |s| s.get(Metric::Open) == 0);

    let body = get(server.admin, "/metrics");
    assert_eq!(
        body.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (passed, said) = promtool_check(body.text());
    assert!(
        passed && said.is_empty(),
        "promtool: {said}\n{}",
        body.text()
    );

    let after = samples(body.text());
    let moved = |series: &str| after[series] - before.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        moved(r#"readyloop_received_bytes_total{service="echo"}"#),
        1000.0
    );
    assert_eq!(
        moved(r#"readyloop_sent_bytes_total{service="echo"}"#),
        1000.0
    );
    assert_eq!(
        moved(r#"readyloop_connections_accepted_total{service="echo"}"#),
        1.0
    );
    assert_eq!(moved(r#"readyloop_requests_total{service="files"}"#), 1.0);
    assert_eq!(moved("readyloop_downloads_completed_total"), 1.0);
    // A 1 000-byte body fits the socket's buffer: one call sends it all.
    assert_eq!(moved(r#"readyloop_syscalls_total{call="sendfile"}"#), 1.0);
    assert_eq!(
        moved(r#"readyloop_received_bytes_total{service="files"}"#),
        10.0
    );
    assert_eq!(
        moved(r#"readyloop_sent_bytes_total{service="files"}"#),
        1008.0
    );
    assert_eq!(moved(r#"readyloop_requests_total{service="chat"}"#), 3.0);
    assert_eq!(
        moved(r#"readyloop_received_bytes_total{service="chat"}"#),
        15.0
    );
    assert_eq!(moved("readyloop_chat_datagrams_received_total"), 3.0);
    assert_eq!(
        moved(r#"readyloop_connection_lifetime_seconds_count{service="echo"}"#),
        1.0
    );
    assert!(after["process_resident_memory_bytes"] > 0.0);
    assert!(after["process_open_fds"] > 0.0);
}

#[test]
fn promtool_rejects_a_broken_body() {
    // Proves the check above can fail: a counter without `_total` is a lint error.
    let broken = "# HELP broken A counter.\n# TYPE broken counter\nbroken 1\n";
    let (passed, said) = promtool_check(broken);
    assert!(
        !passed,
        "promtool accepted a counter without _total: {said}"
    );
}

#[test]
fn stats_json_carries_totals_services_and_a_history() {
    let server = TestServer::start(|_| {});
    let mut echo = connect(server.echo);
    round_trip(&mut echo, b"counted");
    let stats = get(server.admin, "/stats.json");
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let json = stats.json();
    assert_eq!(json["server"]["phase"], "running");
    assert_eq!(json["totals"]["open"], 1);
    assert_eq!(json["services"]["echo"]["open"], 1);
    assert_eq!(json["services"]["echo"]["bytes_in"], 7);
    // The echo's pass ended before this request's began, and with it the fold of its calls.
    assert!(json["totals"]["syscalls_recvfrom"].as_u64() >= Some(1));
    assert!(json["totals"]["syscalls_sendto"].as_u64() >= Some(1));
    assert_eq!(json["history"]["interval_seconds"], 1);
    assert!(json["history"]["samples"].is_array());
}

/// Past a thousand endpoints the server counts its descriptors from its table instead of listing
/// `/proc/self/fd` (a microsecond of kernel time apiece): the figure must still be the real one.
/// The server runs in its own process, so no other test's descriptors are in its table; one
/// kept-alive admin connection does every request, so the same descriptors are open each time.
#[test]
fn open_fds_stays_exact_when_counted_from_the_table() {
    let (server, addresses) = Running::serve(&["-q"]);
    let (echo, admin) = (addresses["echo"], addresses["admin"]);
    let mut scraper = Client::new(admin);
    let mut ask = |path: &str| {
        scraper.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        scraper.response("GET")
    };
    let real = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count() as f64
    };
    // Few endpoints: listed, with the descriptor the listing itself holds.
    let fds = samples(ask("/metrics").text())["process_open_fds"];
    assert_eq!(fds, real() + 1.0);

    let clients: Vec<TcpStream> = (0..1500).map(|_| connect(echo)).collect();
    wait_until(WAIT, "every client accepted", || {
        ask("/stats.json").json()["totals"]["open"] == clients.len()
    });
    let counted = samples(ask("/metrics").text())["process_open_fds"];
    assert_eq!(counted, real() + 1.0, "counted from the table");
}
