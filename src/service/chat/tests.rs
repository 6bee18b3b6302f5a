//! The relay's socket side, state by state, on a scripted fake datagram socket.
//!
//! The relay has no `State` enum: its state is derived from the outbox. With the outbox EMPTY it
//! wants only readable, and sends what each datagram produces at once; with datagrams WAITING it
//! wants writable too, and everything new queues behind them to keep the order. Each has a fixture
//! and a banner; every (state, input) pair has a test below it. The chat's rules are
//! `members/tests.rs`'s business: here members only join and talk, with their default nicknames
//! (their addresses), so each line below is one a member could really send.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::Interest;

use super::outbox::Datagram;
use super::{DATAGRAM_COST, Relay, Socket};
use crate::config::Config;
use crate::service::fake;
use crate::service::{FAIR_SHARE, Handler, KEEP};
use crate::stats::Metric;

const ALICE: u16 = 1001;
const BOB: u16 = 1002;

/// Silence after which a member expires.
const IDLE: Duration = Duration::from_secs(60);

/// Datagrams the outbox holds.
const QUEUE: usize = 4;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a member with the default nickname sees relayed when `port` says `text`.
fn said(port: u16, text: &str) -> String {
    format!("{}: {text}\n", addr(port))
}

/// What the fake socket answers to the next receive.
enum Input {
    Datagram(SocketAddr, Vec<u8>),
    Fail(io::ErrorKind),
}

/// A datagram socket whose input is a script and whose send buffer takes `window` more datagrams.
#[derive(Default)]
struct Fake {
    /// Empty means `WouldBlock`.
    input: VecDeque<Input>,
    /// What was sent, in order: the recipient's port and the line.
    sent: Vec<(u16, String)>,
    window: usize,
    /// Answer the next send with this error, then carry on as before.
    send_error: Option<io::ErrorKind>,
    /// Refuse the next datagram to this port (`ECONNREFUSED`), as the kernel does once an ICMP
    /// error says the port is closed.
    refuse: Option<u16>,
    /// Every call, in order: how far receiving ran ahead of sending.
    calls: Vec<Step>,
}

/// One call on the fake socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Receive,
    Send,
}

impl Socket for Fake {
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.calls.push(Step::Receive);
        match self.input.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Input::Fail(kind)) => Err(kind.into()),
            Some(Input::Datagram(from, payload)) => {
                // Like the kernel: a datagram larger than the buffer is cut short.
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Ok((n, from))
            }
        }
    }

    /// As `sendmmsg`: takes as many datagrams as the window allows and says how many; an error is
    /// the first datagram's, and a refused one further in ends the call before it.
    fn send_many(&mut self, datagrams: &[Datagram]) -> io::Result<usize> {
        self.calls.push(Step::Send);
        if let Some(kind) = self.send_error.take() {
            return Err(kind.into());
        }
        let refused = datagrams
            .iter()
            .position(|d| Some(d.to.port()) == self.refuse);
        if refused == Some(0) {
            self.refuse = None;
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let taken = datagrams
            .len()
            .min(self.window)
            .min(refused.unwrap_or(usize::MAX));
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.window -= taken;
        for d in &datagrams[..taken] {
            let line = String::from_utf8_lossy(&d.payload).into_owned();
            self.sent.push((d.to.port(), line));
        }
        Ok(taken)
    }
}

/// The loop's side of the relay, with the configuration the relay is built from.
type Harness = fake::Harness<Chat>;

/// What the relay needs besides: its limits come from the configuration.
struct Chat {
    config: Config,
}

impl Harness {
    /// With a scratch buffer as large as the loop's: any UDP payload fits.
    fn new() -> Self {
        let config = Config {
            chat_idle: IDLE,
            chat_queue: QUEUE,
            // Rate limiting is the chat's rule, not the relay's: off, so bursts pass.
            chat_rate: 0,
            ..Config::default()
        };
        let mut h = fake::Harness::of(Chat { config });
        h.scratch = vec![0; 64 * 1024];
        h
    }

    /// A relay on a socket that takes everything.
    fn relay(&self) -> Relay<Fake> {
        let fake = Fake {
            window: usize::MAX,
            ..Fake::default()
        };
        Relay::new(fake, &self.kind.config, self.now)
    }

    /// `lines` arrive, each from its member, and the relay is told it is readable.
    fn receive(&mut self, relay: &mut Relay<Fake>, lines: &[(u16, &str)]) {
        for &(port, text) in lines {
            let datagram = Input::Datagram(addr(port), text.as_bytes().to_vec());
            relay.socket.input.push_back(datagram);
        }
        assert_eq!(relay.on_readable(&mut self.ctx()), KEEP);
    }
}

