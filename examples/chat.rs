//! An interactive client for readyloop's UDP chat relay. Run it from the repository root with
//! `cargo run --example chat -- HOST:PORT [--nick NAME]`.
//!
//! Each line you type goes to the server as one datagram, and each datagram the server sends is
//! printed as it arrives: `<nick>: <text>` from your room, `* ...` from the server itself (`/help`
//! lists the commands). Ctrl-D or `/quit` leaves the room and exits.
//!
//! The chat of the Python tutorial readyloop grew out of (see the README) asked whether to send
//! or to receive, and could not wait for both at once. Here two threads do it: one blocks reading
//! the keyboard and sends, the main one blocks on the socket and prints. For a program with two
//! inputs that is the simplest correct design; the server, with thousands of peers, uses a
//! readiness loop instead. It leaves out line editing (an incoming line may land in the middle of
//! what you type) and retries: UDP may lose a line.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::panic;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;

/// How long the receiver waits on a quiet socket before it checks whether input has ended:
/// 200 ms is too short for a person to notice when quitting, and waking that often costs nothing.
const POLL: Duration = Duration::from_millis(200);
/// Receive buffer, in bytes: the largest UDP payload, so no datagram is ever cut short.
const MAX_DATAGRAM: usize = 64 * 1024;
/// Bytes the first datagram is padded to with spaces, which the server trims. A server started
/// with `--chat-verify` answers a stranger with at most 3 times the bytes it got, and its 40-byte
/// challenge needs 14; to a shorter datagram it would not answer at all.
const OPENING_SIZE: usize = 64;
/// Only the server writes lines starting with `* `: a member's line starts with its nick and `:`.
const CHALLENGE: &str = "* verify with: /verify ";
const VERIFIED: &str = "* verified: ";

/// Chat through a readyloop chat port; Ctrl-D or /quit to leave.
#[derive(Parser)]
struct Args {
    /// The server's chat port, e.g. 127.0.0.1:8080.
    #[arg(value_name = "HOST:PORT")]
    addr: String,
    /// The nickname to take on arrival (1-32 characters, no spaces or ':').
    #[arg(long, value_name = "NAME")]
    nick: Option<String>,
}

