//! The loop's own rules, seen from outside: idle timeout, the connection limit, the shutdown
//! phases, and connections coming and going fast (slot reuse and stale tokens).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use readyloop::{Config, Metric, Server, StartError};
use sha2::{Digest, Sha256};

use common::{
    AT_ONCE, IO_TIMEOUT, TestServer, WAIT, connect, join_within, payload, read_exact_within,
    read_to_eof_within, round_trip, wait_until_refused,
};

// ---- the loop's own figures -----------------------------------------------------------------

/// An echo takes at least a pass to accept and one to read and reply; each pass is recorded when
/// it ends, so the figures appear just after the reply does.
#[test]
fn every_pass_of_the_loop_records_how_long_it_took() {
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    round_trip(&mut client, b"ping");
    server.wait_for(WAIT, "the echo's passes to be recorded", |s| {
        s.pass_time().count() >= 2 && s.pass_time().sum() > 0.0
    });
}

// ---- idle timeout ---------------------------------------------------------------------------

#[test]
fn an_idle_client_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(200);
    let server = TestServer::start(|c| c.idle_timeout = IDLE);
    let started = Instant::now();
    let mut client = connect(server.echo);
    let rest = read_to_eof_within(&mut client, WAIT)
        .unwrap_or_else(|(e, _)| panic!("expected EOF from the idle close, got {e}"));
    let waited = started.elapsed();

    assert!(rest.is_empty());
    assert!(
        waited >= IDLE,
        "closed after {waited:?}, before the {IDLE:?} timeout"
    );
    server.wait_for(WAIT, "the idle close to be counted", |s| {
        s.get(Metric::ClosedIdle) == 1 && s.get(Metric::Open) == 0
    });
}

/// The pauses between messages are the behaviour under test (each a tenth of the timeout,
/// together twice as long), not synchronisation. Only a stall of most of a second between two
/// round trips would let the timeout fire.
#[test]
fn a_client_that_keeps_talking_outlives_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    let server = TestServer::start(|c| c.idle_timeout = IDLE);
    let mut client = connect(server.echo);
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < IDLE * 2 {
        round_trip(&mut client, format!("still here {i}").as_bytes());
        i += 1;
        thread::sleep(IDLE / 10);
    }
    round_trip(&mut client, b"and still served");
    let stats = server.stats();
    assert_eq!(stats.get(Metric::ClosedIdle), 0, "stats: {stats}");
    assert_eq!(stats.get(Metric::Open), 1);
}

// ---- connection limit -----------------------------------------------------------------------

/// Opens `max_conns` (3) clients, waits until the server holds all of them, then opens one more.
/// Left alone, that one would wait for the 300 s idle timeout.
#[test]
fn a_connection_past_max_conns_is_closed_at_once_and_counted() {
    let server = TestServer::start(|c| c.max_conns = 3);
    let mut kept: Vec<_> = (0..3).map(|_| connect(server.echo)).collect();
    server.wait_for(WAIT, "three open connections", |s| s.get(Metric::Open) == 3);

    let started = Instant::now();
    let mut fourth = connect(server.echo);
    // The server accepts and drops the socket. The client has sent nothing, so nothing is
    // left unread on the server's side and the kernel closes with FIN, not RST: a clean EOF.
    let data = read_to_eof_within(&mut fourth, WAIT)
        .unwrap_or_else(|(e, _)| panic!("expected EOF from the refusal, got {e}"));
    assert!(
        data.is_empty(),
        "the refused client was sent {} bytes",
        data.len()
    );
    let took = started.elapsed();
    assert!(took < AT_ONCE, "not closed at once: after {took:?}");
    server.wait_for(WAIT, "the refusal to be counted", |s| {
        s.get(Metric::ClosedLimit) == 1
    });
    let stats = server.stats();
    assert_eq!(stats.get(Metric::Accepted), 3, "stats: {stats}");
    assert_eq!(stats.get(Metric::Open), 3);
    for client in &mut kept {
        round_trip(client, b"the first three are still served");
    }
}

#[test]
fn a_slot_freed_below_max_conns_serves_new_clients_again() {
    let server = TestServer::start(|c| c.max_conns = 3);
    let mut kept: Vec<_> = (0..3).map(|_| connect(server.echo)).collect();
    server.wait_for(WAIT, "three open connections", |s| s.get(Metric::Open) == 3);
    let _refused = connect(server.echo);
    server.wait_for(WAIT, "the fourth to be refused", |s| {
        s.get(Metric::ClosedLimit) == 1
    });

    drop(kept.remove(0));
    server.wait_for(WAIT, "the closed client to free its slot", |s| {
        s.get(Metric::Open) == 2
    });
    let mut newcomer = connect(server.echo);
    round_trip(&mut newcomer, b"served again");
    let stats = server.stats();
    assert_eq!(stats.get(Metric::Accepted), 4, "stats: {stats}");
    assert_eq!(stats.get(Metric::ClosedLimit), 1);
}

