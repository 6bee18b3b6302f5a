//! What the server counts, why connections close, and the one-line summary it logs.
//!
//! One [`Metric`] enum names every figure, so adding a figure is one new variant and its name: the
//! periodic line, the final summary and test snapshots all follow from that list.
//!
//! The loop's thread is the only writer. Other threads (tests, a caller holding a
//! [`Handle`](crate::Handle)) only read, so each counter is an atomic updated with a plain
//! load-then-store: no locked instruction on the hot path, yet every read sees a whole value.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use log::info;

/// Why a connection was closed. Each reason is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer finished (read returned zero) and everything owed was delivered.
    PeerClosed,
    /// The server finished the exchange (a download sent, a refusal reported) and closed.
    Finished,
    /// The peer reset or abandoned the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// Nothing moved for longer than the idle timeout.
    Idle,
    /// Refused at once because the server was at `--max-conns`.
    Limit,
    /// An unexpected I/O error on this connection alone.
    Error,
    /// Closed because the server shut down (gracefully, or when the grace period ran out).
    Shutdown,
}

impl CloseReason {
    /// The counter this reason adds to.
    pub fn metric(self) -> Metric {
        match self {
            CloseReason::PeerClosed => Metric::ClosedPeer,
            CloseReason::Finished => Metric::ClosedFinished,
            CloseReason::Reset => Metric::ClosedReset,
            CloseReason::Idle => Metric::ClosedIdle,
            CloseReason::Limit => Metric::ClosedLimit,
            CloseReason::Error => Metric::ClosedError,
            CloseReason::Shutdown => Metric::ClosedShutdown,
        }
    }
}

/// Declares [`Metric`] with its printed names, in the order the summary prints them.
macro_rules! metrics {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// One figure the server keeps.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Metric {
            $($(#[$doc])* $variant,)+
        }

        impl Metric {
            /// Every metric, in summary order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)+];

            /// The name used in log lines: `name=value`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)+
                }
            }
        }
    };
}

metrics! {
    /// Client connections accepted and registered.
    Accepted => "accepted",
    /// Client connections open now.
    Open => "open",
    /// Closed: the peer finished.
    ClosedPeer => "closed_peer",
    /// Closed: the server finished the exchange.
    ClosedFinished => "closed_finished",
    /// Closed: the peer reset.
    ClosedReset => "closed_reset",
    /// Closed: idle timeout.
    ClosedIdle => "closed_idle",
    /// Closed at once: `--max-conns` reached.
    ClosedLimit => "closed_limit",
    /// Closed: unexpected I/O error.
    ClosedError => "closed_error",
    /// Closed: the server shut down.
    ClosedShutdown => "closed_shutdown",
    /// Bytes read from clients.
    BytesIn => "bytes_in",
    /// Bytes written to clients.
    BytesOut => "bytes_out",
    /// The most bytes any one connection has held in its output buffer.
    BufferedPeak => "buffered_peak",
    /// Downloads whose file was opened and whose header (if any) was queued.
    DownloadsStarted => "downloads_started",
    /// Downloads whose every byte was sent.
    DownloadsCompleted => "downloads_completed",
    /// Download requests answered with `ERR` (or, in the bare form, closed without a reply).
    DownloadsRefused => "downloads_refused",
    /// Downloads cut short by the client (gone, idle) or by shutdown.
    DownloadsAborted => "downloads_aborted",
    /// Downloads ended early because the file shrank while being sent.
    DownloadsTruncated => "downloads_truncated",
    /// `LIST` replies.
    Listings => "listings",
    /// Files open for downloads now.
    OpenFiles => "open_files",
    /// Body bytes sent with `sendfile(2)`.
    BodyBytesSendfile => "body_bytes_sendfile",
    /// Body bytes copied through user space (`--no-sendfile`, or no `sendfile` here).
    BodyBytesCopied => "body_bytes_copied",
    /// Datagrams received by the chat relay.
    ChatIn => "chat_in",
    /// Datagrams sent by the chat relay.
    ChatOut => "chat_out",
    /// Member messages delivered to a member (one per recipient).
    ChatRelayed => "chat_relayed",
    /// Datagrams refused with a `* ` error (too long, not UTF-8, control characters, empty, server full, unanswerable).
    ChatRefused => "chat_refused",
    /// Datagrams dropped by the per-member rate limit.
    ChatDroppedRate => "chat_dropped_rate",
    /// Queued datagrams dropped, oldest first, because the send queue was full.
    ChatDroppedQueue => "chat_dropped_queue",
    /// Datagrams the socket refused to send for good.
    ChatDroppedSend => "chat_dropped_send",
    /// Verification cookies sent (`--chat-verify`).
    ChatChallenges => "chat_challenges",
    /// Chat members now.
    ChatMembers => "chat_members",
    /// Chat rooms now.
    ChatRooms => "chat_rooms",
    /// Times `accept` failed (out of descriptors, or unexpectedly) and the listener backed off.
    AcceptBackoffs => "accept_backoffs",
    /// Passes of the loop (one `poll` each).
    LoopIterations => "loop_iterations",
    /// Readiness events taken from `poll`, stale ones included.
    Events => "events",
    /// Events dropped because their token's endpoint had been closed.
    StaleEvents => "stale_events",
}