/// Everything that ends the client early, each naming what to check.
#[derive(Debug)]
enum Error {
    /// (The address) names no IP address and port we can use.
    Resolve(String, io::Error),
    /// No UDP socket could be set up towards (the address).
    Socket(String, io::Error),
    /// Sending to or receiving from (the address) failed.
    Network(String, io::Error),
    /// Standard input could not be read, e.g. it held bytes that are not UTF-8.
    Stdin(io::Error),
    /// Standard output is gone.
    Stdout(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Resolve(addr, e) => write!(f, "cannot resolve {addr}: {e}"),
            Error::Socket(addr, e) => write!(f, "cannot set up a UDP socket to {addr}: {e}"),
            // The kernel reports the ICMP "port unreachable" that a datagram provoked this way.
            Error::Network(addr, e) if e.kind() == io::ErrorKind::ConnectionRefused => write!(
                f,
                "nothing listens on UDP {addr}: is readyloop running, with that chat port?"
            ),
            Error::Network(addr, e) => write!(f, "chat with {addr} failed: {e}"),
            Error::Stdin(e) => write!(f, "cannot read standard input: {e}"),
            Error::Stdout(e) => write!(f, "cannot print to standard output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Two handles on one UDP socket `connect`ed to `addr`, one for each thread. Connected, `send`
/// needs no address and the kernel drops datagrams from anyone else: what we print is the server's.
fn open(addr: &str) -> Result<(UdpSocket, UdpSocket), Error> {
    let resolve_error = |e| Error::Resolve(addr.into(), e);
    let found: Vec<SocketAddr> = addr.to_socket_addrs().map_err(resolve_error)?.collect();
    // readyloop binds IPv4 by default, and `localhost` often resolves to ::1 first: prefer IPv4.
    let Some(&server) = found.iter().find(|a| a.is_ipv4()).or(found.first()) else {
        let none = io::Error::new(io::ErrorKind::NotFound, "no address found");
        return Err(resolve_error(none));
    };
    // Port 0: the system picks a free port, and our address becomes our name in the chat.
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let setup = || -> io::Result<_> {
        let socket = UdpSocket::bind(local)?;
        socket.connect(server)?;
        // Wakes the receiving loop now and then, so it notices when the input thread ends.
        socket.set_read_timeout(Some(POLL))?;
        Ok((socket.try_clone()?, socket))
    };
    setup().map_err(|e| Error::Socket(addr.into(), e))
}

/// Sends `text` as one datagram to the server at `addr`, which `socket` is connected to.
fn send(socket: &UdpSocket, addr: &str, text: &str) -> Result<(), Error> {
    let sent = socket.send(text.as_bytes());
    sent.map(drop).map_err(|e| Error::Network(addr.into(), e))
}

/// The input thread: sends each typed line as one datagram until EOF (Ctrl-D) or `/quit`.
fn type_lines(socket: UdpSocket, addr: String) -> Result<(), Error> {
    let mut left = false; // whether the last line sent was `/leave`
    for line in io::stdin().lock().lines() {
        let line = line.map_err(Error::Stdin)?;
        match line.trim_end() {
            "" => continue, // the room would see `<nick>: ` and nothing after it
            "/quit" => break,
            text => left = text == "/leave",
        }
        send(&socket, &addr, &line)?;
    }
    // Tell the room we are going, rather than let the server expire us after its idle time; but
    // not twice, since the server would take a second `/leave` as a newcomer's first datagram.
    if left {
        Ok(())
    } else {
        send(&socket, &addr, "/leave")
    }
}

/// Prints one datagram without its `\n`. A member could send terminal escape sequences, or a
/// `\n` and a fake `* ` line after it: each control character is shown as `�` instead.
fn print(text: &str) -> Result<(), Error> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let safe = text.replace(char::is_control, "\u{fffd}");
    writeln!(io::stdout().lock(), "{safe}").map_err(Error::Stdout)
}

fn run(args: Args) -> Result<(), Error> {
    use io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    let ((socket, typist), addr) = (open(&args.addr)?, args.addr);
    // The server sends nothing to an address it has not heard from: introduce ourselves at once
    // with a command whose answer is worth reading.
    let opening = args.nick.map_or("/who".into(), |n| format!("/nick {n}"));
    let opening = format!("{opening:<OPENING_SIZE$}");
    send(&socket, &addr, &opening)?;

    // The input thread only sends; this one receives, and answers the server's challenge.
    let typist_addr = addr.clone();
    let input = thread::spawn(move || type_lines(typist, typist_addr));

    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            // Quiet for POLL (an expired read timeout is WouldBlock on Unix, TimedOut on Windows).
            // Once input has ended we stop at the first quiet spell: having left, we get nothing
            // after the answer to `/leave`, and that answer is printed before we go.
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) && input.is_finished() => break,
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => continue,
            Err(e) => return Err(Error::Network(addr, e)),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        print(&text)?;
        if let Some(cookie) = text.trim_end().strip_prefix(CHALLENGE) {
            // --chat-verify: prove that we receive what is sent to our address.
            eprintln!("chat: the server asks us to prove our address; sending /verify {cookie}");
            send(&socket, &addr, &format!("/verify {cookie}"))?;
        } else if text.starts_with(VERIFIED) {
            // The server dropped the datagram it challenged: send it again, now that we are in.
            send(&socket, &addr, &opening)?;
        }
    }
    // The input thread has ended: take its outcome, or pass its panic (a bug) on.
    input.join().unwrap_or_else(|p| panic::resume_unwind(p))
}

fn main() -> ExitCode {
    // On a usage error clap prints the problem and a hint, and exits with code 2 itself.
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}
