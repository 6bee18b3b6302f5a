//! The echo state machine, state by state, on a scripted fake socket.
//!
//! Each state has a fixture that builds a connection already in it; every (state, input) pair has a
//! test below its state's banner. Water marks are tiny (high 16, low 8) so a few bytes reach them.

use std::io;
use std::time::{Duration, Instant};

use mio::Interest;

use super::{Connection, State};
use crate::service::fake::{self, Fake, Input, close};
use crate::service::{Handler, KEEP};
use crate::stats::{CloseReason, Metric};

/// The loop's side of an echo connection: echo needs nothing besides what every kind gets.
type Harness = fake::Harness<Echo>;

/// The kind under test.
struct Echo;

impl Harness {
    fn new() -> Self {
        fake::Harness::of(Echo)
    }

    fn connection(&mut self, fake: Fake) -> Connection<Fake> {
        Connection::new(fake, self.now, &self.settings)
    }
}

// ---- fixtures: one per state -------------------------------------------------------------------

fn open(h: &mut Harness) -> Connection<Fake> {
    h.connection(Fake::with_input(&[]))
}

/// 20 bytes arrive and the client reads nothing: 16 (the high mark) are read and owed.
fn throttled(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[&[7; 20]]));
    c.stream.window = 0;
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Throttled);
    c
}

/// 5 bytes then FIN arrive and the client reads nothing: the 5 are owed.
fn half_closed(h: &mut Harness) -> Connection<Fake> {
    let mut fake = Fake::with_input(&[b"hello"]);
    fake.input.push_back(Input::Fin);
    fake.window = 0;
    h.hangup = true;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::HalfClosed);
    c
}

/// 5 bytes are owed when the server starts shutting down: the client is busy, not quiet.
fn draining(h: &mut Harness) -> Connection<Fake> {
    let mut fake = Fake::with_input(&[b"hello"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Draining);
    c
}

/// The shutdown's read spent the whole budget echoing 64 bytes: nothing is owed, and the loop will
/// resume the connection, readable then writable, as it does any that spent its budget.
fn draining_with_nothing_owed(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[&[1; 64]]));
    let mut ctx = h.ctx();
    ctx.budget = 64;
    assert_eq!(c.on_shutdown(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0);
    assert_eq!((c.state(), c.owed()), (State::Draining, 0));
    assert_eq!(c.interest(), Interest::READABLE);
    c
}

/// The client has sent nothing for `--request-grace` when the server starts shutting down, and is
/// owed nothing: the connection is quiet, and FIN goes out at once.
fn lingering(h: &mut Harness) -> Connection<Fake> {
    let mut c = open(h);
    h.now += h.settings.request_grace;
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Lingering { .. }));
    assert!(c.stream.fin_sent);
    c
}

// ---- OPEN --------------------------------------------------------------------------------------

#[test]
fn open_echoes_input_straight_back_without_buffering() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"ping", b" pong"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"ping pong");
    assert_eq!(c.owed(), 0);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(h.stats.get(Metric::BytesIn), 9);
    assert_eq!(h.stats.get(Metric::BytesOut), 9);
}

#[test]
fn open_keeps_what_the_socket_refuses_and_asks_for_writable() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"abcdef"]);
    fake.window = 2;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"ab");
    assert_eq!(c.owed(), 4);
    assert_eq!(c.state(), State::Open);
    assert_eq!(c.interest(), Interest::READABLE | Interest::WRITABLE);
    assert_eq!(h.stats.get(Metric::BufferedPeak), 4);
}

#[test]
fn open_queues_new_input_behind_owed_bytes_to_keep_order() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"abc"]);
    fake.window = 1;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    c.stream.window = usize::MAX;
    c.stream.input.push_back(Input::Bytes(b"def".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"abcdef");
    assert_eq!(c.interest(), Interest::READABLE);
}

#[test]
fn open_stops_reading_at_the_high_water_mark() {
    let mut h = Harness::new();
    let c = throttled(&mut h);
    assert_eq!(c.owed(), 16, "read exactly up to the high mark");
    assert!(
        matches!(c.stream.input.front(), Some(Input::Bytes(rest)) if rest.len() == 4),
        "the rest stays in the kernel"
    );
    assert_eq!(h.stats.get(Metric::BufferedPeak), 16);
}

#[test]
fn open_yields_once_its_budget_is_spent() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[&[1; 64], &[2; 64], &[3; 10]]));
    let mut ctx = h.ctx();
    ctx.budget = 100;
    assert_eq!(c.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "spent: the loop will resume this connection");
    // Reads are 16 bytes at most (the high mark): seven of them spend a budget of 100.
    assert_eq!(c.stream.output.len(), 112, "stopped before WouldBlock");
    assert!(!c.stream.input.is_empty());
}