// ---- shutdown -------------------------------------------------------------------------------

/// The client sends 16 MiB without reading: more than loopback's kernel buffers hold (about
/// 4 MiB here), so most of the echo is owed by the server itself when shutdown begins. The
/// high-water mark is raised above 16 MiB so the server reads every byte before the shutdown:
/// this test is about output the server owes (the next one, about input still waiting to be read).
#[test]
fn graceful_shutdown_delivers_all_owed_output_then_eof() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let mut server = TestServer::start(|c| {
        c.high_water = 2 * TOTAL;
        c.low_water = TOTAL / 4;
        c.shutdown_grace = Duration::from_secs(30);
    });
    let mut client = connect(server.echo);
    let mut writer = client.try_clone().unwrap();
    let sent = payload(11, TOTAL);
    let to_send = sent.clone();
    let sender = thread::spawn(move || writer.write_all(&to_send).expect("send 16 MiB"));
    join_within(sender, IO_TIMEOUT, "the writer thread");
    server.wait_for(WAIT, "the server to read all 16 MiB", |s| {
        s.get(Metric::BytesIn) == TOTAL as u64
    });
    let before = server.stats();
    assert!(
        before.get(Metric::BytesOut) < TOTAL as u64,
        "no output owed, the test proves nothing; stats: {before}"
    );

    server.shutdown();
    wait_until_refused(server.echo, WAIT);
    assert!(!server.has_stopped(), "stopped while output was still owed");
    let echoed = read_to_eof_within(&mut client, Duration::from_secs(20))
        .unwrap_or_else(|(e, data)| panic!("read failed after {} bytes: {e}", data.len()));
    assert_eq!(echoed.len(), TOTAL);
    assert!(echoed == sent, "the echo differs from what was sent");

    drop(client);
    let last = server.wait_stopped(WAIT);
    assert_eq!(last.get(Metric::BytesOut), TOTAL as u64, "stats: {last}");
    assert!(last.get(Metric::ClosedShutdown) >= 1, "stats: {last}");
    assert_eq!(last.get(Metric::Open), 0);
}

/// The client hands the server 8 MiB without reading. With the default 64 KiB high-water mark the
/// server is throttled long before that, so when the shutdown begins most of the input still waits
/// in the kernel's buffers or in the blocked writer thread: only a server that keeps reading and
/// echoing while it drains sends it all back. The stream ends with EOF either way: the writer
/// half-closes once done, or the server finds the connection quiet and sends FIN.
#[test]
fn graceful_shutdown_keeps_echoing_a_busy_client_until_its_stream_ends() {
    const TOTAL: usize = 8 * 1024 * 1024;
    // Far more than the echo takes, so a slow machine cannot turn the grace into the verdict.
    const GRACE: Duration = Duration::from_secs(20);
    let mut server = TestServer::start(|c| {
        c.shutdown_grace = GRACE;
        // A writer thread starved of the CPU on a busy machine is not a client that has finished.
        c.request_grace = Duration::from_secs(1);
    });
    let high = server.config.high_water as u64;
    let mut reader = connect(server.echo);
    let mut writer = reader.try_clone().unwrap();
    let sent = payload(8, TOTAL);
    let sent_digest = Sha256::digest(&sent);
    // The write blocks once the server is throttled, and goes on only as the reader below reads.
    let sender = thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    server.wait_for(WAIT, "the server to be throttled", |s| {
        s.get(Metric::BufferedPeak) == high
    });

    let asked = Instant::now();
    server.shutdown();
    wait_until_refused(server.echo, WAIT);
    // Loopback's buffers hold about 4 MiB of the echo here; the rest of the input must wait.
    let before = server.stats();
    assert!(
        before.get(Metric::BytesIn) + (1 << 20) <= TOTAL as u64,
        "less than 1 MiB of input was left unread at the shutdown, the test proves little; \
         stats: {before}"
    );
    let echoed = read_to_eof_within(&mut reader, GRACE)
        .unwrap_or_else(|(e, data)| panic!("read failed after {} bytes: {e}", data.len()));
    assert_eq!(echoed.len(), TOTAL, "stats: {}", server.stats());
    assert!(
        Sha256::digest(&echoed) == sent_digest,
        "the echo's SHA-256 differs from what was sent"
    );
    join_within(sender, IO_TIMEOUT, "the writer thread").expect("send 8 MiB, then FIN");

    let last = server.wait_stopped(WAIT);
    let took = asked.elapsed();
    assert!(
        took < GRACE,
        "stopped after {took:?}: by the grace, not the echo"
    );
    assert_eq!(last.get(Metric::BytesIn), TOTAL as u64, "stats: {last}");
    assert_eq!(last.get(Metric::BytesOut), TOTAL as u64, "stats: {last}");
    assert_eq!(
        last.get(Metric::ClosedPeer) + last.get(Metric::ClosedShutdown),
        1,
        "closed at the client's FIN or after the server's; stats: {last}"
    );
}

