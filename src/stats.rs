//! What the server counts, why connections close, and the one-line summary it logs.
//!
//! One [`Metric`] enum names every figure, so adding a figure is one new variant and its name: the
//! periodic line, the final summary and test snapshots all follow from that list. Beside them, a
//! few [`ServiceMetric`]s are kept per [`ServiceId`], and three kinds of [`Histogram`] record the
//! loop's rhythm and connection lifetimes, for the admin service's `/metrics` and `/stats.json`.
//!
//! The loop's thread is the only writer. Other threads (tests, a caller holding a
//! [`Handle`](crate::Handle)) only read, so each counter is an atomic updated with a plain
//! load-then-store: no locked instruction on the hot path, yet every read sees a whole value.
//!
//! The `syscalls_*` figures, the loop's system calls by kind, are the one exception to "counted
//! where it happens": they are counted in cells of the loop's own thread, where no `Stats` is in
//! reach, and added here once per pass ([`Stats::add_calls`]; [`counted`] says why). So they may
//! lag the other figures by the pass under way.

pub mod histogram;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use log::info;

use crate::sys::counted::{self, Call};
use histogram::{EVENTS_PER_POLL, LIFETIME_SECONDS, PASS_SECONDS};
pub use histogram::{Histogram, HistogramSnapshot};

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
    /// Every reason, in the order of their metrics.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::PeerClosed,
        CloseReason::Finished,
        CloseReason::Reset,
        CloseReason::Idle,
        CloseReason::Limit,
        CloseReason::Error,
        CloseReason::Shutdown,
    ];

    /// The reason's name as a metric label (`reason="idle"`): its metric's name without `closed_`.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer",
            CloseReason::Finished => "finished",
            CloseReason::Reset => "reset",
            CloseReason::Idle => "idle",
            CloseReason::Limit => "limit",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }

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
    /// Bytes read from clients (chat datagrams included).
    BytesIn => "bytes_in",
    /// Bytes written to clients (chat datagrams included).
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
    /// Downloads the server abandoned after starting them (the file shrank or failed, the shutdown
    /// grace ran out), closed with a reset so the client sees they are incomplete.
    DownloadsReset => "downloads_reset",
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
    /// Chat bus connections to Redis ready now: 0, 1 or 2 (`--chat-bus`).
    ChatBusLinksUp => "chat_bus_links_up",
    /// Times a chat bus connection became ready.
    ChatBusConnects => "chat_bus_connects",
    /// Chat bus connections closed, or attempts failed, because Redis refused, reset or closed.
    ChatBusClosedGone => "chat_bus_closed_gone",
    /// Chat bus connections closed because a connect or an answer did not come in time.
    ChatBusClosedSlow => "chat_bus_closed_slow",
    /// Chat bus connections closed because Redis sent what is not the answer: not RESP, too
    /// large, out of turn, or a refusal of an opening command.
    ChatBusClosedProtocol => "chat_bus_closed_protocol",
    /// Messages published for other nodes and taken by Redis.
    ChatBusPublished => "chat_bus_published",
    /// Messages from other nodes handled here.
    ChatBusReceived => "chat_bus_received",
    /// Commands for Redis dropped, oldest first, because the bus queue was full.
    ChatBusDroppedQueue => "chat_bus_dropped_queue",
    /// Messages not published because the bus was down.
    ChatBusDroppedDown => "chat_bus_dropped_down",
    /// Messages from the bus that were not valid envelopes.
    ChatBusDroppedInvalid => "chat_bus_dropped_invalid",
    /// Times `accept` failed (out of descriptors, or unexpectedly) and the listener backed off.
    AcceptBackoffs => "accept_backoffs",
    /// Passes of the loop (one `poll` each).
    LoopIterations => "loop_iterations",
    /// Readiness events taken from `poll`, stale ones included.
    Events => "events",
    /// Events dropped because their token's endpoint had been closed.
    StaleEvents => "stale_events",
    /// System calls made by the loop, by kind (see [`counted`]): `epoll_wait`, one per pass.
    SyscallsEpollWait => "syscalls_epoll_wait",
    /// `epoll_ctl`: registrations, re-registrations and deregistrations.
    SyscallsEpollCtl => "syscalls_epoll_ctl",
    /// `accept4`: connections accepted, and the attempts that found the queue empty.
    SyscallsAccept4 => "syscalls_accept4",
    /// `recvfrom`: reads from TCP clients and chat datagrams received, `WouldBlock` included.
    SyscallsRecvfrom => "syscalls_recvfrom",
    /// `sendto`: writes to TCP clients (and chat datagrams off Linux), `WouldBlock` included.
    SyscallsSendto => "syscalls_sendto",
    /// `sendmmsg`: chat datagrams sent in batches (Linux), `WouldBlock` included.
    SyscallsSendmmsg => "syscalls_sendmmsg",
    /// `sendfile`: download bodies sent from the page cache.
    SyscallsSendfile => "syscalls_sendfile",
    /// `pread64`: download bodies read on the copy path.
    SyscallsPread64 => "syscalls_pread64",
    /// `shutdown`: FINs sent before a lingering close.
    SyscallsShutdown => "syscalls_shutdown",
    /// `setsockopt`: `TCP_NODELAY` on admin connections, `SO_LINGER` 0 before a reset.
    SyscallsSetsockopt => "syscalls_setsockopt",
    /// `getpeername`: peer addresses asked for the admin service's connection list.
    SyscallsGetpeername => "syscalls_getpeername",
    /// `close`: client sockets closed.
    SyscallsClose => "syscalls_close",
}

