//! `readyloop bench`: the load generator, built the way the server is.
//!
//! Every generator thread (`--threads`, default 1) runs one mio readiness loop over its share of
//! the clients, each an explicit state machine with an `enum State` and one `transition` method,
//! as the server's connections are. So the generator costs little CPU per operation and is not
//! the bottleneck, and it is a second worked example of the design, seen from the client side.
//!
//! The scenarios, one module each:
//!
//! - [`echo`]: `-c` connections, `--pipeline` messages of `--size` bytes in flight on each;
//! - [`connect`]: connection churn, one echo round trip per connection;
//! - [`download`]: `-c` clients downloading `NAME` over and over, each verified against its size;
//! - [`chat`]: `--senders` and `--members` in one room on the UDP relay.
//!
//! Each runs in a closed loop (a fixed number of operations in flight, the next when one
//! finishes) or, with `--rate`, an open loop (operations on a fixed timetable whether or not
//! earlier replies came back, latency counted from when each was due). The closed loop's
//! latency understates what clients arriving at a steady rate see when the server stalls, since
//! it stops asking while it waits (coordinated omission); the open loop measures that wait
//! exactly. `pace.rs` explains both and keeps the timetable.
//!
//! Beneath them, `driver.rs` is the per-thread loop (warm-up, measuring, drain) and the
//! `Client` trait every scenario implements, `wakeup.rs` the exact wake-ups an open loop needs,
//! `tcp.rs` the states and the connect/read/write moves the TCP scenarios share, and `cli.rs`
//! the command line, sweeps included. [`report`] holds the tallies and the [`Report`];
//! [`distribution`] the latency histogram and its `.hgrm` text; `table.rs` the tables, [`json`]
//! the JSON documents, `chart.rs` the SVG charts.
//!
//! [`run`] starts the threads and supervises them: it prints the progress line, stops the run
//! early when the target is plainly unreachable, and merges the threads' tallies into a
//! [`Report`]. Every run is bounded: by `--warmup` plus `--duration` (each at most an hour) plus
//! a short drain, with every operation bounded by a 5 s timeout. Errors are counted by kind and
//! reported, never hidden; a run that reaches nothing fails with [`BenchError::Unreachable`].
//! The report says what the generator itself cost and how far an open loop fell behind, so that
//! a generator that set the pace instead of the server says so.

mod chart;
pub mod chat;
mod cli;
pub mod connect;
pub mod distribution;
pub mod download;
mod driver;
pub mod echo;
pub mod json;
mod pace;
pub mod report;
mod table;
mod tcp;
mod wakeup;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use self::chat::{Role, Roster, Seat};
pub use self::cli::{
    BenchArgs, ChatArgs, ConnectArgs, DownloadArgs, EchoArgs, MAX_STEPS, Plan, RunArgs,
    ScenarioArgs, Sweep, command, parse_rate, parse_target,
};
pub use self::distribution::Distribution;
use self::driver::{Client, DRAIN, OPERATION_TIMEOUT, Shared, drive};
use self::pace::Pace;
pub use self::pace::{DEFAULT_MAX_INFLIGHT, LATE, Mode};
pub use self::report::{Latency, Report};
use self::report::{Tally, noun};
use crate::service::download::request::Request;

/// Load is generated this long unless `--duration` says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// The longest run allowed: every run is bounded, and an hour is past any useful benchmark.
/// It is also the bound of a `--requests` run given no `--duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Largest echo `--size`, in bytes: 16 MiB per message is far past where throughput stops
/// changing, and bounds the memory a pipeline of them queues.
pub const MAX_ECHO_SIZE: usize = 16 << 20;

/// Largest `--pipeline`: more messages in flight than this only fill socket buffers.
pub const MAX_PIPELINE: usize = 4096;

/// Largest chat `--size`: the largest UDP payload over IPv4.
pub const MAX_CHAT_SIZE: usize = 65_507;

/// Most bytes one echo connection may have in flight (`--size` × `--pipeline`, or ×
/// `--max-inflight`): what its output buffer may have to hold while the server does not read.
pub const MAX_ECHO_IN_FLIGHT: usize = 64 << 20;

/// Lowest `--rate`, operations per second: one every 100 s, already far below a useful load.
pub const MIN_RATE: f64 = 0.01;

