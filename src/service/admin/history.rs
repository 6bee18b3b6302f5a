//! The `/stats.json` body, and the history of 1-second samples behind the live page's charts.
//!
//! Counters only ever grow, so what a chart wants, "requests per second now", is the difference
//! of two snapshots divided by the time between them. [`History`] takes a snapshot every second,
//! driven by the loop like the periodic stats line (`start`, `deadline`, `sample_if_due`), and
//! keeps the rates of the last [`SAMPLES`] seconds in a ring that never grows: a page opened now
//! draws the last five minutes at once.
//!
//! The loop figures of a second come from the difference of the histograms' snapshots, not from a
//! second set of histograms: events per poll is exact (the sum of events over the count of polls
//! in that second), and the pass-time p99 is exact to within its bucket, interpolated inside it
//! (the bounds step by at most 2.5 times; see [`histogram`](crate::stats::histogram)). The
//! snapshots are taken on the loop's own thread, between passes, so no figure is torn.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::stats::{Metric, ServiceId, ServiceMetric, Snapshot, Stats};

/// Samples kept: one per second for five minutes, about 30 KiB.
pub const SAMPLES: usize = 300;

/// Time between samples: one second, the finest a chart refreshed every second can show.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The server's phase, as `/stats.json` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Serving.
    Running,
    /// Shutting down gracefully: finishing what is owed, accepting no one new.
    Draining,
}

/// Per-second rates over one sample's interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
struct Rates {
    echo_requests: f64,
    files_requests: f64,
    chat_requests: f64,
    admin_requests: f64,
    /// Every service's bytes: TCP streams, chat datagrams and admin HTTP alike.
    bytes_in: f64,
    bytes_out: f64,
}

/// How full the server was at the end of one sample's interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
struct Occupancy {
    open_echo: u64,
    open_files: u64,
    open_admin: u64,
    chat_members: u64,
}

/// How the loop kept up over one sample's interval; 0 when it made no pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
struct LoopFigures {
    events_per_poll: f64,
    pass_p99_seconds: f64,
}

/// One second of history, as a flat JSON object.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
struct Sample {
    /// When the second ended, in whole seconds since the Unix epoch.
    t: u64,
    #[serde(flatten)]
    rates: Rates,
    #[serde(flatten)]
    occupancy: Occupancy,
    #[serde(flatten)]
    figures: LoopFigures,
}

impl Sample {
    /// What happened between `earlier` and `later`, `elapsed` apart.
    fn between(earlier: &Snapshot, later: &Snapshot, elapsed: Duration, t: u64) -> Sample {
        let seconds = elapsed.as_secs_f64();
        let rate = |service, metric| {
            let delta = later
                .service(service, metric)
                .wrapping_sub(earlier.service(service, metric));
            delta as f64 / seconds
        };
        let all_services = |metric| ServiceId::ALL.iter().map(|s| rate(*s, metric)).sum();
        let passes = later.pass_time().since(earlier.pass_time());
        let batches = later.events_per_poll().since(earlier.events_per_poll());
        Sample {
            t,
            rates: Rates {
                echo_requests: rate(ServiceId::Echo, ServiceMetric::Requests),
                files_requests: rate(ServiceId::Files, ServiceMetric::Requests),
                chat_requests: rate(ServiceId::Chat, ServiceMetric::Requests),
                admin_requests: rate(ServiceId::Admin, ServiceMetric::Requests),
                bytes_in: all_services(ServiceMetric::BytesIn),
                bytes_out: all_services(ServiceMetric::BytesOut),
            },
            occupancy: Occupancy {
                open_echo: later.service(ServiceId::Echo, ServiceMetric::Open),
                open_files: later.service(ServiceId::Files, ServiceMetric::Open),
                open_admin: later.service(ServiceId::Admin, ServiceMetric::Open),
                chat_members: later.get(Metric::ChatMembers),
            },
            figures: LoopFigures {
                events_per_poll: batches.mean().unwrap_or(0.0),
                pass_p99_seconds: passes.quantile(0.99).unwrap_or(0.0),
            },
        }
    }
}

/// The last [`SAMPLES`] seconds of rates, oldest first, and when the next sample is due.
#[derive(Debug)]
pub struct History {
    /// Oldest first. Allocated once at its full size; the oldest sample makes room for the newest.
    samples: VecDeque<Sample>,
    /// The snapshot the next sample is measured from, and when it was taken.
    last: Option<(Instant, Snapshot)>,
    /// The wall-clock time of `start`: sample times are counted from it on the monotonic clock,
    /// so the loop reads no second clock, and a clock stepped by NTP bends no chart backwards.
    epoch: Option<(Instant, Duration)>,
    /// When the next sample is due; `None` before `start`.
    next: Option<Instant>,
}