/// Takes what the relay sent so far, for the next step to start afresh.
fn sent(relay: &mut Relay<Fake>) -> Vec<(u16, String)> {
    std::mem::take(&mut relay.socket.sent)
}

// ---- fixtures: one per state -------------------------------------------------------------------

/// Alice has joined; nothing waits.
fn empty(h: &mut Harness) -> Relay<Fake> {
    let mut r = h.relay();
    h.receive(&mut r, &[(ALICE, "hi")]);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "hi"))]);
    assert!(r.outbox.is_empty());
    r
}

/// The socket stopped taking datagrams while Alice said "one" and "two": both wait.
fn waiting(h: &mut Harness) -> Relay<Fake> {
    let mut r = empty(h);
    r.socket.window = 0;
    h.receive(&mut r, &[(ALICE, "one"), (ALICE, "two")]);
    assert!(r.socket.sent.is_empty());
    assert_eq!(r.outbox.len(), 2);
    r
}

/// Alice joined at the start; Bob 30 s later. The next expiry is Alice's.
fn alice_and_bob(h: &mut Harness) -> Relay<Fake> {
    let mut r = empty(h);
    h.now += IDLE / 2;
    h.receive(&mut r, &[(BOB, "yo")]);
    sent(&mut r);
    assert_eq!(r.deadline(), Some(h.now - IDLE / 2 + IDLE));
    r
}

// ---- EMPTY: readable only ----------------------------------------------------------------------

#[test]
fn a_new_relay_wants_only_readable_and_has_no_deadline() {
    let h = Harness::new();
    let r = h.relay();
    assert_eq!(r.interest(), Interest::READABLE);
    assert_eq!(r.deadline(), None, "no member, nothing to expire");
}

#[test]
fn empty_receives_until_would_block_and_sends_what_each_datagram_produces() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    h.receive(&mut r, &[(ALICE, "one"), (ALICE, "two")]);
    assert!(r.socket.input.is_empty(), "drained to WouldBlock");
    assert_eq!(
        sent(&mut r),
        [(ALICE, said(ALICE, "one")), (ALICE, said(ALICE, "two"))]
    );
    assert_eq!(r.interest(), Interest::READABLE);
    assert_eq!(h.stats.get(Metric::ChatIn), 3);
    assert_eq!(h.stats.get(Metric::ChatOut), 3);
}

/// The tokio relay's order, and the reason the first message of a burst is not held up by the
/// rest: a datagram's whole fan-out leaves, in one call, before the next datagram is received.
#[test]
fn empty_sends_each_datagrams_fan_out_in_one_call_before_receiving_the_next() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    r.socket.calls.clear();
    let before = h.stats.get(Metric::ChatOut);
    h.receive(&mut r, &[(ALICE, "one"), (ALICE, "two")]);
    use Step::{Receive, Send};
    assert_eq!(
        r.socket.calls,
        [Receive, Send, Receive, Send, Receive],
        "one, to Alice and Bob; two, to Alice and Bob; WouldBlock"
    );
    let sent = h.stats.get(Metric::ChatOut) - before;
    assert_eq!(sent, 4, "every datagram of a call counts");
}

/// The kernel refuses a datagram in the middle of a fan-out (its peer's port is closed): the call
/// ends before it, the next starts with it and fails, and the rest still go.
#[test]
fn empty_a_refused_datagram_inside_a_fan_out_is_dropped_and_the_rest_sent() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    r.socket.calls.clear();
    r.socket.refuse = Some(ALICE);
    h.receive(&mut r, &[(BOB, "hey")]);
    let to: Vec<u16> = sent(&mut r).into_iter().map(|(port, _)| port).collect();
    assert!(!to.contains(&ALICE) && to.contains(&BOB), "{to:?}");
    assert_eq!(h.stats.get(Metric::ChatDroppedSend), 1);
    assert!(r.outbox.is_empty(), "a refused datagram is not retried");
}

/// A fan-out larger than the socket takes at once: the rest waits, in order, for writable.
#[test]
fn empty_a_fan_out_the_socket_takes_in_part_queues_the_rest() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    r.socket.window = 1;
    h.receive(&mut r, &[(BOB, "hey")]);
    assert_eq!(sent(&mut r).len(), 1);
    assert_eq!(r.outbox.len(), 1);
    assert_eq!(r.interest(), Interest::READABLE | Interest::WRITABLE);
    r.socket.window = usize::MAX;
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(sent(&mut r).len(), 1);
    assert!(r.outbox.is_empty());
}