/// Highest `--rate`: ten million operations per second is past what any generator here can
/// send; the bound keeps the timetable's arithmetic far from its limits.
pub const MAX_RATE: f64 = 10e6;

/// How often the supervisor checks for an unreachable target while threads run.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What to run: a scenario against a target, how hard and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// What each client does.
    pub scenario: Scenario,
    /// The server's service address (echo, files or chat, to match the scenario).
    pub target: SocketAddr,
    /// Concurrent clients (`-c`); ignored by chat, whose sockets are senders plus members.
    pub connections: usize,
    /// Generator threads, each with its own mio loop; at most one per client.
    pub threads: usize,
    /// How long to measure load (at most [`MAX_DURATION`]).
    pub duration: Duration,
    /// Load generated before `duration` and not counted (`--warmup`): connections are made,
    /// caches warm, and an open loop's timetable is already running when measuring starts.
    pub warmup: Duration,
    /// Stop after this many operations (echo messages, connections, downloads, chat messages
    /// sent), or at `duration`, whichever comes first.
    pub requests: Option<u64>,
    /// Closed loop (a fixed number of operations in flight) or open loop (a fixed rate).
    pub mode: Mode,
    /// Pin generator thread `i` to core `(i + 1) % cores`, leaving core 0 to a server started
    /// with `readyloop serve --pin 0`.
    pub pin: bool,
    /// Draw a progress line on stderr once a second, if stderr is a terminal.
    pub progress: bool,
}

/// What each client of a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Echo round trips: `pipeline` messages of `size` bytes in flight per connection.
    Echo {
        /// Bytes per message.
        size: usize,
        /// Messages in flight per connection.
        pipeline: usize,
    },
    /// Connection churn: connect, one echo round trip, close.
    Connect,
    /// Repeated downloads of one file with `GET`.
    Download {
        /// The file's name relative to the server's root.
        name: String,
    },
    /// The chat relay: `senders` talking to a room that `members` listen in.
    Chat {
        /// Sockets that send (and receive).
        senders: usize,
        /// Sockets that only receive.
        members: usize,
        /// Bytes per message (at least [`chat::MIN_SIZE`]).
        size: usize,
        /// Relays the members join, in turn, instead of the target (`--members-at`); empty:
        /// everyone on the target.
        members_at: Vec<SocketAddr>,
    },
}

impl Scenario {
    /// `echo`, `connect`, `download` or `chat`.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Echo { .. } => "echo",
            Scenario::Connect => "connect",
            Scenario::Download { .. } => "download",
            Scenario::Chat { .. } => "chat",
        }
    }
}

/// Why a run could not be made.
#[derive(Debug)]
pub enum BenchError {
    /// An argument is out of range; the message names the flag.
    Invalid(String),
    /// Not one connection (or chat join) succeeded.
    Unreachable {
        /// The address tried.
        target: SocketAddr,
        /// The first failure.
        source: io::Error,
    },
    /// The generator itself failed (a thread or a poll instance could not be made).
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Invalid(message) => f.write_str(message),
            BenchError::Unreachable { target, source } => {
                write!(f, "cannot reach {target}: {}", plain(source))
            }
            BenchError::Io { what, source } => write!(f, "cannot {what}: {}", plain(source)),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Invalid(_) => None,
            BenchError::Unreachable { source, .. } | BenchError::Io { source, .. } => Some(source),
        }
    }
}

