//! TCP echo (RFC 862) end to end: every byte a client sends comes back, unchanged, in order, to
//! that client only, whatever the client's size, speed or manners.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use readyloop::Metric;
use sha2::{Digest, Sha256};
use socket2::SockRef;

use common::{
    IO_TIMEOUT, TestServer, WAIT, connect, join_within, payload, prompt_bound, read_to_eof_within,
    round_trip, slowest_round_trip,
};

#[test]
fn round_trip_returns_the_same_bytes() {
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    round_trip(&mut client, b"hello, readyloop\n");
    drop(client);
    server.wait_for(WAIT, "the close to be counted", |s| {
        s.get(Metric::ClosedPeer) == 1 && s.get(Metric::Open) == 0
    });
    let stats = server.stats();
    assert_eq!(stats.get(Metric::Accepted), 1);
    assert_eq!(stats.get(Metric::BytesIn), 17);
    assert_eq!(stats.get(Metric::BytesOut), 17);
}

#[test]
fn a_thousand_messages_on_one_connection_each_come_back_before_the_next() {
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    for i in 0..1000u64 {
        let message = format!("message {i}: {}\n", "x".repeat((i % 97) as usize));
        round_trip(&mut client, message.as_bytes());
    }
    assert_eq!(
        server.get(Metric::Open),
        1,
        "one connection carried every message"
    );
}

/// Echo at the floor of a readiness loop: once a connection is open, each round trip costs the
/// server one `recvfrom` and one `sendto` (a read shorter than asked proves the socket drained, so
/// no read comes back with `WouldBlock`), and one `epoll_wait`, since the client waits for each
/// echo before it sends again. Nothing else: no registration, no accept, no close. The loop adds
/// its counts to the figures at the end of each pass, so the test waits for the last read to show.
#[test]
fn each_round_trip_costs_one_recvfrom_one_sendto_and_one_poll() {
    const TRIPS: u64 = 200;
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    round_trip(&mut client, b"warm-up");
    server.wait_for(WAIT, "the warm-up read to be counted", |s| {
        s.get(Metric::SyscallsRecvfrom) >= 1
    });
    let before = server.stats();
    let started = Instant::now();
    for i in 0..TRIPS {
        round_trip(&mut client, &payload(i, 64));
    }
    let took = started.elapsed();
    let reads = before.get(Metric::SyscallsRecvfrom) + TRIPS;
    server.wait_for(WAIT, "every read to be counted", |s| {
        s.get(Metric::SyscallsRecvfrom) >= reads
    });
    let after = server.stats();
    let moved = |metric| after.get(metric) - before.get(metric);

    assert_eq!(moved(Metric::SyscallsRecvfrom), TRIPS, "{after}");
    assert_eq!(moved(Metric::SyscallsSendto), TRIPS, "{after}");
    for metric in [
        Metric::SyscallsEpollCtl,
        Metric::SyscallsAccept4,
        Metric::SyscallsClose,
        Metric::SyscallsShutdown,
        Metric::SyscallsSetsockopt,
    ] {
        assert_eq!(moved(metric), 0, "{metric:?}: {after}");
    }
    // Timers wake the loop too: the admin service samples the figures once a second.
    let timers = took.as_secs() + 2;
    let polls = moved(Metric::SyscallsEpollWait);
    assert!(
        (TRIPS..=TRIPS + timers).contains(&polls),
        "{polls} polls for {TRIPS} round trips in {took:?}"
    );
}

/// A connection's whole life as system calls: `accept4` twice (the client, then the empty queue
/// that ends the accept drain), one `epoll_ctl` to register it (on Linux closing the socket takes
/// it out of the poll set, elsewhere one more removes it), `recvfrom` for its message and for its
/// FIN, one `sendto` for the echo, and the `close`.
#[test]
fn a_connection_costs_two_accepts_a_registration_two_reads_a_write_and_a_close() {
    let server = TestServer::start(|_| {});
    let before = server.stats();
    let mut client = connect(server.echo);
    round_trip(&mut client, b"one message");
    drop(client);
    server.wait_for(WAIT, "the close to be counted", |s| {
        s.get(Metric::ClosedPeer) == 1
            && s.get(Metric::SyscallsClose) > before.get(Metric::SyscallsClose)
    });
    let after = server.stats();
    let moved = |metric| after.get(metric) - before.get(metric);

    let registrations = if readyloop::sys::CLOSING_DEREGISTERS {
        1
    } else {
        2
    };
    for (metric, calls) in [
        (Metric::SyscallsAccept4, 2),
        (Metric::SyscallsEpollCtl, registrations),
        (Metric::SyscallsRecvfrom, 2),
        (Metric::SyscallsSendto, 1),
        (Metric::SyscallsClose, 1),
        (Metric::SyscallsShutdown, 0),
        (Metric::SyscallsSetsockopt, 0),
    ] {
        assert_eq!(moved(metric), calls, "{metric:?}: {after}");
    }
}

