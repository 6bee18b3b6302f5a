//! The listener's accept cycle, state by state, on a scripted fake listening socket.
//!
//! Each state has a fixture that builds a listener already in it; every (state, input) pair has a
//! test below its state's banner, or a comment saying why it has none. The inputs are what
//! `accept` answers (a connection, `WouldBlock`, `Interrupted`, a client that gave up, running out
//! of resources, anything else) and the loop's verdicts (`on_admitted`, `on_refused`,
//! `on_timeout`); the outputs are the state, `interest()` and `deadline()`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;

use super::{ACCEPT_BACKOFF, Accept, Listener, State};
use crate::stats::{Metric, Stats};

/// `--max-conns` as the loop would pass it; only the warning mentions it.
const MAX_CONNS: usize = 2;

/// A listening socket whose queue is a script: each entry is what the next `accept` answers.
#[derive(Default)]
struct Fake {
    /// Empty means `WouldBlock`: the kernel's queue is drained.
    queue: VecDeque<io::Result<SocketAddr>>,
    /// How many times `accept` was called, to prove a disarmed listener leaves the socket alone.
    calls: usize,
}

impl Accept for Fake {
    /// The fake's connections carry nothing; their addresses tell them apart.
    type Stream = ();

    fn accept(&mut self) -> io::Result<((), SocketAddr)> {
        self.calls += 1;
        match self.queue.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(answer) => answer.map(|peer| ((), peer)),
        }
    }
}

fn client(port: u16) -> io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn os_error(code: i32) -> io::Result<SocketAddr> {
    Err(io::Error::from_raw_os_error(code))
}

fn error(kind: io::ErrorKind) -> io::Result<SocketAddr> {
    Err(kind.into())
}

/// The loop's side: a clock and the counters.
struct Harness {
    stats: Stats,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Harness {
            stats: Stats::default(),
            now: Instant::now(),
        }
    }

    /// Queues `answers` and accepts once: the peer's port, or `None`.
    fn accept(
        &self,
        listener: &mut Listener<Fake>,
        answers: impl IntoIterator<Item = io::Result<SocketAddr>>,
    ) -> Option<u16> {
        listener.socket.queue.extend(answers);
        listener
            .accept(self.now, &self.stats)
            .map(|((), peer)| peer.port())
    }
}

// ---- fixtures: one per state -------------------------------------------------------------------

fn accepting() -> Listener<Fake> {
    Listener::new(Fake::default(), "echo")
}

/// A connection was accepted past `--max-conns` and refused.
fn full(h: &Harness) -> Listener<Fake> {
    let mut l = accepting();
    assert_eq!(h.accept(&mut l, [client(1)]), Some(1));
    l.on_refused(MAX_CONNS);
    assert_eq!(l.state(), State::Full);
    l
}

/// `accept` failed with `EMFILE`.
fn backing_off(h: &Harness) -> Listener<Fake> {
    let mut l = accepting();
    assert_eq!(h.accept(&mut l, [os_error(libc::EMFILE)]), None);
    assert_eq!(
        l.state(),
        State::BackingOff {
            until: h.now + ACCEPT_BACKOFF
        }
    );
    l
}

/// The back-off ended.
fn retrying(h: &Harness) -> Listener<Fake> {
    let mut l = backing_off(h);
    l.on_timeout();
    assert_eq!(l.state(), State::Retrying);
    l
}

// ---- ACCEPTING ---------------------------------------------------------------------------------

#[test]
fn accepting_wants_readable_and_has_no_deadline() {
    let l = accepting();
    assert_eq!(l.interest(), Some(Interest::READABLE));
    assert_eq!(l.deadline(), None);
}

#[test]
fn accepting_hands_over_each_queued_connection_then_reports_the_queue_drained() {
    let h = Harness::new();
    let mut l = accepting();
    assert_eq!(h.accept(&mut l, [client(1), client(2)]), Some(1));
    assert_eq!(h.accept(&mut l, []), Some(2));
    assert_eq!(h.accept(&mut l, []), None, "WouldBlock ends the drain");
    assert_eq!(l.state(), State::Accepting);
    assert_eq!(l.socket.calls, 3);
}

#[test]
fn accepting_retries_an_interrupted_accept() {
    let h = Harness::new();
    let mut l = accepting();
    let answers = [error(io::ErrorKind::Interrupted), client(1)];
    assert_eq!(h.accept(&mut l, answers), Some(1));
    assert_eq!(l.state(), State::Accepting);
}

