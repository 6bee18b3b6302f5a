//! Chat relay throughput: datagrams delivered per second, and the relay's CPU time per datagram.
//!
//! Run with `cargo bench --bench chat` (add `-- --quick` for short rounds).
//!
//! One sender and N other members share a room on an in-process readyloop (rate limit off). The
//! sender keeps a window of messages in flight, paced by its own copies coming back, so the
//! measurement is closed-loop and nothing is lost to overrun buffers. Every message is delivered
//! N + 1 times (the sender gets its copy); the table gives deliveries per second, the server
//! thread's CPU time per delivery, and the share of expected deliveries that arrived.

mod support;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use support::{loopback_config, machine, median, start_readyloop, thread_cpu};

/// Other members in the room besides the sender.
const MEMBERS: [usize; 2] = [10, 100];

/// Messages the sender keeps in flight.
const WINDOW: usize = 8;

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (window, rounds) = if quick {
        (Duration::from_millis(500), 1)
    } else {
        (Duration::from_secs(2), 5)
    };
    let server = start_readyloop(readyloop::Config {
        chat_rate: 0,
        chat_max_members: 100_000,
        chat_max_rooms: 10_000,
        ..loopback_config()
    });
    println!("chat relay, 1 sender, {rounds} round(s) of {window:?}, medians");
    println!("{}", machine());
    println!(
        "{:>8} | {:>15} | {:>22} | {:>9}",
        "members", "deliveries/s", "server CPU / delivery", "delivered"
    );
    for members in MEMBERS {
        let (mut rates, mut costs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let room = format!("bench-{members}-{round}");
            let (rate, cost, ratio) = measure(
                server.addresses.chat.expect("chat is on"),
                &room,
                members,
                window,
                server.tid,
            )
            .expect("a chat measurement");
            rates.push(rate);
            costs.push(cost);
            ratios.push(ratio);
        }
        println!(
            "{members:>8} | {:>15.0} | {:>19.0} ns | {:>8.2}%",
            median(&mut rates),
            median(&mut costs),
            median(&mut ratios) * 100.0
        );
    }
}

/// One measurement: returns deliveries per second, server CPU nanoseconds per delivery, and the
/// share of expected deliveries that arrived.
fn measure(
    server: SocketAddr,
    room: &str,
    members: usize,
    window: Duration,
    tid: i32,
) -> io::Result<(f64, f64, f64)> {
    let sender = member(server, room)?;
    let listeners: Vec<UdpSocket> = (0..members)
        .map(|_| member(server, room))
        .collect::<io::Result<_>>()?;

    let stop = Arc::new(AtomicBool::new(false));
    let counting = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || count_until(listeners, &stop))
    };

    sender.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    let (mut sent, mut echoed) = (0u64, 0u64);
    let cpu_before = thread_cpu(tid);
    let start = Instant::now();
    while start.elapsed() < window {
        while sent - echoed < WINDOW as u64 {
            sender.send(b"benchmark message")?;
            sent += 1;
        }
        match sender.recv(&mut buf) {
            Ok(_) => echoed += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break, // a lost copy: stop here
            Err(e) => return Err(e),
        }
    }
    // Let the last window arrive.
    while echoed < sent && sender.recv(&mut buf).is_ok() {
        echoed += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu(tid) - cpu_before).as_nanos() as f64;
    stop.store(true, Ordering::Relaxed);
    let received = counting.join().expect("the counting thread") + echoed;
    let expected = sent * (members as u64 + 1);
    Ok((
        received as f64 / elapsed,
        cpu / received.max(1) as f64,
        received as f64 / expected as f64,
    ))
}

/// A socket that has joined `room` and read the replies to joining.
fn member(server: SocketAddr, room: &str) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(server)?;
    socket.send(format!("/join {room}").as_bytes())?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    // The reply "* you joined ..." arrives last, after the notices for the lobby.
    loop {
        let n = socket.recv(&mut buf)?;
        if buf[..n].starts_with(b"* you joined") {
            break;
        }
    }
    // Notices of later joiners arrive while others join: drain them at the start of counting.
    Ok(socket)
}

/// Counts datagrams arriving on `sockets` until `stop`, with one mio loop.
fn count_until(sockets: Vec<UdpSocket>, stop: &AtomicBool) -> u64 {
    let mut poll = Poll::new().expect("a poll");
    let mut sockets: Vec<mio::net::UdpSocket> = sockets
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).expect("non-blocking");
            mio::net::UdpSocket::from_std(s)
        })
        .collect();
    for (i, socket) in sockets.iter_mut().enumerate() {
        poll.registry()
            .register(socket, Token(i), Interest::READABLE)
            .expect("register");
    }
    // Join notices still queued from the setup are not deliveries of the measurement.
    let mut buf = [0u8; 2048];
    for socket in &sockets {
        while socket.recv(&mut buf).is_ok() {}
    }
    let mut events = Events::with_capacity(1024);
    let mut count = 0;
    let mut quiet_since = None;
    loop {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .expect("poll");
        if events.is_empty() && stop.load(Ordering::Relaxed) {
            // Stopped, and nothing came for a while: the last deliveries are in.
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(100) {
                return count;
            }
        }
        for event in events.iter() {
            quiet_since = None;
            let socket = &sockets[event.token().0];
            while socket.recv(&mut buf).is_ok() {
                count += 1;
            }
        }
    }
}