/// An I/O error as the C library words it, without Rust's `(os error 111)` suffix.
fn plain(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

impl Load {
    /// Clients (sockets) the run uses: `connections`, or senders plus members for chat.
    pub fn sockets(&self) -> usize {
        match &self.scenario {
            Scenario::Chat {
                senders, members, ..
            } => senders.saturating_add(*members),
            Scenario::Echo { .. } | Scenario::Connect | Scenario::Download { .. } => {
                self.connections
            }
        }
    }

    /// Checks what the types alone cannot.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] with a sentence naming the flag.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |message: String| Err(BenchError::Invalid(message));
        self.validate_mode()?;
        match &self.scenario {
            Scenario::Echo { size, pipeline } => {
                if !(1..=MAX_ECHO_SIZE).contains(size) {
                    return invalid(format!(
                        "--size must be between 1 and {MAX_ECHO_SIZE} bytes, not {size}"
                    ));
                }
                if !(1..=MAX_PIPELINE).contains(pipeline) {
                    return invalid(format!(
                        "--pipeline must be between 1 and {MAX_PIPELINE}, not {pipeline}"
                    ));
                }
                let (depth, flag) = match self.mode {
                    Mode::Closed => (*pipeline, "--pipeline"),
                    Mode::Open { max_inflight, .. } => (max_inflight, "--max-inflight"),
                };
                if size.saturating_mul(depth) > MAX_ECHO_IN_FLIGHT {
                    return invalid(format!(
                        "--size × {flag} must be at most {} MiB per connection, not {size} × \
                         {depth}: it is what a connection may have to hold while the server \
                         does not read",
                        MAX_ECHO_IN_FLIGHT >> 20
                    ));
                }
            }
            Scenario::Connect => {}
            Scenario::Download { name } => {
                if name.is_empty() || name.contains(['\n', '\r', '\0']) {
                    return invalid(format!(
                        "NAME must be a file name on one line, not {name:?}"
                    ));
                }
            }
            Scenario::Chat {
                senders,
                members,
                size,
                ..
            } => {
                if *senders == 0 {
                    return invalid("--senders must be at least 1".into());
                }
                if *members == 0 {
                    return invalid("--members must be at least 1".into());
                }
                if !(chat::MIN_SIZE..=MAX_CHAT_SIZE).contains(size) {
                    return invalid(format!(
                        "--size must be between {} and {MAX_CHAT_SIZE} bytes for chat (a message \
                         carries its sequence number and send time), not {size}",
                        chat::MIN_SIZE
                    ));
                }
            }
        }
        let chat = matches!(self.scenario, Scenario::Chat { .. });
        if !chat && self.connections == 0 {
            return invalid("-c (--connections) must be at least 1".into());
        }
        if self.threads == 0 {
            return invalid("--threads must be at least 1".into());
        }
        if self.threads > self.sockets() {
            let clients = if chat {
                format!("the sockets (--senders + --members = {})", self.sockets())
            } else {
                format!("the connections (-c {})", self.connections)
            };
            return invalid(format!(
                "--threads ({}) must not exceed {clients}: a thread without clients measures nothing",
                self.threads
            ));
        }
        if self.duration.is_zero() {
            return invalid("--duration must be longer than 0".into());
        }
        if self.duration > MAX_DURATION {
            return invalid(format!(
                "--duration must be at most {} s (1 hour): every run is bounded",
                MAX_DURATION.as_secs()
            ));
        }
        if self.requests == Some(0) {
            return invalid("--requests must be at least 1".into());
        }
        if self.warmup > MAX_DURATION {
            return invalid(format!(
                "--warmup must be at most {} s (1 hour): every run is bounded",
                MAX_DURATION.as_secs()
            ));
        }
        if !self.warmup.is_zero() && self.requests.is_some() {
            return invalid(
                "--warmup and --requests do not go together: the warm-up would spend requests \
                 that are then not counted"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks `--rate` and `--max-inflight` against the scenario.
    fn validate_mode(&self) -> Result<(), BenchError> {
        let invalid = |message: String| Err(BenchError::Invalid(message));
        let Mode::Open { rate, max_inflight } = self.mode else {
            return Ok(());
        };
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return invalid(format!(
                "--rate must be between {MIN_RATE} and {MAX_RATE:.0} per second, not {rate}"
            ));
        }
        match &self.scenario {
            Scenario::Echo { pipeline, .. } if *pipeline != 1 => invalid(
                "--pipeline is the closed loop's depth; with --rate, --max-inflight bounds the \
                 messages in flight"
                    .into(),
            ),
            Scenario::Echo { .. } | Scenario::Chat { .. } => {
                if !(1..=MAX_PIPELINE).contains(&max_inflight) {
                    return invalid(format!(
                        "--max-inflight must be between 1 and {MAX_PIPELINE}, not {max_inflight}"
                    ));
                }
                Ok(())
            }
            Scenario::Connect | Scenario::Download { .. } if max_inflight != 1 => invalid(
                "--max-inflight is 1 for connect and download: each client has one connection, \
                 so one operation, in flight; use -c for more at once"
                    .into(),
            ),
            Scenario::Connect | Scenario::Download { .. } => Ok(()),
        }
    }
}

/// The line printed above the table: what was run, against what.
impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        match &self.scenario {
            Scenario::Echo { size, pipeline } => write!(
                f,
                "echo {}: {}, {} B messages, pipeline {pipeline}",
                self.target,
                plural(self.connections, "connection"),
                size
            )?,
            Scenario::Connect => write!(
                f,
                "connect {}: {} in parallel",
                self.target,
                plural(self.connections, "connection")
            )?,
            Scenario::Download { name } => write!(
                f,
                "download {name} from {}: {}",
                self.target,
                plural(self.connections, "connection")
            )?,
            Scenario::Chat {
                senders,
                members,
                size,
                members_at,
            } => {
                write!(
                    f,
                    "chat {}: {}, {}, {size} B messages",
                    self.target,
                    plural(*senders, "sender"),
                    plural(*members, "member")
                )?;
                if !members_at.is_empty() {
                    let relays: Vec<String> = members_at.iter().map(|a| a.to_string()).collect();
                    write!(f, " (members at {})", relays.join(", "))?;
                }
            }
        }
        write!(f, ", {}", plural(self.threads, "thread"))?;
        if let Mode::Open { rate, max_inflight } = self.mode {
            write!(
                f,
                ", open loop at {rate:.1}/s, at most {max_inflight} in flight each"
            )?;
        }
        match self.requests {
            // The bound a `--requests` run gets when no `--duration` was given.
            Some(requests) if self.duration == MAX_DURATION => {
                write!(f, ", {requests} {}", noun(self.scenario.name()))?
            }
            Some(requests) => write!(
                f,
                ", {:?}, at most {requests} {}",
                self.duration,
                noun(self.scenario.name())
            )?,
            None => write!(f, ", {:?}", self.duration)?,
        }
        if !self.warmup.is_zero() {
            write!(f, " after a {:?} warm-up", self.warmup)?;
        }
        if self.pin {
            f.write_str(", pinned")?;
        }
        Ok(())
    }
}