/// A writer thread sends 16 MiB and then half-closes; the reader, on this thread, hashes what
/// comes back. Sending and receiving at once keeps both directions moving, as a real bulk client
/// would; the digests prove every byte came back in order, and EOF proves nothing extra did.
#[test]
fn sixteen_mebibytes_come_back_with_the_same_digest() {
    const TOTAL: usize = 16 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let server = TestServer::start(|_| {});
    let mut reader = connect(server.echo);
    let mut writer = reader.try_clone().unwrap();

    let sender = thread::spawn(move || {
        let mut digest = Sha256::new();
        for (seed, _) in (0..TOTAL).step_by(CHUNK).enumerate() {
            let chunk = payload(seed as u64, CHUNK);
            digest.update(&chunk);
            writer.write_all(&chunk).expect("send a chunk");
        }
        writer.shutdown(Shutdown::Write).unwrap();
        digest.finalize()
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut digest = Sha256::new();
    let mut received = 0;
    let mut buf = vec![0; CHUNK];
    loop {
        assert!(
            Instant::now() < deadline,
            "only {received} bytes back in 30 s"
        );
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                digest.update(&buf[..n]);
                received += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {received} bytes: {e}"),
        }
    }
    let sent = join_within(sender, IO_TIMEOUT, "the writer thread");
    assert_eq!(received, TOTAL);
    assert_eq!(
        digest.finalize(),
        sent,
        "the echo's SHA-256 differs from what was sent"
    );
}

/// All 200 connections are open before any of them talks, and a barrier releases them together,
/// so the loop really juggles 200 clients at once.
#[test]
fn two_hundred_concurrent_clients_each_get_only_their_own_bytes() {
    const CLIENTS: u64 = 200;
    const ROUNDS: u64 = 5;
    let server = TestServer::start(|_| {});
    let clients: Vec<_> = (0..CLIENTS).map(|_| connect(server.echo)).collect();
    server.wait_for(WAIT, "every client to be accepted", |s| {
        s.get(Metric::Open) == CLIENTS
    });

    let start = Arc::new(Barrier::new(CLIENTS as usize));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, mut client)| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    let seed = id as u64 * ROUNDS + round;
                    round_trip(
                        &mut client,
                        &payload(seed, 100 + (seed as usize * 37) % 4000),
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        join_within(thread, Duration::from_secs(20), "a client thread");
    }
    server.wait_for_no_open_connections();
    assert_eq!(server.get(Metric::ClosedPeer), CLIENTS);
}

/// The client half-closes after sending 1 MiB, while most of the echo is still on its way back
/// (the server has been throttled by its high-water mark meanwhile). The server must keep
/// delivering after the client's FIN, and only then close.
#[test]
fn half_close_still_returns_every_byte() {
    const TOTAL: usize = 1024 * 1024;
    let server = TestServer::start(|_| {});
    let mut reader = connect(server.echo);
    let mut writer = reader.try_clone().unwrap();
    let sent = payload(7, TOTAL);
    let to_send = sent.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&to_send).expect("send 1 MiB");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });

    let echoed = read_to_eof_within(&mut reader, Duration::from_secs(20))
        .unwrap_or_else(|(e, data)| panic!("read failed after {} bytes: {e}", data.len()));
    join_within(sender, IO_TIMEOUT, "the writer thread");
    assert_eq!(echoed.len(), TOTAL);
    assert!(echoed == sent, "the echo differs from what was sent");
    server.wait_for(
        WAIT,
        "the connection to close as finished by the peer",
        |s| s.get(Metric::ClosedPeer) == 1 && s.get(Metric::Open) == 0,
    );
}

