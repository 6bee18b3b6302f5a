//! The UDP chat relay over real sockets: members, rooms, nicknames, direct messages, expiry, the
//! rate limit, refusals, the member cap, verification against amplification, the tutorial's two
//! UDP programs, and the relay sharing the loop with TCP clients.
//!
//! Every peer is a `UdpSocket` on `127.0.0.1`, port 0. On loopback a datagram is in the
//! receiver's buffer by the time `send_to` returns, so once a peer has read the server's answer to
//! something, every datagram the server sent before that answer has arrived too: the tests use
//! such answers as synchronisation points and never sleep, not even to show that nothing came
//! ([`Peer::expect_silence`] asks a question instead, and checks that its answer comes first).

mod common;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    IO_TIMEOUT, TestServer, WAIT, connect, is_timeout, join_within, prompt_bound, round_trip,
    slowest_round_trip,
};
use readyloop::Metric;

/// How long [`Peer::recv_line`] waits for a datagram: far longer than any healthy loopback round
/// trip, short enough that a lost reply fails the test quickly.
const RECV_WITHIN: Duration = Duration::from_secs(5);

/// A chat client: one UDP socket on `127.0.0.1`, talking to one relay.
struct Peer {
    socket: UdpSocket,
    server: SocketAddr,
    /// The address the server sees, which is also the default nickname.
    name: String,
}

impl Peer {
    /// A socket on a free port of `127.0.0.1` that sends to the relay at `server`.
    fn new(server: SocketAddr) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a peer socket");
        socket.set_read_timeout(Some(RECV_WITHIN)).unwrap();
        let name = socket.local_addr().unwrap().to_string();
        Peer {
            socket,
            server,
            name,
        }
    }

    /// A peer that has joined the chat: its first datagram, `/who`, makes it a member of the
    /// lobby, and the reply proves it is one. Every member already in the lobby is told.
    #[track_caller]
    fn joined(server: SocketAddr) -> Peer {
        let peer = Peer::new(server);
        peer.send("/who");
        let reply = peer.recv_line();
        // A long list ends in "and N more" and may leave the newcomer out.
        let listed = reply.contains(&peer.name) || reply.ends_with(" more");
        assert!(
            reply.starts_with("* in lobby: ") && listed,
            "{} joined and asked /who, got {reply:?}",
            peer.name
        );
        peer
    }

    /// Sends `text` as one datagram, as it is (no newline added).
    #[track_caller]
    fn send(&self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    /// Sends `data` as one datagram.
    #[track_caller]
    fn send_bytes(&self, data: &[u8]) {
        let sent = self
            .socket
            .send_to(data, self.server)
            .unwrap_or_else(|e| panic!("{} send {} bytes: {e}", self.name, data.len()));
        assert_eq!(sent, data.len(), "a datagram is sent whole");
    }

    /// The next datagram within `wait`, if one comes, as it is.
    #[track_caller]
    fn recv_raw_within(&self, wait: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0; 64 * 1024];
        let result = self.socket.recv_from(&mut buf);
        self.socket.set_read_timeout(Some(RECV_WITHIN)).unwrap();
        match result {
            Ok((n, from)) => {
                assert_eq!(
                    from, self.server,
                    "{} got a datagram from a stranger",
                    self.name
                );
                Some(buf[..n].to_vec())
            }
            Err(e) if is_timeout(&e) => None,
            Err(e) => panic!("{} receive failed: {e}", self.name),
        }
    }

    /// The next datagram within `wait`, if one comes, checked to be one UTF-8 line ending in
    /// `\n`; given without its `\n`.
    #[track_caller]
    fn recv_within(&self, wait: Duration) -> Option<String> {
        self.recv_raw_within(wait)
            .map(|datagram| line_of(&datagram))
    }

    /// The next line, within [`RECV_WITHIN`].
    #[track_caller]
    fn recv_line(&self) -> String {
        self.recv_within(RECV_WITHIN)
            .unwrap_or_else(|| panic!("{} received nothing within {RECV_WITHIN:?}", self.name))
    }

    /// The next datagram is `line` (given without its `\n`).
    #[track_caller]
    fn expect(&self, line: &str) {
        let got = self.recv_line();
        assert_eq!(got, line, "{} expected {line:?}", self.name);
    }

    /// Nothing is waiting for this peer, nor on its way, from anything the relay received
    /// before now: the peer asks `/who` (which makes it a member if it was not), and the first
    /// datagram back must be the answer.
    ///
    /// The relay handles datagrams one at a time in the order they arrive, and sends everything
    /// one causes (or queues it, keeping the order) before it reads the next. Datagrams from its
    /// one socket to this one are delivered in the order sent: UDP promises no order, but on
    /// loopback the kernel hands each datagram over within `send_to`, so in practice they are.
    /// Anything caused earlier would therefore arrive ahead of the answer; no timed wait is
    /// needed to see that nothing came.
    #[track_caller]
    fn expect_silence(&self) {
        self.send("/who");
        let first = self.recv_line();
        assert!(
            first.starts_with("* in "),
            "{} expected nothing before the answer to its /who, got {first:?}",
            self.name
        );
    }

    /// Every datagram already waiting, as lines, without waiting for more.
    fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut lines = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => lines.push(line_of(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{} drain failed: {e}", self.name),
            }
        }
        self.socket.set_nonblocking(false).unwrap();
        lines
    }

    /// Nothing is waiting now. Meaningful only after a synchronisation point (a later reply to
    /// any peer, or another peer's [`Peer::expect_silence`]) by which anything sent would have
    /// arrived.
    #[track_caller]
    fn expect_nothing_more(&self) {
        let waiting = self.drain();
        assert!(waiting.is_empty(), "{} got {waiting:?}", self.name);
    }

    /// Lines up to and including `last`, within [`RECV_WITHIN`] each.
    #[track_caller]
    fn lines_until(&self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.recv_line();
            let done = line == last;
            lines.push(line);
            if done {
                return lines;
            }
            assert!(lines.len() < 10_000, "{} never got {last:?}", self.name);
        }
    }
}

