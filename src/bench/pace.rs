//! When a client starts its next operation: in a closed loop, as soon as an earlier one finishes;
//! in an open loop, at the instant a fixed timetable gives it, whether or not earlier replies
//! came back.
//!
//! A closed loop is a patient client. When the server stalls, each connection waits for its
//! reply and sends nothing more, so the stall delays one operation per connection and the
//! thousands a real client population would have sent meanwhile are never measured: the
//! generator coordinates with the server and omits the bad news (coordinated omission).
//!
//! An open loop (`--rate R`) keeps a timetable instead. Operation `g` of the run, counted across
//! every client, is due `g / R` seconds after the timetable starts; client `i` of `n` takes
//! operations `i`, `i + n`, `i + 2n`, ..., so the clients' operations interleave evenly and each
//! runs at `R / n`. A client's timetable starts when it is first ready to send (an echo client
//! once connected, a chat sender once its room is complete, a connect or download client at
//! once), so the generator's own start-up is not charged to the server. Every
//! operation's latency is measured from the instant it was due, not from when the client got
//! round to starting it: an operation held back by a stall, by the client's in-flight bound
//! (`--max-inflight`) or by a reconnect carries that wait in its latency. That is wrk2's
//! correction, and here it is exact: each operation knows its own due instant, nothing is
//! estimated or back-filled.
//!
//! A client that cannot keep to the timetable is said to fall behind. The run counts the
//! operations that started late ([`LATE`] or more after their due instant), the largest delay,
//! and the operations that were due before the load stopped but never started; the report
//! says so.

use std::time::{Duration, Instant};

use super::driver::Ctx;

/// An operation that starts this long or more after its due instant counts as late. Timer
/// slack and the loop's own work delay a start by tens of microseconds; a millisecond means
/// the client was held back: by its in-flight bound, a reconnect, or a busy generator thread.
pub const LATE: Duration = Duration::from_millis(1);

/// The default `--max-inflight`: operations one client may have in flight in an open loop.
/// Deep enough to ride out a stall of 64 intervals without holding the timetable back; the
/// latency stays exact past it, as operations then wait in the client and carry that wait.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;

/// Closed or open loop, as the command line asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each client starts an operation when an earlier one finishes: a fixed concurrency.
    Closed,
    /// Operations start on a timetable at `rate` per second in total, each client keeping at
    /// most `max_inflight` in flight.
    Open {
        /// Operations per second, all clients together (chat: messages sent).
        rate: f64,
        /// Operations one client may have in flight at once (`--max-inflight`).
        max_inflight: usize,
    },
}

impl Mode {
    /// `closed` or `open`, as the JSON says.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
        }
    }

    /// The rate asked for; `None` in a closed loop.
    pub fn rate(&self) -> Option<f64> {
        match self {
            Mode::Closed => None,
            Mode::Open { rate, .. } => Some(*rate),
        }
    }
}

/// One client's share of an open loop's timetable: the operations `i`, `i + n`, `i + 2n`, ...
/// of the run, due at `g / rate` seconds after the timetable's origin.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timetable {
    /// When the timetable started: the first time the client asked what is due. `None` before.
    origin: Option<Instant>,
    /// Operations per second, all clients together.
    rate: f64,
    /// The run-wide number of this client's next operation.
    next: u64,
    /// Clients sharing the timetable: the step from one of this client's operations to its next.
    stride: u64,
}

impl Timetable {
    /// The timetable of client `client` of `clients` at `rate` operations per second in total.
    pub fn new(rate: f64, client: usize, clients: usize) -> Timetable {
        Timetable {
            origin: None,
            rate,
            next: client as u64,
            stride: clients.max(1) as u64,
        }
    }

    /// Starts the timetable at `now`, unless it has started already.
    fn start(&mut self, now: Instant) -> Instant {
        *self.origin.get_or_insert(now)
    }

    /// When operation `g` of the run is due, on a timetable that started at `origin`.
    fn due(&self, g: u64, origin: Instant) -> Instant {
        // `g` grows with the run, never past the operations due within the hour a run may last
        // plus one round of clients, and the rate is at least `MIN_RATE`: the offset stays far
        // inside what a Duration and an Instant hold.
        origin + Duration::from_secs_f64(g as f64 / self.rate)
    }

    /// When this client's next operation is due; `None` before the timetable started.
    pub fn next_due(&self) -> Option<Instant> {
        self.origin.map(|origin| self.due(self.next, origin))
    }

    /// The next operation started: on to the one after.
    fn advance(&mut self) {
        self.next += self.stride;
    }