/// Runs `load` to the end and reports what it measured.
///
/// # Errors
/// [`BenchError::Invalid`] for a load [`Load::validate`] refuses; [`BenchError::Unreachable`]
/// when not one connection (or chat join) succeeded; [`BenchError::Io`] when the generator's own
/// threads or poll instances could not be made.
pub fn run(load: &Load) -> Result<Report, BenchError> {
    load.validate()?;
    // Each client takes its share of an open loop's timetable; a closed loop keeps `depth`
    // operations in flight per client.
    let (mode, clients) = (load.mode, load.connections);
    match &load.scenario {
        Scenario::Echo { size, pipeline } => {
            let (size, pipeline) = (*size, *pipeline);
            supervise(load, None, move |id| {
                let pace = Pace::new(mode, pipeline, id, clients);
                tcp::Connection::new(echo::Pipeline::new(id as u64, size, pace))
            })
        }
        Scenario::Connect => supervise(load, None, move |id| {
            let pace = Pace::single(mode, id, clients);
            tcp::Connection::new(connect::Churn::new(id as u64, pace))
        }),
        Scenario::Download { name } => {
            // The server's own rendering: a name ending in ` <digits>` gets an explicit offset.
            let line = Request::Get {
                name: name.clone(),
                offset: 0,
            };
            let request: Arc<[u8]> = format!("{line}\n").into_bytes().into();
            supervise(load, None, move |id| {
                let pace = Pace::single(mode, id, clients);
                tcp::Connection::new(download::Fetch::new(Arc::clone(&request), pace))
            })
        }
        Scenario::Chat {
            senders,
            size,
            members_at,
            ..
        } => {
            let (senders, size, sockets) = (*senders, *size, load.sockets());
            let roster = Arc::new(Roster::new(room_name(), sockets));
            let members_at = members_at.clone();
            supervise(load, Some(sockets), move |id| {
                let (role, seat) = if id < senders {
                    // Only senders send, so only they share the timetable.
                    let role = Role::Sender {
                        index: id as u64,
                        pace: Pace::new(mode, chat::WINDOW, id, senders),
                    };
                    let hear = members_at.first().copied();
                    (role, Seat { talk: None, hear })
                } else {
                    let talk = members_at.get((id - senders) % members_at.len().max(1));
                    let talk = talk.copied();
                    (Role::Member, Seat { talk, hear: None })
                };
                chat::Member::new(role, size, Arc::clone(&roster), seat)
            })
        }
    }
}