/// accept(2) passes up network errors of the new connection (`EPROTO`, `ENETUNREACH`, ...) and
/// says to retry as for `EAGAIN`: the next queued connection is taken, with no back-off.
#[test]
fn accepting_retries_after_a_network_error_of_one_connection() {
    for errno in [
        libc::EPROTO,
        libc::ENETDOWN,
        libc::EHOSTUNREACH,
        libc::ENETUNREACH,
    ] {
        let h = Harness::new();
        let mut l = accepting();
        assert_eq!(h.accept(&mut l, [os_error(errno), client(3)]), Some(3));
        assert_eq!(l.state(), State::Accepting, "errno {errno}");
        assert_eq!(h.stats.get(Metric::AcceptBackoffs), 0, "errno {errno}");
    }
}

/// `ECONNABORTED`: the client reset while its connection sat in the queue. The next one is taken
/// in the same call, so the drain goes on.
#[test]
fn accepting_skips_a_client_that_gave_up_while_queued() {
    let h = Harness::new();
    let mut l = accepting();
    let answers = [os_error(libc::ECONNABORTED), client(2)];
    assert_eq!(h.accept(&mut l, answers), Some(2));
    assert_eq!(l.state(), State::Accepting);
    assert_eq!(h.stats.get(Metric::AcceptBackoffs), 0);
}

#[test]
fn accepting_backs_off_when_out_of_resources() {
    for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        let h = Harness::new();
        let mut l = accepting();
        assert_eq!(h.accept(&mut l, [os_error(code), client(1)]), None);
        let until = h.now + ACCEPT_BACKOFF;
        assert_eq!(l.state(), State::BackingOff { until }, "errno {code}");
        assert_eq!(l.interest(), None, "disarmed: wants no events at all");
        assert_eq!(l.deadline(), Some(until));
        assert_eq!(l.socket.queue.len(), 1, "the waiting client stays queued");
        assert_eq!(h.stats.get(Metric::AcceptBackoffs), 1);
    }
}

/// An error nobody expected (`EINVAL`: the socket is not listening) might repeat just the same: it
/// is no reason to spin either.
#[test]
fn accepting_backs_off_on_an_unexpected_error_too() {
    let h = Harness::new();
    let mut l = accepting();
    assert_eq!(h.accept(&mut l, [os_error(libc::EINVAL)]), None);
    assert!(matches!(l.state(), State::BackingOff { .. }));
    assert_eq!(h.stats.get(Metric::AcceptBackoffs), 1);
}

#[test]
fn accepting_stays_accepting_when_a_connection_is_admitted() {
    let h = Harness::new();
    let mut l = accepting();
    assert_eq!(h.accept(&mut l, [client(1)]), Some(1));
    l.on_admitted();
    assert_eq!(l.state(), State::Accepting);
}

#[test]
fn accepting_becomes_full_when_a_connection_is_refused() {
    let h = Harness::new();
    let l = full(&h);
    assert_eq!(
        l.interest(),
        Some(Interest::READABLE),
        "still drains the queue"
    );
    assert_eq!(l.deadline(), None);
}

#[test]
fn accepting_ignores_a_stale_timeout() {
    let mut l = accepting();
    l.on_timeout();
    assert_eq!(l.state(), State::Accepting);
}

// ---- FULL --------------------------------------------------------------------------------------

/// The loop must still drain the queue, as edge triggering requires: FULL accepts, and the loop
/// closes what it cannot keep.
#[test]
fn full_still_accepts_so_the_queue_is_drained() {
    let h = Harness::new();
    let mut l = full(&h);
    assert_eq!(h.accept(&mut l, [client(2)]), Some(2));
    assert_eq!(h.accept(&mut l, []), None);
    assert_eq!(l.state(), State::Full);
}

#[test]
fn full_stays_full_while_connections_are_refused() {
    let h = Harness::new();
    let mut l = full(&h);
    assert_eq!(h.accept(&mut l, [client(2)]), Some(2));
    l.on_refused(MAX_CONNS);
    assert_eq!(l.state(), State::Full);
}

#[test]
fn full_accepts_again_once_a_connection_is_admitted() {
    let h = Harness::new();
    let mut l = full(&h);
    assert_eq!(h.accept(&mut l, [client(2)]), Some(2));
    l.on_admitted();
    assert_eq!(l.state(), State::Accepting);
}

#[test]
fn full_retries_interrupted_and_skips_clients_that_gave_up() {
    let h = Harness::new();
    let mut l = full(&h);
    let answers = [
        error(io::ErrorKind::Interrupted),
        error(io::ErrorKind::ConnectionAborted),
        client(3),
    ];
    assert_eq!(h.accept(&mut l, answers), Some(3));
    assert_eq!(l.state(), State::Full);
}

