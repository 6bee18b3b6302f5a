//! What the admin service sees of the loop: the content its responses need, rendered from what
//! only the loop holds (the phase, the figures, the endpoint table itself).
//!
//! An admin connection lives inside the table, so its handler cannot borrow the table to list it.
//! Instead the connection names the [`Content`] it needs and gives its turn back (it yields, as a
//! connection that spent its budget does); before resuming it the loop renders that content here
//! and hands it over. The hot path of the other services never comes this way. The table is
//! rendered a piece at a time (about [`CHUNK_BYTES`]), each piece only once the previous one has
//! left, so listing 10 000 connections neither blocks the loop nor builds an unbounded buffer.
//!
//! The loop's own bookkeeping lives here too: each pass's time and system calls, the stats line,
//! and the one-second samples `/stats.json` draws its history from.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use mio::{Interest, Token};
use serde::Serialize;

use super::EventLoop;
use super::shutdown::Phase;
use crate::endpoint::Entry;
use crate::service::Endpoint;
use crate::service::admin::http::Status;
use crate::service::admin::{CHUNK_BYTES, Content, JSON, Supply, TEXT, history, metrics};
use crate::stats::Metric;
use crate::sys::counted;
use crate::sys::process::Process;
use crate::token::{self, Id};

/// One row of `/connections`.
#[derive(Debug, Serialize)]
struct Row<'a> {
    key: usize,
    id: String,
    service: &'a str,
    kind: &'a str,
    peer: Option<SocketAddr>,
    state: String,
    interest: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    buffered: usize,
    age_seconds: f64,
    idle_seconds: f64,
}

impl EventLoop {
    /// Starts the clocks of the periodic chores: the stats line, and the samples (whose start
    /// dates the uptime).
    pub(super) fn start_periodic(&mut self, now: Instant) {
        // System calls made on this thread before it runs (binding, the first registrations) are
        // nobody's passes: the count starts here.
        counted::take();
        self.stats_line.start(now);
        if let Some(history) = &mut self.history {
            history.start(now, SystemTime::now(), &self.shared.stats);
            // Measure the descriptors beside the table's while it is small, so that no scrape
            // ever has to list 10 000 of them.
            let _ = self.table.open_fds(0);
        }
    }

    /// The periodic chores: the `--stats-interval` line, and the admin service's one-second
    /// samples.
    pub(super) fn periodic(&mut self, now: Instant) {
        self.stats_line.log_if_due(now, &self.shared.stats);
        if let Some(history) = &mut self.history {
            history.sample_if_due(now, &self.shared.stats);
        }
    }

    /// Records the pass that began at `woke` (its time, its system calls) and returns the time it
    /// ended: one clock read both ends this pass and starts the next poll's timeout.
    pub(super) fn end_pass(&mut self, woke: Instant) -> Instant {
        let now = Instant::now();
        self.shared.stats.observe_pass(now - woke);
        self.shared.stats.add_calls(counted::take());
        now
    }

    /// Supplies what the admin connection behind `token` asked for, if it asked.
    pub(super) fn supply_admin(&mut self, token: Token, now: Instant) {
        let Some(Endpoint::Admin(connection)) = self.table.get_mut(token) else {
            return;
        };
        let Some(content) = connection.wants().cloned() else {
            return;
        };
        let supply = self.render(content, now);
        if let Some(Endpoint::Admin(connection)) = self.table.get_mut(token) {
            connection.supply(supply);
        }
    }

    /// Renders one piece of content.
    fn render(&self, content: Content, now: Instant) -> Supply {
        match content {
            Content::Health => {
                let (status, body) = match self.phase {
                    Phase::Running => (Status::Ok, "ok\n"),
                    Phase::Draining { .. } | Phase::Stopped => (Status::Unavailable, "draining\n"),
                };
                Supply::Whole {
                    status,
                    content_type: TEXT,
                    body: body.as_bytes().to_vec(),
                }
            }
            Content::Metrics => {
                let mut body = String::new();
                // Rendering into a String cannot fail.
                let snapshot = self.shared.stats.snapshot();
                let files = snapshot.get(Metric::OpenFiles);
                let process = Process {
                    open_fds: self.table.open_fds(files),
                    ..Process::read_without_fds()
                };
                let _ = metrics::render(snapshot, process, &mut body);
                Supply::Whole {
                    status: Status::Ok,
                    content_type: metrics::CONTENT_TYPE,
                    body: body.into_bytes(),
                }
            }
            Content::Stats => {
                let phase = match self.phase {
                    Phase::Running => history::Phase::Running,
                    Phase::Draining { .. } | Phase::Stopped => history::Phase::Draining,
                };
                let mut body = Vec::new();
                if let Some(samples) = &self.history {
                    let snapshot = self.shared.stats.snapshot();
                    let uptime = samples.uptime(now);
                    history::render_stats_json(uptime, phase, &snapshot, samples, &mut body);
                }
                Supply::Whole {
                    status: Status::Ok,
                    content_type: JSON,
                    body,
                }
            }
            Content::Connections {
                next,
                left,
                service,
            } => self.rows(next, left, service, now),
        }
    }

    /// The rows of `/connections` from slab key `next`, as many as fit in one piece.
    fn rows(&self, next: usize, mut left: usize, service: Option<String>, now: Instant) -> Supply {
        let mut bytes = Vec::with_capacity(CHUNK_BYTES + 512);
        // The array opens with the first piece and closes with the last.
        if next == 0 {
            bytes.push(b'[');
        }
        // Filtered on the service's name alone: describing a row asks the kernel for its peer,
        // which only the rows listed should cost.
        let wanted = |entry: &Entry<'_>| match &service {
            Some(service) => entry.endpoint.service_name() == service,
            None => true,
        };
        let mut entries = self.table.entries_from(next, now).filter(wanted);
        let mut resume = None;
        while left > 0 && bytes.len() < CHUNK_BYTES {
            let Some(entry) = entries.next() else { break };
            // Rows after the first are separated; `next` > 0 means one was sent in an earlier piece.
            if bytes.len() > 1 || (next > 0 && bytes.is_empty()) {
                bytes.push(b',');
            }
            write_row(&entry, &mut bytes);
            left -= 1;
            resume = Some(token::key(entry.token) + 1);
        }
        let more = left > 0 && bytes.len() >= CHUNK_BYTES;
        match resume.filter(|_| more) {
            Some(next) => Supply::Piece {
                bytes,
                next: Some(Content::Connections {
                    next,
                    left,
                    service,
                }),
            },
            None => {
                bytes.extend_from_slice(b"]\n");
                Supply::Piece { bytes, next: None }
            }
        }
    }
}

/// Appends one row as a JSON object.
fn write_row(entry: &Entry<'_>, out: &mut Vec<u8>) {
    let description = entry.endpoint.describe();
    let row = Row {
        key: token::key(entry.token),
        id: Id(entry.token).to_string(),
        service: description.service,
        kind: description.kind,
        peer: description.peer,
        state: description.state,
        interest: interest_name(entry.registered),
        bytes_in: entry.moved.bytes_in,
        bytes_out: entry.moved.bytes_out,
        buffered: description.buffered,
        age_seconds: entry.age.as_secs_f64(),
        idle_seconds: entry.idle.as_secs_f64(),
    };
    // Serialising plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &row);
}

/// `R`, `W`, `RW`, or `-` while deregistered.
fn interest_name(interest: Option<Interest>) -> &'static str {
    match interest {
        Some(i) if i.is_readable() && i.is_writable() => "RW",
        Some(i) if i.is_writable() => "W",
        Some(_) => "R",
        None => "-",
    }
}
