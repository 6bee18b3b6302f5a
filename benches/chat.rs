//! Chat relay throughput: datagrams delivered per second, and the relay's CPU time per datagram.
//!
//! Run with `cargo bench --bench chat` (add `-- --quick` for short rounds).
//!
//! One sender and N other members share a room on an in-process readyloop (rate limit off). The
//! sender keeps a window of messages in flight, paced by the thread that receives every copy (its
//! own included), so the measurement is closed-loop and nothing is lost to overrun buffers. Every message is delivered
//! N + 1 times (the sender gets its copy); the table gives deliveries per second, the server
//! thread's CPU time per delivery, and the share of expected deliveries that arrived.
//!
//! Beside each row stands the floor: a minimal program that sends the same relayed line to the
//! same number of loopback sockets, one `sendto` per member, and again with one `sendmmsg` per
//! message ([`floor`]). Its CPU time per datagram is what the kernel charges the sender for
//! sending and delivering it on loopback, with nothing of a relay around it; readyloop's cost
//! divided by it (`x floor`) is what the relay adds.
//!
//! The two are measured alike, since on loopback the sender's core also delivers each datagram
//! and wakes its receiver: with two or more cores the relay and the floor's sender run on core 0
//! and every client on core 1, as in `benches/versus_tokio.rs` (waking a thread on another core
//! costs more than on one's own); and on both sides one thread receives every datagram, on one
//! mio loop, and paces the sender ([`Pacer`]). When the relay's sender instead blocked in `recv`
//! for its own copies, the relay paid for waking a second thread each message, which the floor
//! never did: that made the relay look 1.3x the floor at 10 members where it is 1.05x.

mod support;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use readyloop::sys::pin_to_core;
use support::{loopback_config, machine, median, start_readyloop, thread_cpu};

/// Other members in the room besides the sender.
const MEMBERS: [usize; 2] = [10, 100];

/// Messages the sender keeps in flight.
const WINDOW: usize = 8;

/// The core of the relay and of the floor's sender, when pinned.
const SERVER_CORE: usize = 0;
/// The core of every client, when pinned.
const CLIENT_CORE: usize = 1;

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (window, rounds) = if quick {
        (Duration::from_millis(500), 1)
    } else {
        (Duration::from_secs(2), 5)
    };
    // Read before pinning: a pinned thread sees one core.
    let machine = machine();
    let pin = thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    if pin {
        // Every client thread spawned from here inherits the clients' core.
        pin_to_core(CLIENT_CORE).expect("core 1 exists");
    }
    let server = start_readyloop(readyloop::Config {
        pin: pin.then_some(SERVER_CORE),
        chat_rate: 0,
        chat_max_members: 100_000,
        chat_max_rooms: 10_000,
        ..loopback_config()
    });
    println!("chat relay, 1 sender, {rounds} round(s) of {window:?}, medians");
    println!("{machine}");
    if pin {
        println!("relay and floor sender on core {SERVER_CORE}, clients on core {CLIENT_CORE}");
    }
    println!(
        "{:>8} | {:>15} | {:>22} | {:>9} | {:>14} | {:>14} | {:>8}",
        "members",
        "deliveries/s",
        "server CPU / delivery",
        "delivered",
        "floor sendto",
        "floor sendmmsg",
        "x floor"
    );
    for members in MEMBERS {
        let (mut rates, mut costs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut floors, mut floors_mmsg) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // The floor in the same round, so both see the same machine.
            floors.push(floor(members + 1, Fan::Sendto, pin).expect("the sendto floor"));
            floors_mmsg.push(floor(members + 1, Fan::Sendmmsg, pin).expect("the sendmmsg floor"));
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
        let (cost, floor) = (median(&mut costs), median(&mut floors));
        println!(
            "{members:>8} | {:>15.0} | {:>19.0} ns | {:>8.2}% | {:>11.0} ns | {:>11.0} ns | {:>7.2}x",
            median(&mut rates),
            cost,
            median(&mut ratios) * 100.0,
            floor,
            median(&mut floors_mmsg),
            cost / floor
        );
    }
}