#[test]
fn open_stops_at_a_short_read_without_asking_for_would_block() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"ping"]));
    c.stream.input.push_back(Input::Fail(io::ErrorKind::Other)); // never reached
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"ping");
}

/// After an event that reported a hang-up, the FIN may wait behind the data with its edge spent:
/// a short read proves nothing then, and reading goes on to the zero-length read.
#[test]
fn open_reads_past_a_short_read_when_the_event_reported_a_hang_up() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"bye"]);
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    let mut ctx = h.ctx();
    ctx.short_read_drains = false;
    assert_eq!(c.on_readable(&mut ctx), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output, b"bye");
}

#[test]
fn open_closes_on_fin_when_nothing_is_owed() {
    let mut h = Harness::new();
    h.hangup = true;
    let mut fake = Fake::with_input(&[b"bye"]);
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output, b"bye");
}

#[test]
fn open_retries_interrupted_reads_and_writes() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"x"]);
    fake.interrupt = true;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"x");
}

#[test]
fn open_closes_quietly_on_reset_and_as_error_otherwise() {
    let mut h = Harness::new();
    let mut fake = Fake::default();
    fake.input
        .push_back(Input::Fail(io::ErrorKind::ConnectionReset));
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Reset));

    let mut fake = Fake::default();
    fake.input
        .push_back(Input::Fail(io::ErrorKind::InvalidData));
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Error));

    let mut fake = Fake::with_input(&[b"x"]);
    fake.write_error = Some(io::ErrorKind::BrokenPipe);
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Reset));
}

#[test]
fn open_writable_with_nothing_owed_writes_nothing() {
    let mut h = Harness::new();
    let mut c = open(&mut h);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
    assert_eq!(c.state(), State::Open);
}

#[test]
fn open_activity_pushes_the_idle_deadline() {
    let mut h = Harness::new();
    let mut c = open(&mut h);
    let first = c.deadline();
    assert_eq!(first, h.now + h.settings.idle_timeout);
    h.now += Duration::from_secs(3);
    c.stream.input.push_back(Input::Bytes(b"k".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.deadline(), first + Duration::from_secs(3));
}

#[test]
fn open_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = open(&mut h);
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

/// The client sent its last words just now: it has not paused long enough to call quiet, so the
/// connection waits `--request-grace` for more before its FIN.
#[test]
fn open_shutdown_echoes_waiting_input_then_sends_fin_after_the_pause() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"last words"]));
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"last words");
    assert_eq!(c.state(), State::Draining);
    assert!(!c.stream.fin_sent);
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);

    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    assert!(c.stream.fin_sent);
    assert!(matches!(c.state(), State::Lingering { .. }));
}

#[test]
fn open_shutdown_of_a_client_that_had_paused_sends_fin_at_once() {
    let mut h = Harness::new();
    let c = lingering(&mut h);
    assert!(c.stream.output.is_empty());
}

#[test]
fn open_shutdown_with_output_owed_drains_and_waits_for_writable() {
    let mut h = Harness::new();
    let c = draining(&mut h);
    assert!(!c.stream.fin_sent, "no FIN before the owed bytes");
    assert_eq!(c.interest(), Interest::WRITABLE);
}

/// The shutdown's own read pass is not the last one: a connection with more input than one fair
/// share yields like any handler, and stays DRAINING for the loop to resume.
#[test]
fn open_shutdown_yields_once_its_budget_is_spent() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[&[1; 64], &[2; 64]]));
    let mut ctx = h.ctx();
    ctx.budget = 40;
    assert_eq!(c.on_shutdown(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "spent: the loop will resume this connection");
    assert_eq!(c.state(), State::Draining);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(
        c.stream.output.len(),
        48,
        "three reads of 16 (the high mark)"
    );
    assert!(!c.stream.fin_sent, "input still waits: not quiet");
}

#[test]
fn open_shutdown_after_the_clients_fin_closes_at_once() {
    let mut h = Harness::new();
    h.hangup = true; // as at shutdown: no event vouches for a short read
    let mut fake = Fake::with_input(&[b"x"]);
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    assert_eq!(c.on_shutdown(&mut h.ctx()), close(CloseReason::PeerClosed));
}

// ---- THROTTLED ---------------------------------------------------------------------------------

#[test]
fn throttled_wants_only_writable_and_ignores_readable() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.owed(), 16, "nothing more was read");
}

#[test]
fn throttled_stays_paused_until_below_the_low_mark() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    c.stream.window = 8; // 8 owed left: not below the low mark of 8
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Throttled);
    assert_eq!(c.owed(), 8);
}