/// One datagram of the server as a line: UTF-8, ending in exactly one `\n`, which is removed.
#[track_caller]
fn line_of(datagram: &[u8]) -> String {
    let text = std::str::from_utf8(datagram)
        .unwrap_or_else(|_| panic!("the server sent non-UTF-8: {datagram:?}"));
    let line = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("a server line ends in \\n: {text:?}"));
    assert!(!line.contains('\n'), "one line per datagram: {text:?}");
    line.to_string()
}

// ---------------------------------------------------------------------------------------------
// Talking
// ---------------------------------------------------------------------------------------------

#[test]
fn two_members_each_see_the_others_text_and_their_own() {
    let server = TestServer::start(|_| {});
    let alice = Peer::new(server.chat);
    alice.send("hello\n");
    alice.expect(&format!("{}: hello", alice.name));

    let bob = Peer::new(server.chat);
    bob.send("hi alice");
    alice.expect(&format!("* {} joined lobby", bob.name));
    alice.expect(&format!("{}: hi alice", bob.name));
    bob.expect(&format!("{}: hi alice", bob.name));

    alice.send("hi bob\r\n");
    bob.expect(&format!("{}: hi bob", alice.name));
    alice.expect(&format!("{}: hi bob", alice.name));
}

/// Twenty members join one after another (each join's reply comes after the notices to the
/// others), then each says one line. The last line, from the first member, comes after every
/// copy of the others, so whatever a member got before it is everything it got.
#[test]
fn twenty_members_each_receive_every_message_exactly_once_the_sender_included() {
    let server = TestServer::start(|_| {});
    let peers: Vec<Peer> = (0..20).map(|_| Peer::joined(server.chat)).collect();
    for (i, peer) in peers.iter().enumerate() {
        let notices = peer.drain();
        assert_eq!(
            notices.len(),
            19 - i,
            "{} join notices: {notices:?}",
            peer.name
        );
    }

    for (i, peer) in peers.iter().enumerate() {
        peer.send(&format!("message {i}"));
    }
    peers[0].send("the end");
    let last = format!("{}: the end", peers[0].name);
    let mut expected: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, peer)| format!("{}: message {i}", peer.name))
        .chain([last.clone()])
        .collect();
    expected.sort();
    for peer in &peers {
        let mut got = peer.lines_until(&last);
        got.sort();
        assert_eq!(got, expected, "{} received", peer.name);
    }
    assert_eq!(server.get(Metric::ChatMembers), 20);
    server.wait_for(WAIT, "every copy to be counted", |s| {
        s.get(Metric::ChatRelayed) == 21 * 20
    });
}