/// A hog sends as fast as the server takes it (non-blocking writes, up to 64 MiB, bounded in
/// time) and never reads. Once the hog's echo has filled its buffer to the high-water mark, a
/// second client's round trips must stay prompt (within [`prompt_bound`] of its trips before the
/// hog came), and the buffer must never grow past the mark.
#[test]
fn a_client_that_never_reads_is_held_to_the_high_water_mark() {
    const HIGH: usize = 64 * 1024;
    const ATTEMPT: usize = 64 * 1024 * 1024;
    let server = TestServer::start(|c| {
        c.high_water = HIGH;
        c.low_water = HIGH / 4;
    });
    let mut other = connect(server.echo);
    let bound = prompt_bound(slowest_round_trip(&mut other, 20));

    let hog = connect(server.echo);
    hog.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hog_thread = thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut hog = hog;
            let chunk = payload(1, 64 * 1024);
            let give_up = Instant::now() + Duration::from_secs(10);
            let mut written = 0;
            while written < ATTEMPT && !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                match hog.write(&chunk) {
                    Ok(n) => written += n,
                    // Pushed back: the server stopped reading. Try again shortly, as a
                    // determined client would.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("hog write failed after {written} bytes: {e}"),
                }
            }
            (hog, written)
        }
    });

    server.wait_for(WAIT, "the hog's buffer to reach the high-water mark", |s| {
        s.get(Metric::BufferedPeak) >= HIGH as u64
    });
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        round_trip(&mut other, &payload(100 + i, 512));
        slowest = slowest.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let (_hog, written) = join_within(hog_thread, IO_TIMEOUT, "the hog thread");

    assert!(
        slowest < bound,
        "a round trip took {slowest:?} beside the hog, more than {bound:?}"
    );
    let peak = server.get(Metric::BufferedPeak);
    assert!(
        peak <= HIGH as u64,
        "one connection buffered {peak} bytes ({written} sent by the hog), above the high-water \
         mark {HIGH}"
    );
}

/// The client sends data, lets the server read some of it, then closes with `SO_LINGER` 0, which
/// makes the kernel send RST instead of FIN (and drop whatever the server echoed back unread).
#[test]
fn reset_mid_stream_leaves_the_server_serving() {
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    client.write_all(&payload(3, 32 * 1024)).unwrap();
    server.wait_for(WAIT, "the server to read some input", |s| {
        s.get(Metric::BytesIn) > 0
    });
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);

    server.wait_for(WAIT, "the reset connection to be closed", |s| {
        s.get(Metric::Open) == 0
    });
    // The client never sent FIN, so no read can end in EOF before the reset is seen: on Linux
    // the first read or write after the RST fails with `ConnectionReset` (a write's EPIPE
    // counts as the peer gone, too), and the server closes on that first failure.
    let stats = server.stats();
    assert_eq!(
        stats.get(Metric::ClosedReset),
        1,
        "closed as reset; stats: {stats}"
    );
    assert_eq!(
        stats.get(Metric::ClosedError),
        0,
        "a reset is not a server error"
    );

    let mut next = connect(server.echo);
    round_trip(&mut next, b"still serving?");
}

/// The tutorial's Python client, step by step: `connect`, `send(data.encode("gbk"))` of a line
/// typed at `input()` (so no newline), a single `recv(1024)`, `close()`.
#[test]
fn tutorial_client_gets_its_gbk_line_back_unchanged() {
    // "你好，服务器" ("hello, server") encoded as GBK.
    const GBK_LINE: &[u8] = &[
        0xc4, 0xe3, 0xba, 0xc3, 0xa3, 0xac, 0xb7, 0xfe, 0xce, 0xf1, 0xc6, 0xf7,
    ];
    let server = TestServer::start(|_| {});
    let mut client = connect(server.echo);
    assert_eq!(client.write(GBK_LINE).unwrap(), GBK_LINE.len());
    let mut recv = [0; 1024];
    let n = client.read(&mut recv).unwrap();
    assert_eq!(&recv[..n], GBK_LINE);
    drop(client);
    server.wait_for(WAIT, "the tutorial client's close to be counted", |s| {
        s.get(Metric::ClosedPeer) == 1
    });
}