#[test]
fn throttled_resumes_and_reads_waiting_input_at_once() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Open);
    assert_eq!(
        c.stream.output,
        vec![7; 20],
        "the 4 waiting bytes were read without a new event"
    );
    assert_eq!(c.owed(), 0);
}

/// The client sent its FIN while reading was paused; the resumed drain must find it even though
/// the read before it is short.
#[test]
fn throttled_resumes_and_finds_a_fin_that_arrived_while_paused() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    c.stream.input.push_back(Input::Fin);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output, vec![7; 20]);
}

#[test]
fn throttled_closes_on_write_error() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    c.stream.write_error = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::Reset));
}

#[test]
fn throttled_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn throttled_shutdown_drains_and_reads_nothing_until_the_flush() {
    let mut h = Harness::new();
    let mut c = throttled(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Draining);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.owed(), 16, "the 4 waiting bytes stay in the kernel");
    assert!(!c.stream.fin_sent);
}

// ---- HALF-CLOSED -------------------------------------------------------------------------------

#[test]
fn half_closed_wants_only_writable_and_reads_nothing() {
    let mut h = Harness::new();
    let mut c = half_closed(&mut h);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.owed(), 5);
}

#[test]
fn half_closed_delivers_partially_then_closes_when_done() {
    let mut h = Harness::new();
    let mut c = half_closed(&mut h);
    c.stream.window = 2;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::HalfClosed);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output, b"hello");
}

#[test]
fn half_closed_closes_on_write_error() {
    let mut h = Harness::new();
    let mut c = half_closed(&mut h);
    c.stream.write_error = Some(io::ErrorKind::BrokenPipe);
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::Reset));
}

#[test]
fn half_closed_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = half_closed(&mut h);
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn half_closed_shutdown_keeps_delivering() {
    let mut h = Harness::new();
    let mut c = half_closed(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::HalfClosed);
}

// ---- DRAINING ----------------------------------------------------------------------------------

#[test]
fn draining_with_an_echo_owed_reads_nothing() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.input.push_back(Input::Bytes(b"late".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.owed(), 5);
    assert_eq!(c.stream.input.len(), 1, "the input waits for the flush");
}

#[test]
fn draining_sends_fin_once_delivered_if_the_client_has_paused() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    h.now += h.settings.request_grace;
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"hello");
    assert!(c.stream.fin_sent);
    assert_eq!(
        c.state(),
        State::Lingering {
            until: h.now + h.settings.linger
        }
    );
}

/// Nothing waits, but the client sent its last bytes only just now: they may be the start of a
/// pause or a gap in a stream still under way. Only `--request-grace` of silence tells.
#[test]
fn draining_waits_for_the_pause_before_calling_a_client_quiet() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"hello");
    assert!(!c.stream.fin_sent);
    assert_eq!(c.state(), State::Draining);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);

    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    assert!(c.stream.fin_sent);
    assert!(matches!(c.state(), State::Lingering { .. }));
}

#[test]
fn draining_input_within_the_pause_is_echoed_and_starts_the_pause_again() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    h.now += h.settings.request_grace / 2;
    c.stream.input.push_back(Input::Bytes(b" again".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"hello again");
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);
    assert!(!c.stream.fin_sent);
}

/// The pause's deadline reads once more before calling the client quiet: input found then is
/// echoed, and the pause starts again.
#[test]
fn draining_pause_deadline_echoes_input_it_finds_instead_of_sending_fin() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    h.now = c.deadline();
    c.stream.input.push_back(Input::Bytes(b"!".to_vec()));
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"hello!");
    assert!(!c.stream.fin_sent);
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);
}

/// Input that arrived while the echo was owed raises no new edge: the flush reads it at once.
#[test]
fn draining_echoes_input_that_waited_for_the_flush() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.input.push_back(Input::Bytes(b" world".to_vec()));
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"hello world");
    assert_eq!(h.stats.get(Metric::BytesIn), 11);
    assert_eq!(c.state(), State::Draining);
}

/// The client is slow to read: each time part of an echo is owed, reading stops until the flush
/// has delivered it, and then goes on. The connection owes at most one read's worth.
#[test]
fn draining_stops_reading_while_an_echo_is_owed_and_resumes_after_the_flush() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.input.push_back(Input::Bytes(b"abc".to_vec()));
    c.stream.input.push_back(Input::Bytes(b"def".to_vec()));
    c.stream.window = 6; // "hello", and one byte of the next echo
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"helloa");
    assert_eq!(
        c.owed(),
        5,
        "\"bcdef\" owed: everything waiting was one read"
    );
    assert_eq!(c.state(), State::Draining);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(
        c.deadline(),
        h.now + h.settings.idle_timeout,
        "no pause while owing"
    );

    c.stream.input.push_back(Input::Bytes(b"ghi".to_vec()));
    c.stream.window = 2;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.owed(), 3, "not yet delivered: nothing more read");
    assert_eq!(c.stream.input.len(), 1);

    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"helloabcdefghi");
    assert_eq!(c.interest(), Interest::READABLE);
}