/// A fresh chat room name per run: `bench-` and 16 random hex digits.
fn room_name() -> String {
    // RandomState is seeded from the OS per process and varies per instance: enough to keep
    // two runs (or two concurrent tests) out of each other's rooms.
    format!("bench-{:016x}", RandomState::new().hash_one(Instant::now()))
}

/// Starts `load.threads` threads, gives thread `i` the clients `i, i + threads, ...` (built by
/// `make` on that thread), watches them, and merges what they counted.
fn supervise<C, F>(load: &Load, room: Option<usize>, make: F) -> Result<Report, BenchError>
where
    C: Client,
    F: Fn(usize) -> C + Send + Sync + 'static,
{
    let sockets = load.sockets();
    let threads = load.threads;
    let shared = Arc::new(Shared::new(
        load.target,
        load.warmup,
        load.duration,
        load.requests,
        threads,
    ));
    let make = Arc::new(make);
    let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let (thread_shared, thread_make, thread_tx) =
            (Arc::clone(&shared), Arc::clone(&make), tx.clone());
        let core = load.pin.then(|| (index + 1) % cores);
        let spawned = thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    match crate::sys::pin_to_core(core) {
                        Ok(()) => debug!("bench thread {index} runs on core {core}"),
                        Err(e) => warn!("cannot pin bench thread {index} to core {core}: {e}"),
                    }
                }
                let clients = (index..sockets)
                    .step_by(threads)
                    .map(|id| thread_make(id))
                    .collect();
                // The supervisor waits for this; if it is gone, nobody needs the tally.
                let _ = thread_tx.send(drive(clients, &thread_shared, index));
            });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(source) => {
                shared.stop.store(true, Ordering::Relaxed);
                drop(tx);
                join_all(handles);
                return Err(BenchError::Io {
                    what: "start a generator thread",
                    source,
                });
            }
        }
    }
    drop(tx);

    let results = watch(load, &shared, &rx, sockets);
    join_all(handles);
    let mut total = Tally::new();
    for result in results {
        total.merge(result?);
    }
    if !total.reached {
        let source = total.first_failure.take().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {:?}",
                    load.duration.min(OPERATION_TIMEOUT)
                ),
            )
        });
        return Err(BenchError::Unreachable {
            target: load.target,
            source,
        });
    }
    let ended = total
        .load_ended
        .unwrap_or(shared.deadline)
        .min(shared.deadline);
    let elapsed = ended.saturating_duration_since(shared.measure_from);
    Ok(Report::new(
        load.scenario.name(),
        load.mode.rate(),
        elapsed,
        &total,
        room,
    ))
}