/// The live figures, written by the loop's thread only.
#[derive(Debug)]
pub struct Stats {
    values: Vec<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            values: Metric::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Stats {
    /// Adds `n` to a metric.
    pub fn add(&self, metric: Metric, n: u64) {
        let cell = &self.values[metric as usize];
        // Single writer: a load and a store need no read-modify-write instruction.
        cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(&self, metric: Metric, n: u64) {
        let cell = &self.values[metric as usize];
        cell.store(cell.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Raises a high-water figure to `value` if it is higher.
    pub fn raise(&self, metric: Metric, value: u64) {
        let cell = &self.values[metric as usize];
        if value > cell.load(Relaxed) {
            cell.store(value, Relaxed);
        }
    }

    /// Counts one connection closed for `reason`.
    pub fn count_close(&self, reason: CloseReason) {
        self.add(reason.metric(), 1);
    }

    /// The current value of one metric.
    pub fn get(&self, metric: Metric) -> u64 {
        self.values[metric as usize].load(Relaxed)
    }

    /// A copy of every figure, taken now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.values.iter().map(|v| v.load(Relaxed)).collect())
    }
}

/// Every figure at one moment, printed as `name=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<u64>);

impl Snapshot {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> u64 {
        self.0[metric as usize]
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, metric) in Metric::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", metric.name(), self.get(*metric))?;
        }
        Ok(())
    }
}

/// The periodic line of `--stats-interval`: the figures logged at info level, every interval.
#[derive(Debug)]
pub struct StatsLine {
    /// 0 means never.
    interval: Duration,
    /// When the next line is due; `None` when never, or not started.
    next: Option<Instant>,
}

impl StatsLine {
    /// A line every `interval`; never when it is zero.
    pub fn new(interval: Duration) -> Self {
        StatsLine {
            interval,
            next: None,
        }
    }

    /// The first line falls due one interval after `now`.
    pub fn start(&mut self, now: Instant) {
        self.next = (!self.interval.is_zero()).then(|| now + self.interval);
    }

    /// When the loop must wake up to log the next line.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Logs the line if it is due, and schedules the next one.
    pub fn log_if_due(&mut self, now: Instant, stats: &Stats) {
        if let Some(at) = self.next.filter(|at| *at <= now) {
            info!("stats: {}", stats.snapshot());
            // A late pass does not cause a burst of lines to catch up.
            self.next = Some(at.max(now) + self.interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_line_falls_due_every_interval_and_never_at_zero() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let mut line = StatsLine::new(second);
        line.start(now);
        assert_eq!(line.deadline(), Some(now + second));
        line.log_if_due(now + 3 * second, &Stats::default());
        assert_eq!(line.deadline(), Some(now + 4 * second), "no catching up");
        let mut never = StatsLine::new(Duration::ZERO);
        never.start(now);
        assert_eq!(never.deadline(), None);
    }

    #[test]
    fn metrics_are_listed_in_declaration_order() {
        for (i, metric) in Metric::ALL.iter().enumerate() {
            assert_eq!(*metric as usize, i);
        }
    }

    #[test]
    fn counters_gauges_and_peaks_update_as_named() {
        let stats = Stats::default();
        stats.add(Metric::Open, 3);
        stats.sub(Metric::Open, 1);
        stats.raise(Metric::BufferedPeak, 10);
        stats.raise(Metric::BufferedPeak, 4);
        stats.count_close(CloseReason::Idle);
        let snap = stats.snapshot();
        assert_eq!(snap.get(Metric::Open), 2);
        assert_eq!(snap.get(Metric::BufferedPeak), 10);
        assert_eq!(snap.get(Metric::ClosedIdle), 1);
    }

    #[test]
    fn summary_line_names_every_metric() {
        let line = Stats::default().snapshot().to_string();
        assert!(line.starts_with("accepted=0 open=0 "));
        assert_eq!(line.split(' ').count(), Metric::ALL.len());
    }
}