/// The budget applies in DRAINING too: a spent connection stays DRAINING, readable, for the loop
/// to resume; it is not quiet, since input may still wait.
#[test]
fn draining_yields_once_its_budget_is_spent_and_goes_on_when_resumed() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.input.push_back(Input::Bytes(vec![1; 40]));
    c.stream.window = usize::MAX;
    h.now += h.settings.request_grace;
    let mut ctx = h.ctx();
    ctx.budget = 20;
    assert_eq!(c.on_writable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "spent: the loop will resume this connection");
    assert_eq!(
        c.stream.output.len(),
        5 + 32,
        "two reads of 16 (the high mark)"
    );
    assert_eq!(c.state(), State::Draining);
    assert_eq!(c.interest(), Interest::READABLE);

    // The loop's resumption: readable, then writable.
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output.len(), 5 + 40);
    assert!(!c.stream.fin_sent, "the client sent just now");
}

/// While reading was off, the client's FIN arrived behind its last bytes with its edge spent:
/// the read after the flush goes past the short read and finds it.
#[test]
fn draining_closes_at_the_clients_fin_once_everything_is_echoed() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.input.push_back(Input::Bytes(b"bye".to_vec()));
    c.stream.input.push_back(Input::Fin);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output, b"hellobye");
    assert!(
        !c.stream.fin_sent,
        "the client's FIN proves nothing is left to linger for"
    );
}

/// DRAINING reads only while nothing is owed, so the client's FIN always finds nothing owed: the
/// connection closes at once, where OPEN would go to HALF-CLOSED.
#[test]
fn draining_readable_with_nothing_owed_echoes_and_closes_at_the_clients_fin() {
    let mut h = Harness::new();
    let mut c = draining_with_nothing_owed(&mut h);
    c.stream.input.push_back(Input::Bytes(b"end".to_vec()));
    c.stream.input.push_back(Input::Fin);
    h.hangup = true;
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(c.stream.output.len(), 64 + 3);
}

#[test]
fn draining_readable_with_nothing_owed_keeps_echoing() {
    let mut h = Harness::new();
    let mut c = draining_with_nothing_owed(&mut h);
    c.stream.input.push_back(Input::Bytes(b"more".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output.len(), 64 + 4);
    assert_eq!(c.state(), State::Draining);
}

#[test]
fn draining_retries_interrupted_reads() {
    let mut h = Harness::new();
    let mut c = draining_with_nothing_owed(&mut h);
    c.stream.input.push_back(Input::Bytes(b"x".to_vec()));
    c.stream.interrupt = true;
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output.len(), 64 + 1);
}

#[test]
fn draining_closes_on_read_or_write_error() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    c.stream.write_error = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::Reset));

    let mut c = draining(&mut h);
    c.stream.window = usize::MAX;
    c.stream
        .input
        .push_back(Input::Fail(io::ErrorKind::InvalidData));
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::Error));
}

#[test]
fn draining_with_an_echo_owed_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    assert_eq!(c.deadline(), h.now + h.settings.idle_timeout);
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn draining_ignores_a_second_shutdown() {
    let mut h = Harness::new();
    let mut c = draining(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state(), State::Draining);
    assert!(!c.stream.fin_sent);
}

// ---- LINGERING ---------------------------------------------------------------------------------

#[test]
fn lingering_discards_input_until_the_clients_fin() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.interest(), Interest::READABLE);
    c.stream.input.push_back(Input::Bytes(b"unread".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty(), "nothing is echoed after FIN");
    c.stream.input.push_back(Input::Fin);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Shutdown));
}

#[test]
fn lingering_writable_writes_nothing() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
}

#[test]
fn lingering_ends_at_its_deadline() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.deadline(), h.now + h.settings.linger);
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Shutdown));
}

#[test]
fn lingering_closes_on_reset() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    c.stream
        .input
        .push_back(Input::Fail(io::ErrorKind::ConnectionReset));
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Reset));
}

#[test]
fn lingering_ignores_a_second_shutdown() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Lingering { .. }));
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn states_print_the_names_of_the_design_diagram() {
    let names: Vec<String> = [
        State::Open,
        State::Throttled,
        State::HalfClosed,
        State::Draining,
        State::Lingering {
            until: Instant::now(),
        },
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        names,
        ["OPEN", "THROTTLED", "HALF-CLOSED", "DRAINING", "LINGERING"]
    );
}