/// How the floor program hands a message's copies to the kernel.
#[derive(Debug, Clone, Copy)]
enum Fan {
    /// One `sendto` per member, as the relay sends.
    Sendto,
    /// One `sendmmsg` per message, every member's copy in it.
    Sendmmsg,
}

/// Messages the floor program sends to every member, per measurement.
const FLOOR_MESSAGES: u64 = 4_000;

/// The floor: CPU nanoseconds per datagram of a sender that only fans one line out to `members`
/// loopback sockets, [`FLOOR_MESSAGES`] times. Another thread drains the sockets, as the
/// generator's members do, and the sender stays within [`WINDOW`] messages of it so no socket
/// overflows (a dropped datagram costs less and would flatter the floor). Only the sending is
/// timed, on the sender's own CPU clock: waiting for the drain costs nothing counted. With `pin`
/// the sender runs on the relay's core and the drain on the clients'.
fn floor(members: usize, fan: Fan, pin: bool) -> io::Result<f64> {
    thread::spawn(move || {
        if pin {
            pin_to_core(SERVER_CORE)?;
        }
        fan_out(members, fan, pin)
    })
    .join()
    .expect("the floor's sender")
}

/// The floor's sender and its drain: see [`floor`].
fn fan_out(members: usize, fan: Fan, pin: bool) -> io::Result<f64> {
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let sockets: Vec<UdpSocket> = (0..members)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    let addresses: Vec<SocketAddr> = sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<io::Result<_>>()?;
    // The line the relay sends: `<ip:port>: <text>\n`.
    let line = format!("{}: benchmark message\n", sender.local_addr()?);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let draining = {
        let (progress, stop) = (Arc::clone(&progress), Arc::clone(&stop));
        thread::spawn(move || {
            if pin {
                pin_to_core(CLIENT_CORE).expect("core 1 exists");
            }
            count_until(sockets, &stop, &progress)
        })
    };
    let targets: Vec<libc::sockaddr_in> = addresses.iter().map(sockaddr).collect();
    let mut pacer = Pacer::new(&progress, members as u64);
    let mut spent = Duration::ZERO;
    for message in 0..FLOOR_MESSAGES {
        pacer.wait(message, WINDOW as u64 - 1);
        let before = own_cpu();
        match fan {
            Fan::Sendto => {
                for to in &addresses {
                    sender.send_to(line.as_bytes(), to)?;
                }
            }
            Fan::Sendmmsg => send_all(&sender, line.as_bytes(), &targets)?,
        }
        spent += own_cpu().saturating_sub(before);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = draining.join();
    Ok(spent.as_nanos() as f64 / (FLOOR_MESSAGES * members as u64) as f64)
}

/// One `sendmmsg` carrying `line` to every target (in several calls if the kernel takes fewer).
fn send_all(socket: &UdpSocket, line: &[u8], targets: &[libc::sockaddr_in]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut libc::c_void,
        iov_len: line.len(),
    };
    let mut headers: Vec<libc::mmsghdr> = targets
        .iter()
        .map(|to| {
            // SAFETY: an all-zero msghdr is a valid empty one; the fields set below complete it.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = to as *const libc::sockaddr_in as *mut libc::c_void;
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            header.msg_hdr.msg_iov = &mut iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    let mut done = 0;
    while done < headers.len() {
        let left = &mut headers[done..];
        // SAFETY: every header points at `iov` and at one of `targets`, which outlive the call;
        // the kernel reads them and writes only `msg_len`.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                left.as_mut_ptr(),
                left.len() as libc::c_uint,
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        done += sent as usize;
    }
    Ok(())
}

/// An IPv4 address as the kernel takes it.
fn sockaddr(address: &SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = address else {
        unreachable!("the floor binds 127.0.0.1 only");
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// This thread's CPU time so far.
fn own_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the one struct passed, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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

    // The sender's copies are counted with the members': the relay's sends wake one receiving
    // thread, as the floor's do, and the sender waits for that thread, on its own core.
    let mut receivers = listeners;
    receivers.push(sender.try_clone()?);
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let counting = {
        let (progress, stop) = (Arc::clone(&progress), Arc::clone(&stop));
        thread::spawn(move || count_until(receivers, &stop, &progress))
    };
    let mut pacer = Pacer::new(&progress, members as u64 + 1);
    let mut sent = 0;
    let cpu_before = thread_cpu(tid);
    let start = Instant::now();
    while start.elapsed() < window && pacer.wait(sent, WINDOW as u64 - 1) {
        // The counting thread made the shared socket non-blocking: a full buffer is a pause.
        match sender.send(b"benchmark message") {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    // Let the last window arrive.
    pacer.wait(sent, 0);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu(tid) - cpu_before).as_nanos() as f64;
    stop.store(true, Ordering::Relaxed);
    let received = counting.join().expect("the counting thread");
    let expected = sent * (members as u64 + 1);
    Ok((
        received as f64 / elapsed,
        cpu / received.max(1) as f64,
        received as f64 / expected as f64,
    ))
}

/// Datagrams a receiving thread has counted so far, published after each batch, for a sender to
/// wait on. `None` until the thread is ready: what it drains before is not counted.
#[derive(Default)]
struct Progress {
    count: Mutex<Option<u64>>,
    changed: Condvar,
}

impl Progress {
    fn publish(&self, count: u64) {
        *self.count.lock().expect("not poisoned") = Some(count);
        self.changed.notify_all();
    }
}

/// Holds a sender to a window of messages ahead of its receivers. The floor and the relay's
/// measurement are paced alike, so their receivers are woken alike: a sender's CPU time, which
/// on loopback includes waking the receiver, then compares.
struct Pacer<'a> {
    progress: &'a Progress,
    /// Datagrams each message becomes.
    per_message: u64,
    /// False once deliveries stalled: a lost datagram is never counted, so waiting stops.
    paced: bool,
}

impl<'a> Pacer<'a> {
    /// Waits (at most a second) for the receiving thread to be ready.
    fn new(progress: &'a Progress, per_message: u64) -> Pacer<'a> {
        let ready = progress.count.lock().expect("not poisoned");
        let wait = Duration::from_secs(1);
        let ready = progress
            .changed
            .wait_timeout_while(ready, wait, |c| c.is_none());
        assert!(
            ready.expect("not poisoned").0.is_some(),
            "the receiver never started"
        );
        Pacer {
            progress,
            per_message,
            paced: true,
        }
    }

    /// Waits until no more than `ahead` of `sent` messages are still on their way, or a second
    /// passes without that: then it says so, stops pacing for good, and returns false.
    fn wait(&mut self, sent: u64, ahead: u64) -> bool {
        if !self.paced {
            return true;
        }
        let target = sent.saturating_sub(ahead) * self.per_message;
        let count = self.progress.count.lock().expect("not poisoned");
        let wait = Duration::from_secs(1);
        let (count, waited) = self
            .progress
            .changed
            .wait_timeout_while(count, wait, |c| c.is_some_and(|c| c < target))
            .expect("not poisoned");
        drop(count);
        if waited.timed_out() {
            eprintln!("datagrams lost; the rest of this measurement is not paced");
            self.paced = false;
        }
        self.paced
    }
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

/// Counts datagrams arriving on `sockets` until `stop`, with one mio loop; publishes the count
/// so far in `progress` after each batch, and returns the total.
fn count_until(sockets: Vec<UdpSocket>, stop: &AtomicBool, progress: &Progress) -> u64 {
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
    progress.publish(0);
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
        if !events.is_empty() {
            progress.publish(count);
        }
    }
}