/// A room larger than one `sendmmsg` batch (64): a message still reaches every member exactly
/// once, and on Linux its 130 copies leave in three calls, not 130.
#[test]
fn a_message_to_a_room_larger_than_one_batch_reaches_every_member_once() {
    const MEMBERS: usize = 2 * readyloop::sys::SEND_BATCH + 2;
    let server = TestServer::start(|_| {});
    let peers: Vec<Peer> = (0..MEMBERS).map(|_| Peer::joined(server.chat)).collect();
    for peer in &peers {
        peer.drain();
    }
    // Two round trips: the relay's pass that sent the first answer has ended, and folded its
    // counts, before the second is read. Only the second pass's one call may be left out.
    peers[0].expect_silence();
    peers[0].expect_silence();
    let before = server.get(Metric::SyscallsSendmmsg);

    peers[1].send("to everyone");
    let line = format!("{}: to everyone", peers[1].name);
    for peer in &peers {
        peer.expect(&line);
    }
    // Anything else the message caused has arrived by the answer to this: there is none.
    peers[0].expect_silence();
    for peer in &peers {
        peer.expect_nothing_more();
    }
    if cfg!(target_os = "linux") {
        server.wait_for(WAIT, "the fan-out's calls to be counted", |s| {
            s.get(Metric::SyscallsSendmmsg) >= before + 3
        });
        // Three for the fan-out, one for the last answer, and perhaps the one left out above;
        // a call per member would be 130.
        let calls = server.get(Metric::SyscallsSendmmsg) - before;
        assert!((3..=5).contains(&calls), "{calls} sendmmsg calls");
    }
}

#[test]
fn echo_off_stops_the_copy_to_the_sender_and_echo_on_restores_it() {
    let server = TestServer::start(|_| {});
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.expect(&format!("* {} joined lobby", bob.name));

    alice.send("/echo off");
    alice.expect("* echo off");
    alice.send("quiet");
    bob.expect(&format!("{}: quiet", alice.name));
    alice.expect_silence();

    alice.send("/echo on");
    alice.expect("* echo on");
    alice.send("loud");
    alice.expect(&format!("{}: loud", alice.name));
    bob.expect(&format!("{}: loud", alice.name));
}

/// A blank line has nothing to say: whatever its line ending, the sender alone is answered.
#[test]
fn an_empty_or_blank_line_is_answered_to_its_sender_and_relayed_to_nobody() {
    let server = TestServer::start(|_| {});
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.expect(&format!("* {} joined lobby", bob.name));

    for blank in ["", "\n", "\r\n", "   \n"] {
        bob.send(blank);
        bob.expect("* not relayed: the message is empty");
    }
    alice.expect_silence();
    assert_eq!(server.get(Metric::ChatRefused), 4);
    assert_eq!(server.get(Metric::ChatRelayed), 0);
}

// ---------------------------------------------------------------------------------------------
// Rooms, nicknames and direct messages
// ---------------------------------------------------------------------------------------------

/// Three peers in the lobby, with the earlier two's notices of the later joins already read.
fn three_in_the_lobby(server: SocketAddr) -> (Peer, Peer, Peer) {
    let alice = Peer::joined(server);
    let bob = Peer::joined(server);
    let carol = Peer::joined(server);
    alice.drain();
    bob.drain();
    (alice, bob, carol)
}

#[test]
fn rooms_isolate_and_join_and_leave_notices_go_to_the_rooms() {
    let server = TestServer::start(|_| {});
    let (alice, bob, carol) = three_in_the_lobby(server.chat);

    carol.send("/join dev");
    carol.expect("* you joined dev (0 others here)");
    alice.expect(&format!("* {} left lobby", carol.name));
    bob.expect(&format!("* {} left lobby", carol.name));

    bob.send("/join dev");
    bob.expect("* you joined dev (1 other here)");
    alice.expect(&format!("* {} left lobby", bob.name));
    carol.expect(&format!("* {} joined dev", bob.name));

    bob.send("/join dev");
    bob.expect("* you are already in dev");

    alice.send("lobby only");
    alice.expect(&format!("{}: lobby only", alice.name));
    bob.send("dev only");
    bob.expect(&format!("{}: dev only", bob.name));
    carol.expect(&format!("{}: dev only", bob.name));
    alice.expect_silence();
    bob.expect_nothing_more();
    carol.expect_nothing_more();

    // Leaving the chat tells the room; the leaver is gone until it speaks again.
    carol.send("/leave");
    carol.expect("* you left the chat; send anything to come back");
    bob.expect(&format!("* {} left dev", carol.name));
    bob.send("alone");
    bob.expect(&format!("{}: alone", bob.name));
    assert_eq!(server.get(Metric::ChatMembers), 2);
    // Her `/who` makes Carol a member again, and its answer is the first thing she gets.
    carol.expect_silence();
}