#[test]
fn empty_retries_an_interrupted_receive() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    r.socket
        .input
        .push_back(Input::Fail(io::ErrorKind::Interrupted));
    h.receive(&mut r, &[(ALICE, "still here")]);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "still here"))]);
}

/// On Linux an ICMP error for an earlier send comes back from the next receive: it concerns that
/// one peer, so the relay carries on with the datagrams behind it.
#[test]
fn empty_a_receive_error_costs_budget_and_does_not_stop_the_relay() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    let refused = Input::Fail(io::ErrorKind::ConnectionRefused);
    r.socket.input.push_back(refused);
    r.socket
        .input
        .push_back(Input::Datagram(addr(ALICE), b"after".to_vec()));
    let mut ctx = h.ctx();
    assert_eq!(r.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, FAIR_SHARE - 2 * DATAGRAM_COST);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "after"))]);
}

#[test]
fn empty_a_receive_error_that_repeats_cannot_hold_the_loop() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    for _ in 0..3 {
        let failure = Input::Fail(io::ErrorKind::ConnectionRefused);
        r.socket.input.push_back(failure);
    }
    let mut ctx = h.ctx();
    ctx.budget = 2 * DATAGRAM_COST;
    assert_eq!(r.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0);
    assert_eq!(r.socket.input.len(), 1, "yielded before the third");
}

#[test]
fn empty_yields_once_its_budget_is_spent() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    for text in ["one", "two", "three"] {
        let datagram = Input::Datagram(addr(ALICE), text.as_bytes().to_vec());
        r.socket.input.push_back(datagram);
    }
    let mut ctx = h.ctx();
    // Tiny datagrams cost `DATAGRAM_COST` each: a budget of two takes two.
    ctx.budget = 2 * DATAGRAM_COST;
    assert_eq!(r.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "spent: the loop will resume the relay");
    assert_eq!(r.socket.input.len(), 1, "stopped before WouldBlock");
    assert_eq!(
        sent(&mut r),
        [(ALICE, said(ALICE, "one")), (ALICE, said(ALICE, "two"))]
    );
}

#[test]
fn empty_a_large_datagram_costs_its_size() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    let large = 3 * DATAGRAM_COST;
    r.socket
        .input
        .push_back(Input::Datagram(addr(ALICE), vec![b'x'; large]));
    let mut ctx = h.ctx();
    assert_eq!(r.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, FAIR_SHARE - large);
}

#[test]
fn empty_a_send_that_would_block_queues_in_order_and_asks_for_writable() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    r.socket.window = 1;
    h.receive(&mut r, &[(ALICE, "one"), (ALICE, "two"), (ALICE, "three")]);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "one"))]);
    assert_eq!(r.outbox.len(), 2);
    assert_eq!(r.interest(), Interest::READABLE | Interest::WRITABLE);
    r.socket.window = usize::MAX;
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(
        sent(&mut r),
        [(ALICE, said(ALICE, "two")), (ALICE, said(ALICE, "three"))]
    );
}

#[test]
fn empty_retries_an_interrupted_send() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    r.socket.send_error = Some(io::ErrorKind::Interrupted);
    h.receive(&mut r, &[(ALICE, "one")]);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "one"))]);
    assert_eq!(h.stats.get(Metric::ChatDroppedSend), 0);
}

/// One unreachable peer must not hold the others up: its datagram is dropped and counted.
#[test]
fn empty_a_send_error_drops_that_datagram_and_counts_it() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    r.socket.send_error = Some(io::ErrorKind::ConnectionRefused);
    h.receive(&mut r, &[(ALICE, "one"), (ALICE, "two")]);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "two"))]);
    assert_eq!(h.stats.get(Metric::ChatDroppedSend), 1);
    assert!(r.outbox.is_empty(), "a failed datagram is not retried");
    assert_eq!(r.interest(), Interest::READABLE);
}

#[test]
fn empty_writable_sends_nothing() {
    let mut h = Harness::new();
    let mut r = empty(&mut h);
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert!(r.socket.sent.is_empty());
    assert_eq!(r.interest(), Interest::READABLE);
}

#[test]
fn empty_timeout_expires_silent_members_and_tells_their_room() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    h.now += IDLE / 2;
    assert_eq!(r.on_timeout(&mut h.ctx()), KEEP);
    let notices = sent(&mut r);
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (to, line) = &notices[0];
    assert_eq!(*to, BOB);
    assert!(
        line.starts_with(&format!("* {} left lobby", addr(ALICE))),
        "{line:?}"
    );
    assert_eq!(r.chat.members(), 1);
    assert_eq!(r.deadline(), Some(h.now + IDLE / 2), "Bob's expiry is next");
}