#[test]
fn full_backs_off_when_out_of_resources() {
    let h = Harness::new();
    let mut l = full(&h);
    assert_eq!(h.accept(&mut l, [os_error(libc::ENFILE)]), None);
    assert_eq!(
        l.state(),
        State::BackingOff {
            until: h.now + ACCEPT_BACKOFF
        }
    );
    assert_eq!(h.stats.get(Metric::AcceptBackoffs), 1);
}

#[test]
fn full_ignores_a_stale_timeout() {
    let h = Harness::new();
    let mut l = full(&h);
    l.on_timeout();
    assert_eq!(l.state(), State::Full);
}

// ---- BACKING-OFF -------------------------------------------------------------------------------

#[test]
fn backing_off_wants_no_events_until_its_deadline() {
    let h = Harness::new();
    let l = backing_off(&h);
    assert_eq!(l.interest(), None);
    assert_eq!(l.deadline(), Some(h.now + ACCEPT_BACKOFF));
}

/// A readiness event already in the batch may still reach a listener that just disarmed: it must
/// not call `accept` again, or the back-off would spin after all.
#[test]
fn backing_off_accepts_nothing_and_leaves_the_socket_alone() {
    let h = Harness::new();
    let mut l = backing_off(&h);
    let calls = l.socket.calls;
    assert_eq!(h.accept(&mut l, [client(1)]), None);
    assert_eq!(l.socket.calls, calls);
    assert_eq!(l.socket.queue.len(), 1);
    assert!(matches!(l.state(), State::BackingOff { .. }));
}

#[test]
fn backing_off_retries_at_its_deadline() {
    let h = Harness::new();
    let mut l = backing_off(&h);
    l.on_timeout();
    assert_eq!(l.state(), State::Retrying);
    assert_eq!(l.interest(), Some(Interest::READABLE), "armed again");
    assert_eq!(l.deadline(), None);
}

// BACKING-OFF has no test for `on_admitted` or `on_refused`: the loop calls them only for a
// connection `accept` returned, and `accept` returns none while backing off (tested above).

// ---- RETRYING ----------------------------------------------------------------------------------

#[test]
fn retrying_takes_the_connections_that_queued_during_the_back_off() {
    let h = Harness::new();
    let mut l = retrying(&h);
    assert_eq!(h.accept(&mut l, [client(1), client(2)]), Some(1));
    assert_eq!(
        l.state(),
        State::Retrying,
        "the burst ends when the loop keeps one"
    );
    assert_eq!(h.accept(&mut l, []), Some(2));
}

#[test]
fn retrying_accepts_normally_once_a_connection_is_admitted() {
    let h = Harness::new();
    let mut l = retrying(&h);
    assert_eq!(h.accept(&mut l, [client(1)]), Some(1));
    l.on_admitted();
    assert_eq!(l.state(), State::Accepting);
}

#[test]
fn retrying_becomes_full_when_a_connection_is_refused() {
    let h = Harness::new();
    let mut l = retrying(&h);
    assert_eq!(h.accept(&mut l, [client(1)]), Some(1));
    l.on_refused(MAX_CONNS);
    assert_eq!(l.state(), State::Full);
}

#[test]
fn retrying_with_an_empty_queue_keeps_retrying() {
    let h = Harness::new();
    let mut l = retrying(&h);
    assert_eq!(h.accept(&mut l, []), None);
    assert_eq!(l.state(), State::Retrying);
}

#[test]
fn retrying_retries_interrupted_and_skips_clients_that_gave_up() {
    let h = Harness::new();
    let mut l = retrying(&h);
    let answers = [
        error(io::ErrorKind::Interrupted),
        os_error(libc::ECONNABORTED),
        client(3),
    ];
    assert_eq!(h.accept(&mut l, answers), Some(3));
    assert_eq!(l.state(), State::Retrying);
}

/// Descriptors are still short: back off again, from the new failure's time, and count it.
#[test]
fn retrying_backs_off_again_when_still_out_of_resources() {
    let mut h = Harness::new();
    let mut l = retrying(&h);
    h.now += ACCEPT_BACKOFF;
    assert_eq!(h.accept(&mut l, [os_error(libc::EMFILE)]), None);
    assert_eq!(
        l.state(),
        State::BackingOff {
            until: h.now + ACCEPT_BACKOFF
        }
    );
    assert_eq!(h.stats.get(Metric::AcceptBackoffs), 2);
}

#[test]
fn retrying_ignores_a_stale_timeout() {
    let h = Harness::new();
    let mut l = retrying(&h);
    l.on_timeout();
    assert_eq!(l.state(), State::Retrying);
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn states_print_the_names_of_the_design_diagram() {
    let names: Vec<String> = [
        State::Accepting,
        State::Full,
        State::BackingOff {
            until: Instant::now(),
        },
        State::Retrying,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(names, ["ACCEPTING", "FULL", "BACKING-OFF", "RETRYING"]);
}