    /// This client's operations due at or before `now` that have not started; none before the
    /// timetable started.
    pub fn overdue(&self, now: Instant) -> u64 {
        let Some(origin) = self.origin else {
            return 0;
        };
        // The last operation of the run due by now: g / rate <= elapsed.
        let last = (now.saturating_duration_since(origin).as_secs_f64() * self.rate).floor() as u64;
        if last < self.next {
            0
        } else {
            (last - self.next) / self.stride + 1
        }
    }
}

/// What a client may do about its next operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Start it now; its latency counts from this instant (now, or its due instant).
    Now(Instant),
    /// Not due yet: ask for a wake-up at this instant.
    At(Instant),
    /// As many operations as allowed are in flight: wait for one to finish.
    Full,
}

/// How one client paces its operations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pace {
    /// Closed loop: `depth` operations in flight, the next as soon as one finishes.
    Closed {
        /// Operations kept in flight (`--pipeline`, a chat sender's window, or one).
        depth: usize,
    },
    /// Open loop: operations start when due, at most `max_inflight` at once.
    Open {
        timetable: Timetable,
        max_inflight: usize,
    },
}

impl Pace {
    /// The pace of client `client` of `clients` in `mode`; `depth` is the closed loop's.
    pub fn new(mode: Mode, depth: usize, client: usize, clients: usize) -> Pace {
        match mode {
            Mode::Closed => Pace::Closed { depth },
            Mode::Open { rate, max_inflight } => Pace::Open {
                timetable: Timetable::new(rate, client, clients),
                max_inflight,
            },
        }
    }

    /// The pace of a client with one operation at a time (a connection or a download each):
    /// its in-flight bound is one in either loop.
    pub fn single(mode: Mode, client: usize, clients: usize) -> Pace {
        match mode {
            Mode::Closed => Pace::Closed { depth: 1 },
            Mode::Open { rate, .. } => Pace::Open {
                timetable: Timetable::new(rate, client, clients),
                max_inflight: 1,
            },
        }
    }

    /// May an operation start now, with `in_flight` already in flight? The first question
    /// starts an open loop's timetable; otherwise asking changes nothing, and
    /// [`Pace::started`] takes the operation once it really started.
    pub fn next(&mut self, in_flight: usize, ctx: &Ctx<'_>) -> Start {
        match self {
            Pace::Closed { depth } if in_flight < *depth => Start::Now(ctx.now),
            Pace::Closed { .. } => Start::Full,
            Pace::Open { max_inflight, .. } if in_flight >= *max_inflight => Start::Full,
            Pace::Open { timetable, .. } => {
                let origin = timetable.start(ctx.now);
                let due = timetable.due(timetable.next, origin);
                if due <= ctx.now {
                    Start::Now(due)
                } else {
                    Start::At(due)
                }
            }
        }
    }

    /// The operation [`Pace::next`] allowed has started: on an open loop's timetable, counts
    /// how late it started and moves on to the next.
    pub fn started(&mut self, ctx: &mut Ctx<'_>) {
        match self {
            Pace::Closed { .. } => {}
            Pace::Open { timetable, .. } => {
                let due = timetable.next_due().unwrap_or(ctx.now);
                ctx.tally
                    .started_after(ctx.now.saturating_duration_since(due));
                timetable.advance();
            }
        }
    }