/// The services a figure can be kept for, as the `service` label and `/stats.json` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceId {
    /// TCP echo.
    Echo,
    /// TCP file download.
    Files,
    /// The UDP chat relay.
    Chat,
    /// The admin HTTP service.
    Admin,
}

impl ServiceId {
    /// Every service, in the order they are reported.
    pub const ALL: [ServiceId; 4] = [
        ServiceId::Echo,
        ServiceId::Files,
        ServiceId::Chat,
        ServiceId::Admin,
    ];

    /// The service's name: `echo`, `files`, `chat`, `admin`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceId::Echo => "echo",
            ServiceId::Files => "files",
            ServiceId::Chat => "chat",
            ServiceId::Admin => "admin",
        }
    }
}

/// A figure kept for each service separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMetric {
    /// Connections accepted and registered (none for chat, which has no connections).
    Accepted,
    /// Connections open now: a gauge.
    Open,
    /// Requests served. Echo: reads that carried data; files: requests answered (GET, LIST, bare,
    /// refused included); chat: datagrams received; admin: HTTP requests.
    Requests,
    /// Bytes received from the service's clients.
    BytesIn,
    /// Bytes sent to the service's clients.
    BytesOut,
}

impl ServiceMetric {
    /// Every per-service metric.
    pub const ALL: [ServiceMetric; 5] = [
        ServiceMetric::Accepted,
        ServiceMetric::Open,
        ServiceMetric::Requests,
        ServiceMetric::BytesIn,
        ServiceMetric::BytesOut,
    ];

    /// The name used in `/stats.json`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceMetric::Accepted => "accepted",
            ServiceMetric::Open => "open",
            ServiceMetric::Requests => "requests",
            ServiceMetric::BytesIn => "bytes_in",
            ServiceMetric::BytesOut => "bytes_out",
        }
    }
}

/// One service's counters, on a cache line of their own: a request touches its service's line
/// and the global one, never a line another service's requests are writing.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ServiceCells([AtomicU64; ServiceMetric::ALL.len()]);

/// Adds `n` to a counter that only the loop's thread writes.
fn bump(cell: &AtomicU64, n: u64) {
    // Single writer: a load and a store need no read-modify-write instruction.
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The live figures, written by the loop's thread only.
#[derive(Debug)]
pub struct Stats {
    values: Vec<AtomicU64>,
    services: [ServiceCells; ServiceId::ALL.len()],
    /// Time per loop pass: [`PASS_SECONDS`].
    pass: Histogram,
    /// Events per `poll`: [`EVENTS_PER_POLL`].
    events: Histogram,
    /// Connection lifetime per service: [`LIFETIME_SECONDS`]. Chat's stays empty.
    lifetimes: [Histogram; ServiceId::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            values: Metric::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            services: Default::default(),
            pass: Histogram::new(&PASS_SECONDS),
            events: Histogram::new(&EVENTS_PER_POLL),
            lifetimes: std::array::from_fn(|_| Histogram::new(&LIFETIME_SECONDS)),
        }
    }
}