#[test]
fn a_taken_nick_is_refused_and_msg_delivers_to_one_member_only() {
    let server = TestServer::start(|_| {});
    let (alice, bob, carol) = three_in_the_lobby(server.chat);

    alice.send("/nick alice");
    alice.expect("* you are now alice");
    bob.expect(&format!("* {} is now alice", alice.name));
    carol.expect(&format!("* {} is now alice", alice.name));

    bob.send("/nick alice");
    bob.expect("* nick alice is taken");
    bob.send("/nick bob");
    bob.expect("* you are now bob");
    alice.expect(&format!("* {} is now bob", bob.name));
    carol.expect(&format!("* {} is now bob", bob.name));

    alice.send("/msg bob just between us");
    bob.expect("[dm] alice: just between us");
    alice.expect("* sent to bob");
    carol.expect_silence();
    bob.expect_nothing_more();
    alice.expect_nothing_more();

    alice.send("/msg nobody hello?");
    alice.expect("* no such nick: nobody");

    // The chosen nick names relayed text too.
    alice.send("hello all");
    for peer in [&alice, &bob, &carol] {
        peer.expect("alice: hello all");
    }
}

#[test]
fn who_lists_the_room_and_rooms_lists_every_room_with_its_size() {
    let server = TestServer::start(|_| {});
    let (alice, bob, carol) = three_in_the_lobby(server.chat);
    alice.send("/nick alice");
    alice.expect("* you are now alice");
    carol.expect(&format!("* {} is now alice", alice.name));
    carol.send("/join dev");
    carol.expect("* you joined dev (0 others here)");

    alice.expect(&format!("* {} left lobby", carol.name));
    // Sorted: digits come before letters.
    alice.send("/who");
    alice.expect(&format!("* in lobby: {}, alice", bob.name));
    carol.send("/who");
    carol.expect(&format!("* in dev: {}", carol.name));
    bob.drain();
    bob.send("/rooms");
    bob.expect("* rooms: dev (1), lobby (2)");
}