/// The client never stops sending and keeps reading, so it never pauses for `--request-grace`,
/// and only the end of the grace closes its connection. Were it wrongly found quiet, it would get
/// FIN and be closed when the 50 ms linger ran out, long before the grace. (The pause is raised
/// to 250 ms so that a writer thread starved of the CPU on a busy machine does not look finished.)
#[test]
fn a_client_that_never_goes_quiet_is_served_until_the_grace_ends() {
    const GRACE: Duration = Duration::from_secs(1);
    const CHUNK: usize = 16 * 1024;
    let mut server = TestServer::start(|c| {
        c.shutdown_grace = GRACE;
        c.request_grace = Duration::from_millis(250);
        c.linger = Duration::from_millis(50);
    });
    let mut reader = connect(server.echo);
    let mut writer = reader.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = payload(3, CHUNK);
        let give_up = Instant::now() + IO_TIMEOUT;
        // Ends when the server closes the connection (a reset or a broken pipe).
        while Instant::now() < give_up {
            if let Err(e) = writer.write_all(&chunk) {
                return Ok(e);
            }
        }
        Err("the server never closed the connection")
    });
    let mut buf = vec![0; CHUNK];
    read_exact_within(&mut reader, CHUNK, WAIT);

    let asked = Instant::now();
    server.shutdown();
    wait_until_refused(server.echo, WAIT);
    let read_before = server.get(Metric::BytesIn);
    let deadline = asked + GRACE + WAIT;
    loop {
        assert!(Instant::now() < deadline, "still open long after the grace");
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The server closed with input unread: a reset, as the loop cuts it at the grace end.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    let last = server.wait_stopped(WAIT);
    let took = asked.elapsed();
    assert!(
        took >= GRACE,
        "stopped after {took:?}, before the {GRACE:?} grace"
    );
    assert!(
        last.get(Metric::BytesIn) > read_before,
        "nothing was read while draining; stats: {last}"
    );
    assert_eq!(last.get(Metric::ClosedShutdown), 1, "stats: {last}");
    assert_eq!(last.get(Metric::Open), 0);
    join_within(sender, IO_TIMEOUT, "the writer thread").expect("the writer stops at the close");
}

/// The hog never reads, so its owed output can never drain; only the grace period ends the
/// drain.
#[test]
fn shutdown_grace_expiry_stops_a_server_whose_client_never_reads() {
    const GRACE: Duration = Duration::from_millis(200);
    let mut server = TestServer::start(|c| c.shutdown_grace = GRACE);
    let _hog = server.hog();
    let asked = Instant::now();
    server.shutdown();
    let last = server.wait_stopped(WAIT);
    let took = asked.elapsed();

    assert!(
        took >= GRACE,
        "stopped after {took:?}, before the {GRACE:?} grace"
    );
    assert_eq!(last.get(Metric::ClosedShutdown), 1, "stats: {last}");
    assert_eq!(last.get(Metric::Open), 0);
}

/// With a 60 s grace and a client that never reads, the first request alone would drain for a
/// minute. Refused connections show the first request was handled before the second is sent.
#[test]
fn a_second_shutdown_request_stops_at_once() {
    let mut server = TestServer::start(|c| c.shutdown_grace = Duration::from_secs(60));
    let _hog = server.hog();
    server.shutdown();
    wait_until_refused(server.echo, WAIT);
    assert!(
        !server.has_stopped(),
        "the first request should drain, not stop"
    );

    let asked = Instant::now();
    server.shutdown();
    let last = server.wait_stopped(WAIT);
    let took = asked.elapsed();
    assert!(took < AT_ONCE, "stopped {took:?} after the second request");
    assert!(last.get(Metric::ClosedShutdown) >= 1, "stats: {last}");
    assert_eq!(last.get(Metric::Open), 0);
}