#[test]
fn empty_timeout_before_anyone_is_due_sends_nothing() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    assert_eq!(r.on_timeout(&mut h.ctx()), KEEP);
    assert!(r.socket.sent.is_empty());
    assert_eq!(r.chat.members(), 2);
}

// ---- WAITING: readable and writable ------------------------------------------------------------

#[test]
fn waiting_wants_writable_too() {
    let mut h = Harness::new();
    let r = waiting(&mut h);
    assert_eq!(r.interest(), Interest::READABLE | Interest::WRITABLE);
}

#[test]
fn waiting_writable_sends_the_queue_in_order_then_wants_only_readable() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    r.socket.window = usize::MAX;
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(
        sent(&mut r),
        [(ALICE, said(ALICE, "one")), (ALICE, said(ALICE, "two"))]
    );
    assert!(r.outbox.is_empty());
    assert_eq!(r.interest(), Interest::READABLE);
}

#[test]
fn waiting_writable_stops_when_the_socket_would_block_again() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    r.socket.window = 1;
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "one"))]);
    assert_eq!(r.outbox.len(), 1);
    assert_eq!(r.interest(), Interest::READABLE | Interest::WRITABLE);
}

#[test]
fn waiting_writable_retries_an_interrupted_send() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    r.socket.window = usize::MAX;
    r.socket.send_error = Some(io::ErrorKind::Interrupted);
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(
        sent(&mut r),
        [(ALICE, said(ALICE, "one")), (ALICE, said(ALICE, "two"))]
    );
}

#[test]
fn waiting_writable_drops_a_datagram_that_fails_and_sends_the_rest() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    r.socket.window = usize::MAX;
    r.socket.send_error = Some(io::ErrorKind::ConnectionRefused);
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(sent(&mut r), [(ALICE, said(ALICE, "two"))]);
    assert_eq!(h.stats.get(Metric::ChatDroppedSend), 1);
    assert_eq!(r.interest(), Interest::READABLE);
}

/// The socket has room again, but the writable event has not been handled yet: a new datagram
/// must not overtake the waiting ones.
#[test]
fn waiting_readable_queues_new_datagrams_behind_the_waiting_ones() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    r.socket.window = usize::MAX;
    h.receive(&mut r, &[(ALICE, "three")]);
    assert!(r.socket.sent.is_empty());
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    let expected = ["one", "two", "three"].map(|text| (ALICE, said(ALICE, text)));
    assert_eq!(sent(&mut r), expected);
}

/// In a chat the newest lines are the ones worth delivering.
#[test]
fn waiting_a_full_outbox_drops_the_oldest_and_counts_it() {
    let mut h = Harness::new();
    let mut r = waiting(&mut h);
    h.receive(
        &mut r,
        &[(ALICE, "three"), (ALICE, "four"), (ALICE, "five")],
    );
    assert_eq!(r.outbox.len(), QUEUE);
    assert_eq!(h.stats.get(Metric::ChatDroppedQueue), 1);
    r.socket.window = usize::MAX;
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    let expected = ["two", "three", "four", "five"].map(|text| (ALICE, said(ALICE, text)));
    assert_eq!(sent(&mut r), expected);
}

#[test]
fn waiting_timeout_queues_expiry_notices_behind_the_waiting_ones() {
    let mut h = Harness::new();
    let mut r = alice_and_bob(&mut h);
    r.socket.window = 0;
    h.receive(&mut r, &[(BOB, "wait")]);
    assert_eq!(r.outbox.len(), 2, "Bob's line, to Alice and to Bob");
    h.now += IDLE / 2;
    r.socket.window = usize::MAX;
    assert_eq!(r.on_timeout(&mut h.ctx()), KEEP);
    assert!(r.socket.sent.is_empty(), "the notice waits its turn");
    assert_eq!(r.on_writable(&mut h.ctx()), KEEP);
    let mut sent = sent(&mut r);
    let (to, notice) = sent.pop().unwrap();
    assert_eq!(to, BOB);
    assert!(notice.starts_with(&format!("* {} left lobby", addr(ALICE))));
    // One line to a room goes to its members in no particular order.
    sent.sort();
    assert_eq!(sent, [(ALICE, said(BOB, "wait")), (BOB, said(BOB, "wait"))]);
}
