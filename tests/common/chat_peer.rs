//! A chat member for the tests that run several relays: one UDP socket on `127.0.0.1`, talking to
//! one relay, every receive bounded.
//!
//! Across relays, what a member hears comes through Redis, on another connection than the one
//! that carried what it said; notices from the other nodes arrive when they arrive. So beside
//! strict reads, a peer can read up to a line it waits for ([`ChatPeer::lines_until`]), and
//! [`connect_rooms`] waits, within a bound, until the relays' subscriptions carry a room's
//! traffic both ways before a test counts deliveries.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::WAIT;

/// How long a peer waits for a line it expects.
pub const RECV_WITHIN: Duration = Duration::from_secs(5);

/// How long a probe of [`connect_rooms`] waits for its echo on the far side before the next.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// A chat member.
pub struct ChatPeer {
    socket: UdpSocket,
    server: SocketAddr,
    /// The address the relay sees: the default nickname.
    pub addr: SocketAddr,
}

impl ChatPeer {
    /// A socket on a free port of `127.0.0.1`, talking to the relay at `server`.
    pub fn new(server: SocketAddr) -> ChatPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a peer socket");
        let addr = socket.local_addr().unwrap();
        ChatPeer {
            socket,
            server,
            addr,
        }
    }

    /// A member named `nick`: its first datagram, `/nick`, makes it one, and the answer is read.
    #[track_caller]
    pub fn named(server: SocketAddr, nick: &str) -> ChatPeer {
        let peer = ChatPeer::new(server);
        peer.send(&format!("/nick {nick}"));
        peer.lines_until(|line| line == format!("* you are now {nick}"));
        peer
    }

    /// Sends `text` as one datagram.
    #[track_caller]
    pub fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.server)
            .unwrap_or_else(|e| panic!("{} send: {e}", self.addr));
    }

    /// The next line within `wait`, without its `\n`, if one comes.
    #[track_caller]
    pub fn recv_within(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0; 64 * 1024];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.server, "{} heard a stranger", self.addr);
                let text = String::from_utf8_lossy(&buf[..n]);
                let line = text.strip_suffix('\n').expect("a server line ends in \\n");
                Some(line.to_string())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("{} receive: {e}", self.addr),
        }
    }

    /// The next line, within [`RECV_WITHIN`].
    #[track_caller]
    pub fn recv_line(&self) -> String {
        self.recv_within(RECV_WITHIN)
            .unwrap_or_else(|| panic!("{} heard nothing within {RECV_WITHIN:?}", self.addr))
    }

    /// Lines up to and including the first that `last` accepts, each within [`RECV_WITHIN`].
    #[track_caller]
    pub fn lines_until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.recv_line();
            let done = last(&line);
            lines.push(line);
            if done {
                return lines;
            }
            assert!(lines.len() < 10_000, "{} never got its line", self.addr);
        }
    }

    /// Every line already waiting, without waiting for more.
    pub fn drain(&self) -> Vec<String> {
        std::iter::from_fn(|| self.recv_within(Duration::from_millis(1))).collect()
    }
}

/// Waits until what `from` says reaches `to` (on another relay), then reads both up to a last
/// marker, so that a test starts from quiet sockets. Relays subscribe to a room's channel as it
/// opens on them, on another connection than the one they publish on: until Redis has the
/// subscription, messages for the room are not delivered (pub/sub is at most once), so `from`
/// sends numbered probes until one arrives.
#[track_caller]
pub fn connect_rooms(from: &ChatPeer, to: &ChatPeer) {
    let deadline = Instant::now() + WAIT * 2;
    for probe in 0.. {
        assert!(
            Instant::now() < deadline,
            "{}'s room never reached {} through the bus",
            from.addr,
            to.addr
        );
        from.send(&format!("probe {probe}"));
        if to
            .recv_within(PROBE_EVERY)
            .is_some_and(|line| line.contains(": probe "))
        {
            break;
        }
    }
    from.send("connected");
    let connected = |line: &str| line.ends_with(": connected");
    to.lines_until(connected);
    from.lines_until(connected);
}