#[test]
fn new_connections_are_refused_after_shutdown() {
    let mut server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    round_trip(&mut client, b"before");
    drop(client);
    server.wait_for_no_open_connections();

    server.shutdown();
    server.wait_stopped(WAIT);
    let refused = TcpStream::connect_timeout(&server.echo, IO_TIMEOUT)
        .expect_err("nothing listens once the server has stopped");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

/// An idle client during shutdown gets FIN as soon as it has been quiet for `--request-grace`
/// (it is owed nothing), and the server stops when the client answers with its own FIN.
#[test]
fn shutdown_sends_fin_to_idle_clients_and_stops_when_they_close() {
    let mut server = TestServer::start(|c| {
        c.shutdown_grace = Duration::from_secs(30);
        c.linger = Duration::from_secs(30);
    });
    let mut client = connect(server.echo);
    round_trip(&mut client, b"hello");
    server.shutdown();
    let rest = read_to_eof_within(&mut client, WAIT)
        .unwrap_or_else(|(e, _)| panic!("expected FIN, got {e}"));
    assert!(rest.is_empty());
    drop(client);
    let last = server.wait_stopped(WAIT);
    assert_eq!(last.get(Metric::ClosedShutdown), 1, "stats: {last}");
}

// ---- churn ----------------------------------------------------------------------------------

/// 4 threads × 500 connect/echo/close. Slots in the endpoint table are reused constantly, so an
/// event meant for a closed connection reaching its slot's next owner would show up as a client
/// receiving bytes that are not its own.
#[test]
fn connection_churn_never_cross_delivers_data() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 500;
    let server = TestServer::start(|_| {});
    let echo = server.echo;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let seed = t * PER_THREAD + i;
                    let mut client = connect(echo);
                    round_trip(
                        &mut client,
                        &payload(seed, 1 + (seed as usize * 131) % 3000),
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        join_within(thread, Duration::from_secs(30), "a churn thread");
    }
    let total = THREADS * PER_THREAD;
    server.wait_for(WAIT, "every churned connection to close", |s| {
        s.get(Metric::Open) == 0 && s.get(Metric::ClosedPeer) == total
    });
    assert_eq!(server.get(Metric::Accepted), total);
}

// ---- water marks ----------------------------------------------------------------------------

/// With `low_water` 1, the smallest mark allowed, a throttled connection reads again only once
/// everything owed has been delivered: the last step before a connection would wedge. The
/// client sends 16 MiB (more than loopback's kernel buffers hold) on a writer thread and starts
/// reading only once the server is throttled (its buffer at the 16 KiB high-water mark), so the
/// rest can only be echoed if reading resumes.
#[test]
fn a_throttled_client_is_read_again_once_drained_below_the_low_water_mark() {
    const TOTAL: usize = 16 * 1024 * 1024;
    const HIGH: usize = 16 * 1024;
    let server = TestServer::start(|c| {
        c.high_water = HIGH;
        c.low_water = 1;
    });
    let mut reader = connect(server.echo);
    let mut writer = reader.try_clone().unwrap();
    let sent = payload(5, TOTAL);
    let to_send = sent.clone();
    // The write timeout turns a wedged server into an error here instead of a hang.
    let sender = thread::spawn(move || writer.write_all(&to_send));
    server.wait_for(WAIT, "the server to be throttled", |s| {
        s.get(Metric::BufferedPeak) == HIGH as u64
    });

    let mut echoed = Vec::with_capacity(TOTAL);
    let mut buf = vec![0; 64 * 1024];
    // A wedged connection echoes nothing more at all; a healthy one takes well under a second,
    // so the bound is generous for a loaded machine (as for the other 16 MiB transfers).
    let deadline = Instant::now() + Duration::from_secs(30);
    while echoed.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} bytes echoed within 30 s; stats: {}",
            echoed.len(),
            server.stats()
        );
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match reader.read(&mut buf) {
            Ok(0) => panic!("EOF after {} bytes", echoed.len()),
            Ok(n) => echoed.extend_from_slice(&buf[..n]),
            Err(e) if common::is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {} bytes: {e}", echoed.len()),
        }
    }
    assert!(echoed == sent, "the echo differs from what was sent");
    join_within(sender, IO_TIMEOUT, "the writer thread").expect("send 16 MiB");
}

/// A low-water mark of 0 would mean "read again once fewer than 0 bytes are owed": never, so a
/// throttled connection would wedge until its idle timeout. The server refuses to start instead.
#[test]
fn a_zero_low_water_mark_is_refused_at_start() {
    let config = Config {
        bind: "127.0.0.1".parse().unwrap(),
        echo_port: Some(0),
        files_port: Some(0),
        chat_port: Some(0),
        low_water: 0,
        ..Config::default()
    };
    match Server::bind(config) {
        Err(StartError::Config(message)) => {
            assert!(message.contains("--low-water"), "message: {message}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a server with --low-water 0 started"),
    }
}