#[test]
fn an_unknown_command_is_named_with_a_hint() {
    let server = TestServer::start(|_| {});
    let alice = Peer::new(server.chat);
    alice.send("/x");
    alice.expect("* unknown command /x; try /help");
    alice.send("/help");
    let help = alice.recv_line();
    assert!(help.starts_with("* commands: /nick NAME"), "{help:?}");
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

/// With a one-second idle limit, bob speaks every 50 ms while alice stays silent; the wait is on
/// the members gauge, not on a clock. Bob would expire too only if this thread stalled for
/// nearly a second.
#[test]
fn a_silent_member_expires_while_a_talking_member_stays() {
    let server = TestServer::start(|c| c.chat_idle = Duration::from_secs(1));
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    // A nick proves bob was never expired: a returning member comes back with its address.
    bob.send("/nick bob");
    bob.expect("* you are now bob");
    assert_eq!(server.get(Metric::ChatMembers), 2);

    let mut last_ping = Instant::now();
    server.wait_for(WAIT, "the silent member to expire", |s| {
        if last_ping.elapsed() >= Duration::from_millis(50) {
            bob.send("ping");
            last_ping = Instant::now();
        }
        s.get(Metric::ChatMembers) == 1
    });

    bob.send("still here");
    let lines = bob.lines_until("bob: still here");
    let notice = format!("* {} left lobby (silent for ", alice.name);
    let left: Vec<&String> = lines.iter().filter(|l| l.starts_with(&notice)).collect();
    assert_eq!(left.len(), 1, "bob is told once that alice left: {lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l == "bob: ping" || l == left[0] || l == "bob: still here"),
        "bob got only his pings and the notice: {lines:?}"
    );
    assert_eq!(server.get(Metric::ChatMembers), 1);
    assert_eq!(server.get(Metric::ChatRooms), 1);

    // Speaking again makes alice a member anew. Her copy of "still here", had it been sent,
    // would come ahead of her own line: bob's line was handled first.
    alice.send("back");
    let before = alice.lines_until(&format!("{}: back", alice.name));
    assert!(
        !before.iter().any(|l| l == "bob: still here"),
        "an expired member gets nothing: {before:?}"
    );
    bob.expect(&format!("* {} joined lobby", alice.name));
}

/// `--chat-idle` takes milliseconds (`300ms`), and the notice names the idle limit: it must not
/// tell the room that a member was removed after being silent for "0 s".
#[test]
fn the_expiry_notice_does_not_round_a_sub_second_idle_limit_down_to_zero() {
    let server = TestServer::start(|c| c.chat_idle = Duration::from_millis(300));
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    let mut last_ping = Instant::now();
    server.wait_for(WAIT, "the silent member to expire", |s| {
        if last_ping.elapsed() >= Duration::from_millis(50) {
            bob.send("ping");
            last_ping = Instant::now();
        }
        s.get(Metric::ChatMembers) == 1
    });
    let prefix = format!("* {} left lobby (silent for ", alice.name);
    let notice = loop {
        let line = bob.recv_line();
        if line.starts_with(&prefix) {
            break line;
        }
    };
    assert!(
        !notice.ends_with("(silent for 0 s)"),
        "a 300 ms idle limit is told to the room as {notice:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals and limits
// ---------------------------------------------------------------------------------------------

/// A rate of one message a second: the twenty datagrams sent back to back are all handled long
/// before a second token, or a second notice, is due.
#[test]
fn a_burst_beyond_the_rate_limit_relays_the_burst_and_says_slow_down_once() {
    let server = TestServer::start(|c| {
        c.chat_rate = 1;
        c.chat_burst = 5;
    });
    let listener = Peer::joined(server.chat);
    let talker = Peer::new(server.chat);
    for i in 0..20 {
        talker.send(&format!("line {i}"));
    }
    server.wait_for(WAIT, "all 21 datagrams to be handled", |s| {
        s.get(Metric::ChatIn) == 21
    });

    for i in 0..5 {
        talker.expect(&format!("{}: line {i}", talker.name));
    }
    talker.expect("* slow down: at most 1 message a second");

    listener.expect(&format!("* {} joined lobby", talker.name));
    for i in 0..5 {
        listener.expect(&format!("{}: line {i}", talker.name));
    }
    // The listener's `/who` comes after all of the talker's datagrams (`ChatIn` counted them):
    // by its answer, whatever they caused, for either peer, has arrived.
    listener.expect_silence();
    talker.expect_nothing_more();

    let stats = server.stats();
    assert_eq!(stats.get(Metric::ChatDroppedRate), 15);
    assert_eq!(stats.get(Metric::ChatRelayed), 10);
}

#[test]
fn an_oversize_datagram_is_refused_with_its_size_and_not_relayed() {
    let server = TestServer::start(|_| {});
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.drain();

    bob.send(&"x".repeat(2000));
    bob.expect("* message too long: 2000 bytes, the limit is 1024");
    // Exactly the limit is fine.
    bob.send(&"y".repeat(1024));
    let relayed = format!("{}: {}", bob.name, "y".repeat(1024));
    bob.expect(&relayed);
    alice.expect(&relayed);
    assert_eq!(server.get(Metric::ChatRefused), 1);
}

#[test]
fn invalid_utf8_is_refused_and_not_relayed() {
    let server = TestServer::start(|_| {});
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.drain();

    bob.send_bytes(b"caf\xe9 \xff\xfe");
    bob.expect("* not relayed: messages must be UTF-8 text");
    bob.send("café");
    alice.expect(&format!("{}: café", bob.name));
    assert_eq!(server.get(Metric::ChatRefused), 1);
}

/// The relay's lines are one per datagram, its own starting with `* `. A member's text holding a
/// newline must not smuggle a second line that reads as the server's, in the room or in a
/// direct message.
#[test]
fn relayed_text_cannot_forge_a_server_line() {
    let server = TestServer::start(|_| {});
    let mallory = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    mallory.drain();
    bob.send("/nick bob");
    bob.expect("* you are now bob");

    let forged = "* bob left lobby (silent for 300 s)";
    mallory.send(&format!("hello\n{forged}"));
    mallory.send(&format!("/msg bob psst\n{forged}"));
    mallory.send("sync");
    let sync = format!("{}: sync\n", mallory.name);
    let mut received = Vec::new();
    while received.last() != Some(&sync) {
        let datagram = bob
            .recv_raw_within(RECV_WITHIN)
            .unwrap_or_else(|| panic!("bob never got {sync:?}; got {received:?}"));
        received.push(String::from_utf8(datagram).expect("the server sends UTF-8"));
    }
    let lines: Vec<&str> = received.iter().flat_map(|d| d.lines()).collect();
    assert!(
        !lines.contains(&forged),
        "a member forged a server line: bob's datagrams were {received:?}"
    );
}

/// The relay receives into a 64 KiB buffer, the largest UDP payload: a 60 000-byte datagram is
/// read whole and reported with its real size, not as a truncated 1 KiB one.
#[test]
fn a_sixty_thousand_byte_datagram_is_reported_with_its_real_size() {
    let server = TestServer::start(|_| {});
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.drain();

    bob.send_bytes(&vec![b'z'; 60_000]);
    bob.expect("* message too long: 60000 bytes, the limit is 1024");
    bob.send("after");
    alice.expect(&format!("{}: after", bob.name));
}

#[test]
fn a_third_address_is_told_the_server_is_full_and_not_added() {
    let server = TestServer::start(|c| c.chat_max_members = 2);
    let alice = Peer::joined(server.chat);
    let bob = Peer::joined(server.chat);
    alice.drain();

    let carol = Peer::new(server.chat);
    carol.send("let me in");
    carol.expect("* server full");
    carol.send("please");
    carol.expect("* server full");
    assert_eq!(server.get(Metric::ChatMembers), 2);

    // Carol's datagrams were handled before her replies were sent: nothing reached the members.
    alice.send("members only");
    bob.expect(&format!("{}: members only", alice.name));
    alice.expect(&format!("{}: members only", alice.name));
    // Nothing came to carol but refusals: the answer to her next datagram is the first she gets.
    carol.send("/who");
    carol.expect("* server full");

    // A member leaving frees a place.
    bob.send("/leave");
    bob.expect("* you left the chat; send anything to come back");
    carol.send("finally");
    carol.expect(&format!("{}: finally", carol.name));
}

// ---------------------------------------------------------------------------------------------
// Verification (--chat-verify)
// ---------------------------------------------------------------------------------------------

/// Sends `datagram` from an unverified peer and returns the one reply, checked against the
/// amplification rule: at most 64 bytes and at most three times the datagram.
#[track_caller]
fn challenge(peer: &Peer, datagram: &str) -> String {
    peer.send(datagram);
    let reply = peer.recv_line();
    let size = reply.len() + 1;
    assert!(size <= 64, "a challenge is short: {size} bytes, {reply:?}");
    assert!(
        size <= 3 * datagram.len(),
        "{size}-byte reply to a {}-byte datagram",
        datagram.len()
    );
    reply
        .strip_prefix("* verify with: /verify ")
        .unwrap_or_else(|| panic!("a challenge names the command: {reply:?}"))
        .to_string()
}

/// Goes through verification: a datagram, the challenge, the cookie back.
#[track_caller]
fn verified(server: SocketAddr) -> Peer {
    let peer = Peer::new(server);
    let cookie = challenge(&peer, "hello, may I join?");
    peer.send(&format!("/verify {cookie}"));
    peer.expect(&format!("* verified: you are {}, in lobby", peer.name));
    peer
}

#[test]
fn with_verify_an_unverified_address_gets_one_short_reply_and_joins_only_with_its_cookie() {
    let server = TestServer::start(|c| c.chat_verify = true);
    let member = verified(server.chat);
    assert_eq!(server.get(Metric::ChatMembers), 1);

    let newcomer = Peer::new(server.chat);
    // 13 bytes: the 40-byte challenge would be more than three times as large.
    newcomer.send("hi everybody!");
    newcomer.send("hi");
    server.wait_for(WAIT, "both tiny datagrams to be refused", |s| {
        s.get(Metric::ChatRefused) == 2
    });

    let cookie = challenge(&newcomer, "hello everybody, it's me");
    let again = challenge(&newcomer, "is anybody there?");
    assert_eq!(
        cookie, again,
        "the cookie depends on the address and the time only"
    );
    // One reply per datagram, and none to the tiny ones. A challenge cannot be told from
    // another, so they are counted; and the newcomer's checks below (nothing waiting once the
    // replayer is answered, then the answer to its `/verify` as the next datagram) would meet
    // any extra one.
    member.expect_nothing_more();
    assert_eq!(server.get(Metric::ChatChallenges), 3);
    assert_eq!(server.get(Metric::ChatMembers), 1);

    // Another socket replaying the cookie is challenged in turn, not admitted.
    let replayer = Peer::new(server.chat);
    let own = challenge(&replayer, &format!("/verify {cookie}"));
    assert_ne!(own, cookie);
    assert_eq!(server.get(Metric::ChatMembers), 1);
    member.expect_nothing_more();
    newcomer.expect_nothing_more();

    newcomer.send(&format!("/verify {cookie}"));
    newcomer.expect(&format!("* verified: you are {}, in lobby", newcomer.name));
    member.expect(&format!("* {} joined lobby", newcomer.name));
    assert_eq!(server.get(Metric::ChatMembers), 2);

    newcomer.send("hello at last");
    member.expect(&format!("{}: hello at last", newcomer.name));
    newcomer.expect(&format!("{}: hello at last", newcomer.name));
    replayer.expect_nothing_more();
}

// ---------------------------------------------------------------------------------------------
// The tutorial's programs
// ---------------------------------------------------------------------------------------------

/// The tutorial's "send, then wait for a reply" program: a socket the system binds, one
/// `sendto` of a typed line (no newline), one `recvfrom(1024)`.
#[test]
fn the_tutorials_send_then_receive_program_gets_its_line_back_from_the_server() {
    let server = TestServer::start(|_| {});
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(RECV_WITHIN)).unwrap();
    socket
        .send_to("你好, readyloop".as_bytes(), server.chat)
        .unwrap();
    let mut buf = [0; 1024];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("one reply within the bound");
    assert_eq!(from, server.chat);
    let port = socket.local_addr().unwrap().port();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        format!("127.0.0.1:{port}: 你好, readyloop\n")
    );
}

/// The same program when its user just presses Enter: `input()` gives `""`, and the empty
/// datagram must still get a reply, or `recvfrom` would wait for ever.
#[test]
fn the_tutorials_send_then_receive_program_is_answered_after_an_empty_line() {
    let server = TestServer::start(|_| {});
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(RECV_WITHIN)).unwrap();
    socket.send_to(b"", server.chat).unwrap();
    let mut buf = [0; 1024];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("one reply within the bound");
    assert_eq!(from, server.chat);
    assert_eq!(&buf[..n], b"* not relayed: the message is empty\n");
}