/// Collects every thread's result, meanwhile drawing the progress line and stopping the run
/// early when every client failed to connect and none ever succeeded.
fn watch(
    load: &Load,
    shared: &Shared,
    rx: &mpsc::Receiver<Result<Tally, BenchError>>,
    sockets: usize,
) -> Vec<Result<Tally, BenchError>> {
    let mut progress = (load.progress && io::stderr().is_terminal())
        .then(|| ProgressLine::new(noun(load.scenario.name()), shared.epoch));
    // Threads end by themselves at the deadline plus the drain; past this bound (a bug) they
    // are asked to stop, and do so within a tick.
    let bound = shared.deadline + DRAIN + Duration::from_secs(1);
    let mut results = Vec::with_capacity(load.threads);
    while results.len() < load.threads {
        let now = Instant::now();
        let wait = progress
            .as_ref()
            .map_or(SUPERVISE_EVERY, |p| p.due.saturating_duration_since(now))
            .min(SUPERVISE_EVERY);
        match rx.recv_timeout(wait) {
            Ok(result) => {
                if result.is_err() {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                results.push(result);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // A thread panicked before sending: joining it re-raises the panic.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let reached = shared.reached.load(Ordering::Relaxed);
        let failures = shared.failures.load(Ordering::Relaxed);
        if (reached == 0 && failures >= sockets as u64) || Instant::now() > bound {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if let Some(line) = &mut progress {
            line.redraw_if_due(shared);
        }
    }
    if let Some(line) = progress {
        line.clear();
    }
    results
}

/// Joins every thread; a thread that panicked passes its panic on (a bug, not a load error).
fn join_all(handles: Vec<thread::JoinHandle<()>>) {
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The live line on stderr: elapsed time, operations so far, their rate, and errors.
struct ProgressLine {
    noun: &'static str,
    epoch: Instant,
    /// When to redraw next.
    due: Instant,
}

impl ProgressLine {
    fn new(noun: &'static str, epoch: Instant) -> ProgressLine {
        ProgressLine {
            noun,
            epoch,
            due: epoch + PROGRESS_EVERY,
        }
    }

    fn redraw_if_due(&mut self, shared: &Shared) {
        let now = Instant::now();
        if now < self.due {
            return;
        }
        self.due += PROGRESS_EVERY;
        let (operations, errors) = shared.totals();
        // The threads start counting afresh when the warm-up ends.
        let (phase, since) = if now < shared.measure_from {
            ("warm-up ", self.epoch)
        } else {
            ("", shared.measure_from)
        };
        let secs = now.saturating_duration_since(since).as_secs_f64();
        let rate = if secs > 0.0 {
            operations as f64 / secs
        } else {
            0.0
        };
        let mut stderr = io::stderr().lock();
        // A progress line that cannot be drawn is not worth failing the run for.
        let _ = write!(
            stderr,
            "\r\x1b[2K{phase}{secs:6.1} s  {operations:>12} {}  {rate:>12.1}/s  {errors} errors",
            self.noun
        );
        let _ = stderr.flush();
    }

    fn clear(self) {
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K");
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::cli::loopback;
    use super::*;
    use crate::config::DEFAULT_ECHO_PORT;

    fn echo_load() -> Load {
        Load {
            scenario: Scenario::Echo {
                size: 64,
                pipeline: 1,
            },
            target: loopback(DEFAULT_ECHO_PORT),
            connections: 4,
            threads: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            requests: None,
            mode: Mode::Closed,
            pin: false,
            progress: false,
        }
    }

    fn open(rate: f64, max_inflight: usize) -> Mode {
        Mode::Open { rate, max_inflight }
    }

    fn refused(load: Load) -> String {
        match load.validate() {
            Err(BenchError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_sensible_load_is_valid() {
        assert!(echo_load().validate().is_ok());
    }

    #[test]
    fn zero_counts_are_refused_naming_the_flag() {
        let message = refused(Load {
            connections: 0,
            threads: 0,
            ..echo_load()
        });
        assert!(message.contains("-c"), "{message}");
        assert!(
            refused(Load {
                threads: 0,
                ..echo_load()
            })
            .contains("--threads")
        );
        assert!(
            refused(Load {
                requests: Some(0),
                ..echo_load()
            })
            .contains("--requests")
        );
        let zero = |size, pipeline| Load {
            scenario: Scenario::Echo { size, pipeline },
            ..echo_load()
        };
        assert!(refused(zero(0, 1)).contains("--size"));
        assert!(refused(zero(64, 0)).contains("--pipeline"));
    }

    #[test]
    fn more_threads_than_clients_are_refused() {
        let message = refused(Load {
            threads: 5,
            ..echo_load()
        });
        assert!(
            message.contains("--threads (5)") && message.contains("-c 4"),
            "{message}"
        );
    }

    #[test]
    fn durations_must_be_positive_and_at_most_an_hour() {
        assert!(
            refused(Load {
                duration: Duration::ZERO,
                ..echo_load()
            })
            .contains("--duration")
        );
        assert!(
            refused(Load {
                duration: MAX_DURATION + Duration::from_secs(1),
                ..echo_load()
            })
            .contains("1 hour")
        );
        assert!(
            Load {
                duration: MAX_DURATION,
                ..echo_load()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn chat_counts_its_sockets_and_needs_room_for_its_header() {
        let chat = |senders, members, size| Load {
            scenario: Scenario::Chat {
                senders,
                members,
                size,
                members_at: Vec::new(),
            },
            connections: 0, // ignored by chat
            threads: 2,
            ..echo_load()
        };
        assert!(chat(1, 1, 64).validate().is_ok());
        assert_eq!(chat(2, 3, 64).sockets(), 5);
        assert!(refused(chat(0, 1, 64)).contains("--senders"));
        assert!(refused(chat(1, 0, 64)).contains("--members"));
        assert!(refused(chat(1, 1, 8)).contains("--size"));
        let message = refused(Load {
            threads: 3,
            ..chat(1, 1, 64)
        });
        assert!(message.contains("--senders + --members = 2"), "{message}");
    }

    #[test]
    fn a_download_name_must_fit_on_the_request_line() {
        let download = |name: &str| Load {
            scenario: Scenario::Download { name: name.into() },
            ..echo_load()
        };
        assert!(download("big.bin").validate().is_ok());
        assert!(refused(download("")).contains("NAME"));
        assert!(refused(download("a\nLIST")).contains("NAME"));
    }

    #[test]
    fn errors_read_as_sentences_without_os_error_numbers() {
        let unreachable = BenchError::Unreachable {
            target: loopback(7788),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach 127.0.0.1:7788: Connection refused"
        );
    }

    #[test]
    fn the_load_line_says_what_runs() {
        let line = Load {
            requests: Some(100),
            pin: true,
            ..echo_load()
        }
        .to_string();
        assert_eq!(
            line,
            "echo 127.0.0.1:7788: 4 connections, 64 B messages, pipeline 1, 1 thread, 1s, \
             at most 100 requests, pinned"
        );
    }

    #[test]
    fn an_open_loop_needs_a_sensible_rate_and_bound() {
        let with = |mode| Load {
            mode,
            ..echo_load()
        };
        assert!(with(open(1000.0, 64)).validate().is_ok());
        assert!(refused(with(open(0.0, 64))).contains("--rate"));
        assert!(refused(with(open(MAX_RATE * 2.0, 64))).contains("--rate"));
        assert!(refused(with(open(f64::NAN, 64))).contains("--rate"));
        assert!(refused(with(open(1000.0, 0))).contains("--max-inflight"));
        assert!(refused(with(open(1000.0, MAX_PIPELINE + 1))).contains("--max-inflight"));
    }

    #[test]
    fn an_open_loop_refuses_what_only_a_closed_loop_means() {
        let echo = Load {
            scenario: Scenario::Echo {
                size: 64,
                pipeline: 4,
            },
            mode: open(1000.0, 64),
            ..echo_load()
        };
        assert!(refused(echo).contains("--pipeline"));
        for scenario in [Scenario::Connect, Scenario::Download { name: "f".into() }] {
            let one = Load {
                scenario,
                mode: open(100.0, 1),
                ..echo_load()
            };
            assert!(one.validate().is_ok());
            let message = refused(Load {
                mode: open(100.0, 2),
                ..one
            });
            assert!(message.contains("--max-inflight is 1"), "{message}");
        }
    }

    #[test]
    fn an_echo_connection_may_not_queue_more_than_its_bound_in_bytes() {
        let big = |size, mode| Load {
            scenario: Scenario::Echo { size, pipeline: 1 },
            mode,
            ..echo_load()
        };
        assert!(big(MAX_ECHO_SIZE, Mode::Closed).validate().is_ok());
        let message = refused(big(MAX_ECHO_SIZE, open(10.0, 8)));
        assert!(message.contains("--size × --max-inflight"), "{message}");
    }

    #[test]
    fn a_warm_up_is_bounded_and_does_not_spend_requests() {
        let warm = |warmup, requests| Load {
            warmup,
            requests,
            ..echo_load()
        };
        assert!(warm(Duration::from_secs(2), None).validate().is_ok());
        assert!(refused(warm(MAX_DURATION * 2, None)).contains("--warmup"));
        assert!(refused(warm(Duration::from_secs(1), Some(10))).contains("--requests"));
    }

    #[test]
    fn the_load_line_says_when_it_is_an_open_loop_and_warms_up() {
        let line = Load {
            mode: open(2500.0, 16),
            warmup: Duration::from_millis(500),
            ..echo_load()
        }
        .to_string();
        assert_eq!(
            line,
            "echo 127.0.0.1:7788: 4 connections, 64 B messages, pipeline 1, 1 thread, open loop \
             at 2500.0/s, at most 16 in flight each, 1s after a 500ms warm-up"
        );
    }

    #[test]
    fn room_names_differ_between_runs_and_are_valid_chat_names() {
        let (a, b) = (room_name(), room_name());
        assert_ne!(a, b);
        assert!(a.len() <= 32 && !a.contains([' ', ':']));
    }
}