    /// The load stopped: counts the operations that were due but never started.
    pub fn stopped(&self, ctx: &mut Ctx<'_>) {
        match self {
            Pace::Closed { .. } => {}
            Pace::Open { timetable, .. } => {
                ctx.tally.behind.unstarted += timetable.overdue(ctx.now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::driver::harness::{Harness, closed_port};

    fn open(rate: f64, max_inflight: usize, client: usize, clients: usize) -> Pace {
        Pace::new(Mode::Open { rate, max_inflight }, 1, client, clients)
    }

    #[test]
    fn the_timetable_interleaves_clients_evenly_at_the_total_rate() {
        let epoch = Instant::now();
        // 1000/s over 4 clients: client 1 takes operations 1, 5, 9, ... every 4 ms from 1 ms.
        let mut t = Timetable::new(1000.0, 1, 4);
        assert_eq!(t.next_due(), None, "not started");
        t.start(epoch);
        let mut due = Vec::new();
        for _ in 0..3 {
            due.push(t.next_due().expect("started") - epoch);
            t.advance();
        }
        let ms = Duration::from_millis;
        assert_eq!(due, [ms(1), ms(5), ms(9)]);
    }

    #[test]
    fn the_timetable_does_not_drift_over_an_hour() {
        let epoch = Instant::now();
        let mut t = Timetable::new(3.0, 0, 1);
        t.start(epoch);
        t.next = 3 * 3600;
        assert_eq!(t.next_due(), Some(epoch + Duration::from_secs(3600)));
    }

    #[test]
    fn overdue_counts_this_clients_operations_due_and_not_started() {
        let epoch = Instant::now();
        let mut t = Timetable::new(1000.0, 1, 4);
        assert_eq!(t.overdue(epoch + Duration::from_secs(1)), 0, "not started");
        t.start(epoch);
        assert_eq!(t.overdue(epoch), 0, "its first is due at 1 ms");
        assert_eq!(t.overdue(epoch + Duration::from_millis(1)), 1);
        // Due by 10 ms: operations 1, 5 and 9.
        assert_eq!(t.overdue(epoch + Duration::from_millis(10)), 3);
    }

    #[test]
    fn a_closed_loop_starts_now_until_its_depth_is_in_flight() {
        let mut h = Harness::new(closed_port(), None);
        let mut pace = Pace::new(Mode::Closed, 2, 0, 1);
        let now = Instant::now();
        let ctx = h.ctx(now);
        assert_eq!(pace.next(0, &ctx), Start::Now(now));
        assert_eq!(pace.next(1, &ctx), Start::Now(now));
        assert_eq!(pace.next(2, &ctx), Start::Full);
    }

    #[test]
    fn an_open_loop_waits_for_the_due_instant_and_dates_the_start_from_it() {
        let mut h = Harness::new(closed_port(), None);
        let epoch = h.shared.epoch;
        let mut pace = open(100.0, 8, 0, 2);
        // Client 0 of 2 at 100/s, first asked at `epoch`: due then, at 20 ms, 40 ms, ...
        assert_eq!(pace.next(0, &h.ctx(epoch)), Start::Now(epoch));
        pace.started(&mut h.ctx(epoch));
        let second = epoch + Duration::from_millis(20);
        assert_eq!(pace.next(1, &h.ctx(epoch)), Start::At(second));
        // Started 30 ms after it was due: the latency counts from the due instant.
        let late = second + Duration::from_millis(30);
        assert_eq!(pace.next(1, &h.ctx(late)), Start::Now(second));
        pace.started(&mut h.ctx(late));
        assert_eq!(h.tally.behind.late, 1);
        assert_eq!(h.tally.behind.max_lag, Duration::from_millis(30));
    }

    #[test]
    fn an_open_loop_at_its_bound_waits_for_a_reply_even_when_due() {
        let mut h = Harness::new(closed_port(), None);
        let epoch = h.shared.epoch;
        let mut pace = open(100.0, 2, 0, 1);
        assert_eq!(pace.next(2, &h.ctx(epoch)), Start::Full);
        assert_eq!(pace.next(1, &h.ctx(epoch)), Start::Now(epoch));
    }

    #[test]
    fn an_operation_on_time_is_not_late() {
        let mut h = Harness::new(closed_port(), None);
        let epoch = h.shared.epoch;
        let mut pace = open(100.0, 8, 0, 1);
        assert_eq!(pace.next(0, &h.ctx(epoch)), Start::Now(epoch));
        pace.started(&mut h.ctx(epoch + LATE / 2));
        assert_eq!(h.tally.behind.late, 0);
        assert_eq!(h.tally.behind.max_lag, LATE / 2);
    }

    #[test]
    fn stopping_counts_the_operations_due_but_never_started() {
        let mut h = Harness::new(closed_port(), None);
        let epoch = h.shared.epoch;
        let mut pace = open(1000.0, 8, 0, 1);
        pace.next(0, &h.ctx(epoch));
        pace.stopped(&mut h.ctx(epoch + Duration::from_micros(4500)));
        assert_eq!(h.tally.behind.unstarted, 5, "due at 0, 1, 2, 3 and 4 ms");
        Pace::new(Mode::Closed, 1, 0, 1).stopped(&mut h.ctx(epoch + Duration::from_secs(1)));
        assert_eq!(
            h.tally.behind.unstarted, 5,
            "a closed loop has no timetable"
        );
    }

    #[test]
    fn a_single_operation_client_has_a_bound_of_one_in_either_loop() {
        let open = Mode::Open {
            rate: 10.0,
            max_inflight: 64,
        };
        assert!(matches!(
            Pace::single(open, 0, 1),
            Pace::Open {
                max_inflight: 1,
                ..
            }
        ));
        assert_eq!(Pace::single(Mode::Closed, 0, 1), Pace::Closed { depth: 1 });
    }
}