/// The tutorial's chat program binds its own port and sends to the address it is given; with
/// the relay as that address, another peer's messages arrive at the bound port.
#[test]
fn the_tutorials_chat_program_receives_another_peers_messages_at_its_bound_port() {
    let server = TestServer::start(|_| {});
    let program = UdpSocket::bind("0.0.0.0:0").unwrap();
    program.set_read_timeout(Some(RECV_WITHIN)).unwrap();
    let port = program.local_addr().unwrap().port();
    program
        .send_to(b"hello from the tutorial", server.chat)
        .unwrap();
    let mut buf = [0; 1024];
    let (n, _) = program.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        format!("127.0.0.1:{port}: hello from the tutorial\n").as_bytes()
    );

    let other = Peer::new(server.chat);
    other.send("hello, tutorial");
    for expected in [
        format!("* {} joined lobby\n", other.name),
        format!("{}: hello, tutorial\n", other.name),
    ] {
        let (n, from) = program.recv_from(&mut buf).expect("within the bound");
        assert_eq!(from, server.chat);
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Sharing the loop
// ---------------------------------------------------------------------------------------------

/// One peer floods 2 000 datagrams with no rate limit while an echo client keeps making round
/// trips; each must stay prompt, within [`prompt_bound`] of the trips measured before the flood.
/// The flood goes in windows of 50 (its own copies read back between windows), so that most of
/// it reaches the relay rather than overflowing the relay's receive buffer at once; the kernel
/// may still drop some, so no count is asserted, only that both services keep answering.
#[test]
fn echo_clients_are_served_while_a_chat_peer_floods() {
    const WINDOW: usize = 50;
    let server = TestServer::start(|c| c.chat_rate = 0);
    let mut echo = connect(server.echo);
    let bound = prompt_bound(slowest_round_trip(&mut echo, 20));
    let chat = server.chat;
    let flooder = thread::spawn(move || {
        let peer = Peer::new(chat);
        let line = "f".repeat(200);
        let mut copies = 0;
        for _ in 0..2_000 / WINDOW {
            for _ in 0..WINDOW {
                peer.send(&line);
            }
            for _ in 0..WINDOW {
                if peer.recv_within(Duration::from_millis(200)).is_none() {
                    break; // some were dropped: send the next window
                }
                copies += 1;
            }
        }
        copies
    });

    let mut trips = 0;
    loop {
        let started = Instant::now();
        round_trip(&mut echo, format!("round trip {trips}\n").as_bytes());
        let took = started.elapsed();
        assert!(
            took < bound,
            "round trip {trips} took {took:?}, more than {bound:?}"
        );
        trips += 1;
        if flooder.is_finished() && trips >= 10 {
            break;
        }
    }
    let copies = join_within(flooder, IO_TIMEOUT, "the flooder to finish");
    assert!(copies > 0 && server.get(Metric::ChatIn) > 0);

    // The flood may still fill the relay's receive buffer, and the kernel drops what does not
    // fit: ask again until answered, within a bound, as any UDP client must.
    let after = Peer::new(server.chat);
    let deadline = Instant::now() + WAIT;
    let reply = loop {
        after.send("/rooms");
        if let Some(reply) = after.recv_within(Duration::from_millis(100)) {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "no reply to /rooms within {WAIT:?}"
        );
    };
    assert_eq!(reply, "* rooms: lobby (2)");
    round_trip(&mut echo, b"still echoing\n");
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

#[test]
fn chat_figures_match_a_scripted_exchange() {
    let server = TestServer::start(|_| {});
    let figures = |s: &readyloop::Snapshot| {
        [
            Metric::ChatIn,
            Metric::ChatOut,
            Metric::ChatRelayed,
            Metric::ChatMembers,
            Metric::ChatRooms,
        ]
        .map(|m| s.get(m))
    };
    assert_eq!(figures(&server.stats()), [0, 0, 0, 0, 0]);

    // In 1; out 1 (to alice); relayed 1.
    let alice = Peer::new(server.chat);
    alice.send("hello");
    alice.expect(&format!("{}: hello", alice.name));
    // In 1; out 3 (the join notice to alice, the line to both); relayed 2.
    let bob = Peer::new(server.chat);
    bob.send("hi");
    bob.expect(&format!("{}: hi", bob.name));
    alice.expect(&format!("* {} joined lobby", bob.name));
    alice.expect(&format!("{}: hi", bob.name));
    server.wait_for(WAIT, "the first figures", |s| figures(s) == [2, 4, 3, 2, 1]);

    // In 1; out 2 (the notice to alice, the reply to bob); a second room.
    bob.send("/join dev");
    bob.expect("* you joined dev (0 others here)");
    alice.expect(&format!("* {} left lobby", bob.name));
    // In 1; out 2 (the message and the receipt); relayed 1.
    alice.send(&format!("/msg {} psst", bob.name));
    bob.expect(&format!("[dm] {}: psst", alice.name));
    alice.expect(&format!("* sent to {}", bob.name));
    server.wait_for(WAIT, "the figures after /join and /msg", |s| {
        figures(s) == [4, 8, 4, 2, 2]
    });

    // In 1; out 1 (the reply; the lobby is left empty, and removed).
    alice.send("/leave");
    alice.expect("* you left the chat; send anything to come back");
    server.wait_for(WAIT, "the figures after /leave", |s| {
        figures(s) == [5, 9, 4, 1, 1]
    });
}