impl Default for History {
    fn default() -> Self {
        History {
            samples: VecDeque::with_capacity(SAMPLES),
            last: None,
            epoch: None,
            next: None,
        }
    }
}

impl History {
    /// Takes the snapshot the first second is measured from; `unix_time` is the wall-clock time
    /// at `now`. The first sample falls due one interval later.
    pub fn start(&mut self, now: Instant, unix_time: SystemTime, stats: &Stats) {
        let since_epoch = unix_time.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.epoch = Some((now, since_epoch));
        self.last = Some((now, stats.snapshot()));
        self.next = Some(now + INTERVAL);
    }

    /// Time since `start`: the server's uptime, as `/stats.json` reports it.
    pub fn uptime(&self, now: Instant) -> Duration {
        self.epoch.map_or(Duration::ZERO, |(start, _)| {
            now.saturating_duration_since(start)
        })
    }

    /// When the loop must wake up to take the next sample.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Takes a sample if one is due, and schedules the next.
    pub fn sample_if_due(&mut self, now: Instant, stats: &Stats) {
        let (Some(at), Some((then, earlier)), Some((epoch, unix))) =
            (self.next, &self.last, self.epoch)
        else {
            return;
        };
        if at > now {
            return;
        }
        // A late pass stretches this interval rather than bunching samples to catch up; the
        // rates divide by the time that really passed.
        self.next = Some(now + INTERVAL);
        let snapshot = stats.snapshot();
        let t = (unix + now.duration_since(epoch)).as_secs();
        let sample = Sample::between(earlier, &snapshot, now.duration_since(*then), t);
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.last = Some((now, snapshot));
    }

    /// The last full second, or zeros before the first sample.
    fn latest(&self) -> (Rates, LoopFigures) {
        self.samples
            .back()
            .map_or_else(Default::default, |s| (s.rates, s.figures))
    }
}

/// The `/stats.json` document: its shape is these structs' shape.
#[derive(serde::Serialize)]
struct Body<'a> {
    server: Server,
    totals: Totals<'a>,
    services: Services,
    rates: Rates,
    #[serde(rename = "loop")]
    loop_figures: LoopFigures,
    history: Window<'a>,
}

#[derive(serde::Serialize)]
struct Server {
    version: &'static str,
    uptime_seconds: f64,
    phase: Phase,
}

/// Every [`Metric`] by name, in the summary line's order (a map type would sort them).
struct Totals<'a>(&'a Snapshot);

impl Serialize for Totals<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Metric::ALL.len()))?;
        for metric in Metric::ALL {
            map.serialize_entry(metric.name(), &self.0.get(*metric))?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Services {
    echo: Connected,
    files: Connected,
    chat: Chat,
    admin: Connected,
}

/// A TCP service's figures.
#[derive(serde::Serialize)]
struct Connected {
    open: u64,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Connected {
    fn of(snapshot: &Snapshot, service: ServiceId) -> Self {
        let get = |metric| snapshot.service(service, metric);
        Connected {
            open: get(ServiceMetric::Open),
            requests: get(ServiceMetric::Requests),
            bytes_in: get(ServiceMetric::BytesIn),
            bytes_out: get(ServiceMetric::BytesOut),
        }
    }
}

/// The chat relay's figures: members where the others have open connections.
#[derive(serde::Serialize)]
struct Chat {
    members: u64,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(serde::Serialize)]
struct Window<'a> {
    interval_seconds: u64,
    samples: &'a VecDeque<Sample>,
}

/// Writes the `/stats.json` body: the server's state, `snapshot`'s figures (taken now), the
/// rates and loop figures of the last full second, and the whole history, oldest first.
pub fn render_stats_json(
    uptime: Duration,
    phase: Phase,
    snapshot: &Snapshot,
    history: &History,
    out: &mut Vec<u8>,
) {
    let chat = |metric| snapshot.service(ServiceId::Chat, metric);
    let (rates, loop_figures) = history.latest();
    let body = Body {
        server: Server {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: uptime.as_secs_f64(),
            phase,
        },
        totals: Totals(snapshot),
        services: Services {
            echo: Connected::of(snapshot, ServiceId::Echo),
            files: Connected::of(snapshot, ServiceId::Files),
            chat: Chat {
                members: snapshot.get(Metric::ChatMembers),
                requests: chat(ServiceMetric::Requests),
                bytes_in: chat(ServiceMetric::BytesIn),
                bytes_out: chat(ServiceMetric::BytesOut),
            },
            admin: Connected::of(snapshot, ServiceId::Admin),
        },
        rates,
        loop_figures,
        history: Window {
            interval_seconds: INTERVAL.as_secs(),
            samples: &history.samples,
        },
    };
    // serde_json fails only when the writer fails (a Vec never does) or a map key is not a
    // string (every key here is a field or metric name).
    serde_json::to_writer(out, &body).expect("a Vec takes any JSON");
}

#[cfg(test)]
mod tests;