impl Stats {
    /// Adds `n` to a metric.
    pub fn add(&self, metric: Metric, n: u64) {
        bump(&self.values[metric as usize], n);
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

    /// Adds the system calls the loop's thread counted since its last fold: the loop calls this
    /// once per pass with [`counted::take`].
    pub fn add_calls(&self, counts: counted::Counts) {
        for (call, n) in Call::ALL.into_iter().zip(counts) {
            self.add(call.metric(), n);
        }
    }

    /// The current value of one metric.
    pub fn get(&self, metric: Metric) -> u64 {
        self.values[metric as usize].load(Relaxed)
    }

    /// Adds `n` to one service's metric.
    pub fn service_add(&self, service: ServiceId, metric: ServiceMetric, n: u64) {
        bump(&self.services[service as usize].0[metric as usize], n);
    }

    /// Subtracts `n` from one service's gauge.
    pub fn service_sub(&self, service: ServiceId, metric: ServiceMetric, n: u64) {
        let cell = &self.services[service as usize].0[metric as usize];
        cell.store(cell.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// The current value of one service's metric.
    pub fn service_get(&self, service: ServiceId, metric: ServiceMetric) -> u64 {
        self.services[service as usize].0[metric as usize].load(Relaxed)
    }

    /// Records one pass of the loop, from `poll` returning to the next `poll`.
    pub fn observe_pass(&self, took: Duration) {
        self.pass.observe(nanos(took));
    }

    /// Records how many events one `poll` returned.
    pub fn observe_events(&self, events: usize) {
        self.events.observe(events as u64);
    }

    /// Records the lifetime of a closed connection, accept to close.
    pub fn observe_lifetime(&self, service: ServiceId, lived: Duration) {
        self.lifetimes[service as usize].observe(nanos(lived));
    }

    /// A copy of every figure, taken now.
    pub fn snapshot(&self) -> Snapshot {
        let load = |cell: &AtomicU64| cell.load(Relaxed);
        Snapshot {
            values: self.values.iter().map(load).collect(),
            services: std::array::from_fn(|s| self.services[s].0.each_ref().map(load)),
            pass: self.pass.snapshot(),
            events: self.events.snapshot(),
            lifetimes: self.lifetimes.each_ref().map(Histogram::snapshot),
        }
    }
}

/// A duration in nanoseconds; 584 years and more saturate.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Every figure at one moment. Its `Display` is the summary line: the [`Metric`]s as
/// `name=value` pairs (per-service figures and histograms are for the admin service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    values: Vec<u64>,
    services: [[u64; ServiceMetric::ALL.len()]; ServiceId::ALL.len()],
    pass: HistogramSnapshot,
    events: HistogramSnapshot,
    lifetimes: [HistogramSnapshot; ServiceId::ALL.len()],
}

impl Snapshot {
    /// The value of one metric.
    pub fn get(&self, metric: Metric) -> u64 {
        self.values[metric as usize]
    }

    /// The value of one service's metric.
    pub fn service(&self, service: ServiceId, metric: ServiceMetric) -> u64 {
        self.services[service as usize][metric as usize]
    }

    /// Time per loop pass, in seconds.
    pub fn pass_time(&self) -> &HistogramSnapshot {
        &self.pass
    }

    /// Events per `poll`.
    pub fn events_per_poll(&self) -> &HistogramSnapshot {
        &self.events
    }

    /// Lifetime of one service's closed connections, in seconds.
    pub fn lifetime(&self, service: ServiceId) -> &HistogramSnapshot {
        &self.lifetimes[service as usize]
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

/// Bytes read and written, by all handlers (the global counters) or by one endpoint's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
}

impl Moved {
    /// The global counters now. Handlers count what they move there; the loop reads them before
    /// and after a handler's call, and the difference is that endpoint's, so no handler needs to
    /// know about per-endpoint counts.
    pub fn counted(stats: &Stats) -> Moved {
        Moved {
            bytes_in: stats.get(Metric::BytesIn),
            bytes_out: stats.get(Metric::BytesOut),
        }
    }

    /// What was moved between `before` and `self`.
    pub fn since(self, before: Moved) -> Moved {
        Moved {
            bytes_in: self.bytes_in.wrapping_sub(before.bytes_in),
            bytes_out: self.bytes_out.wrapping_sub(before.bytes_out),
        }
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
    fn service_figures_are_kept_apart_per_service() {
        let stats = Stats::default();
        stats.service_add(ServiceId::Echo, ServiceMetric::Open, 2);
        stats.service_sub(ServiceId::Echo, ServiceMetric::Open, 1);
        stats.service_add(ServiceId::Echo, ServiceMetric::BytesIn, 64);
        stats.service_add(ServiceId::Admin, ServiceMetric::Requests, 3);
        assert_eq!(stats.service_get(ServiceId::Echo, ServiceMetric::Open), 1);
        let snap = stats.snapshot();
        assert_eq!(snap.service(ServiceId::Echo, ServiceMetric::BytesIn), 64);
        assert_eq!(snap.service(ServiceId::Admin, ServiceMetric::Requests), 3);
        assert_eq!(snap.service(ServiceId::Files, ServiceMetric::BytesIn), 0);
        assert_eq!(snap.get(Metric::BytesIn), 0, "global figures are separate");
    }

    #[test]
    fn histograms_record_passes_events_and_lifetimes_per_service() {
        let stats = Stats::default();
        stats.observe_pass(Duration::from_micros(3));
        stats.observe_events(5);
        stats.observe_events(0);
        stats.observe_lifetime(ServiceId::Files, Duration::from_secs(2));
        let snap = stats.snapshot();
        assert_eq!(snap.pass_time().count(), 1);
        assert_eq!(snap.pass_time().sum(), 0.000003);
        assert_eq!(snap.events_per_poll().count(), 2);
        assert_eq!(snap.events_per_poll().sum(), 5.0);
        assert_eq!(snap.lifetime(ServiceId::Files).sum(), 2.0);
        assert_eq!(snap.lifetime(ServiceId::Echo).count(), 0);
    }

    #[test]
    fn names_are_the_labels_the_admin_service_shows() {
        let services: Vec<_> = ServiceId::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(services, ["echo", "files", "chat", "admin"]);
        for reason in CloseReason::ALL {
            assert_eq!(reason.metric().name(), format!("closed_{}", reason.name()));
        }
        for (i, metric) in ServiceMetric::ALL.iter().enumerate() {
            assert_eq!(*metric as usize, i);
        }
    }

    #[test]
    fn summary_line_names_every_metric() {
        let line = Stats::default().snapshot().to_string();
        assert!(line.starts_with("accepted=0 open=0 "));
        assert_eq!(line.split(' ').count(), Metric::ALL.len());
    }
}
