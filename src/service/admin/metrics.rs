//! The `/metrics` body: every figure in Prometheus's text exposition format, version 0.0.4.
//!
//! Names start with `readyloop_` (the standard `process_*` figures excepted), counters end in
//! `_total`, units are part of names (`_bytes`, `_seconds`). Where several figures are one thing
//! seen by a dimension, the dimension is a label: close reasons (`reason="idle"`), services
//! (`service="echo"`), how download bodies were sent (`method="sendfile"`), why chat datagrams
//! were dropped (`reason="rate"`), why chat bus connections closed (`reason="slow"`), which
//! system call the loop made (`call="recvfrom"`). The three histograms come from
//! [`stats`](crate::stats): `readyloop_loop_pass_seconds`, `readyloop_events_per_poll` and
//! `readyloop_connection_lifetime_seconds{service=...}`.
//!
//! # Why the `prometheus-client` crate, and only its encoder
//!
//! The official Rust client writes format 0.0.4 since version 0.26 (before, OpenMetrics only,
//! which a 0.0.4 parser reads with every counter untyped). Its own metric types do not fit the
//! loop: its `Counter` is a `fetch_add`, a locked instruction on x86, and its `Histogram` takes a
//! lock per observation, where our single-writer counters need neither. But its encoder does not
//! need them: a [`Collector`] may describe any figures at scrape time as "const" metrics. So a
//! scrape takes one [`Snapshot`], hands it to a collector that walks it, and the crate writes
//! the text: names and `_total`, label escaping, and histogram bounds formatted as the Go client
//! writes them. The hot path pays nothing; a scrape pays a `Registry` and one boxed collector.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::stats::{CloseReason, HistogramSnapshot, Metric, ServiceId, ServiceMetric, Snapshot};
use crate::sys::counted::Call;
use crate::sys::process::Process;
use Members::{By, One};

/// The `Content-Type` of the body [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Writes the `/metrics` body for one snapshot of the server's figures and one read of the
/// process's. Both are taken by value: the encoder's collector must own what it describes.
///
/// # Errors
/// Only when the encoder fails, which it does only if writing to `out` fails; a `String` never
/// does. The body is then incomplete and must not be sent.
pub fn render(snapshot: Snapshot, process: Process, out: &mut String) -> fmt::Result {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { snapshot, process }));
    prometheus_text::encode(out, &registry)
}

/// How a figure behaves, as Prometheus types it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Only ever goes up (a restart resets it); exposed with `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// The samples of one family.
#[derive(Debug)]
enum Members {
    /// One figure, no label.
    One(Metric),
    /// One figure per value of the label.
    By(&'static str, &'static [(Metric, &'static str)]),
}

/// One family of samples read from the global [`Metric`]s.
#[derive(Debug)]
struct Family {
    /// Without `_total`, which the encoder appends to counters.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    members: Members,
}

const fn counter(name: &'static str, help: &'static str, members: Members) -> Family {
    let kind = Kind::Counter;
    Family {
        name,
        help,
        kind,
        members,
    }
}

const fn gauge(name: &'static str, help: &'static str, members: Members) -> Family {
    let kind = Kind::Gauge;
    Family {
        name,
        help,
        kind,
        members,
    }
}

/// Every global [`Metric`] in the order of the summary line, but for two groups. The closes are
/// one family by [`CloseReason`]. `Accepted`, `Open`, `BytesIn` and `BytesOut` are sums over
/// services, exposed only by service ([`SERVICE_FAMILIES`]): a family with and without the label
/// would count everything twice in a `sum()`.
const FAMILIES: &[Family] = &[
    gauge(
        "readyloop_buffered_peak_bytes",
        "The most bytes any one connection has held in its output buffer.",
        One(Metric::BufferedPeak),
    ),
    counter(
        "readyloop_downloads_started",
        "Downloads whose file was opened and whose header (if any) was queued.",
        One(Metric::DownloadsStarted),
    ),
    counter(
        "readyloop_downloads_completed",
        "Downloads whose every byte was sent.",
        One(Metric::DownloadsCompleted),
    ),
    counter(
        "readyloop_downloads_refused",
        "Download requests answered with ERR (or, in the bare form, closed without a reply).",
        One(Metric::DownloadsRefused),
    ),
    counter(
        "readyloop_downloads_aborted",
        "Downloads cut short by the client (gone, idle) or by shutdown.",
        One(Metric::DownloadsAborted),
    ),
    counter(
        "readyloop_downloads_truncated",
        "Downloads ended early because the file shrank while being sent.",
        One(Metric::DownloadsTruncated),
    ),
    counter(
        "readyloop_downloads_reset",
        "Downloads the server abandoned after starting them, closed with a reset.",
        One(Metric::DownloadsReset),
    ),
    counter(
        "readyloop_listings",
        "LIST replies sent.",
        One(Metric::Listings),
    ),
    gauge(
        "readyloop_download_open_files",
        "Files open for downloads now.",
        One(Metric::OpenFiles),
    ),
    counter(
        "readyloop_download_body_bytes",
        "Download body bytes sent, by method: sendfile(2), or copied through user space.",
        By(
            "method",
            &[
                (Metric::BodyBytesSendfile, "sendfile"),
                (Metric::BodyBytesCopied, "copy"),
            ],
        ),
    ),
    counter(
        "readyloop_chat_datagrams_received",
        "Datagrams received by the chat relay.",
        One(Metric::ChatIn),
    ),
    counter(
        "readyloop_chat_datagrams_sent",
        "Datagrams sent by the chat relay.",
        One(Metric::ChatOut),
    ),
    counter(
        "readyloop_chat_messages_relayed",
        "Member messages delivered to a member, one per recipient.",
        One(Metric::ChatRelayed),
    ),
    counter(
        "readyloop_chat_datagrams_refused",
        "Datagrams refused with a '* ' error line.",
        One(Metric::ChatRefused),
    ),
    counter(
        "readyloop_chat_datagrams_dropped",
        "Datagrams dropped, by reason: the member's rate limit, a full send queue \
         (oldest first), or a send the socket refused for good.",
        By(
            "reason",
            &[
                (Metric::ChatDroppedRate, "rate"),
                (Metric::ChatDroppedQueue, "queue"),
                (Metric::ChatDroppedSend, "send"),
            ],
        ),
    ),
    counter(
        "readyloop_chat_challenges",
        "Verification cookies sent (--chat-verify).",
        One(Metric::ChatChallenges),
    ),
    gauge(
        "readyloop_chat_members",
        "Chat members now.",
        One(Metric::ChatMembers),
    ),
    gauge(
        "readyloop_chat_rooms",
        "Chat rooms now.",
        One(Metric::ChatRooms),
    ),
    gauge(
        "readyloop_chat_bus_links_up",
        "Chat bus connections to Redis ready now: 0, 1 or 2 (--chat-bus).",
        One(Metric::ChatBusLinksUp),
    ),
    counter(
        "readyloop_chat_bus_connects",
        "Times a chat bus connection to Redis became ready.",
        One(Metric::ChatBusConnects),
    ),
    counter(
        "readyloop_chat_bus_closed",
        "Chat bus connections closed, or attempts failed, by reason: Redis refused, reset or \
         closed (gone), an answer came too late (slow), or it was not the answer (protocol).",
        By(
            "reason",
            &[
                (Metric::ChatBusClosedGone, "gone"),
                (Metric::ChatBusClosedSlow, "slow"),
                (Metric::ChatBusClosedProtocol, "protocol"),
            ],
        ),
    ),
    counter(
        "readyloop_chat_bus_published",
        "Chat messages published for other nodes and taken by Redis.",
        One(Metric::ChatBusPublished),
    ),
    counter(
        "readyloop_chat_bus_received",
        "Chat messages from other nodes handled here.",
        One(Metric::ChatBusReceived),
    ),
    counter(
        "readyloop_chat_bus_dropped",
        "Chat bus traffic dropped, by reason: a full queue (oldest first), the bus down, or a \
         message from the bus that is not a valid envelope.",
        By(
            "reason",
            &[
                (Metric::ChatBusDroppedQueue, "queue"),
                (Metric::ChatBusDroppedDown, "down"),
                (Metric::ChatBusDroppedInvalid, "invalid"),
            ],
        ),
    ),
    counter(
        "readyloop_accept_backoffs",
        "Times accept failed for lack of resources (EMFILE and the like) and the listener \
         backed off.",
        One(Metric::AcceptBackoffs),
    ),
    counter(
        "readyloop_loop_iterations",
        "Passes of the loop, one poll each.",
        One(Metric::LoopIterations),
    ),
    counter(
        "readyloop_events",
        "Readiness events taken from poll, stale ones included.",
        One(Metric::Events),
    ),
    counter(
        "readyloop_stale_events",
        "Events dropped because their token's endpoint had been closed.",
        One(Metric::StaleEvents),
    ),
];

/// Services with connections; chat's datagrams have none, so no accepted, open or lifetime.
const CONNECTED: &[ServiceId] = &[ServiceId::Echo, ServiceId::Files, ServiceId::Admin];

/// One family of samples read from a [`ServiceMetric`], labelled `service`.
#[derive(Debug)]
struct ServiceFamily {
    metric: ServiceMetric,
    name: &'static str,
    help: &'static str,
    kind: Kind,
    services: &'static [ServiceId],
}

const SERVICE_FAMILIES: [ServiceFamily; 5] = [
    ServiceFamily {
        metric: ServiceMetric::Accepted,
        name: "readyloop_connections_accepted",
        help: "Connections accepted and registered, by service (admin included).",
        kind: Kind::Counter,
        services: CONNECTED,
    },
    ServiceFamily {
        metric: ServiceMetric::Open,
        name: "readyloop_connections_open",
        help: "Connections open now, by service (admin included).",
        kind: Kind::Gauge,
        services: CONNECTED,
    },
    ServiceFamily {
        metric: ServiceMetric::Requests,
        name: "readyloop_requests",
        help: "Requests by service. echo: reads that carried data; files: requests answered \
               (refusals included); chat: datagrams received; admin: HTTP requests.",
        kind: Kind::Counter,
        services: &ServiceId::ALL,
    },
    ServiceFamily {
        metric: ServiceMetric::BytesIn,
        name: "readyloop_received_bytes",
        help: "Bytes received from clients, by service.",
        kind: Kind::Counter,
        services: &ServiceId::ALL,
    },
    ServiceFamily {
        metric: ServiceMetric::BytesOut,
        name: "readyloop_sent_bytes",
        help: "Bytes sent to clients, by service.",
        kind: Kind::Counter,
        services: &ServiceId::ALL,
    },
];

/// What one scrape describes: the figures, taken once, for the encoder to walk.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    process: Process,
}

impl Collector for Scrape {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let snapshot = &self.snapshot;
        for family in &SERVICE_FAMILIES {
            let mut samples = describe(&mut out, family.name, family.help, family.kind)?;
            for service in family.services {
                let labels = [("service", service.name())];
                let value = snapshot.service(*service, family.metric);
                encode(family.kind, value, samples.encode_family(&labels)?)?;
            }
        }
        let help = "Echo and download connections closed, by reason.";
        let mut samples = describe(
            &mut out,
            "readyloop_connections_closed",
            help,
            Kind::Counter,
        )?;
        for reason in CloseReason::ALL {
            let value = snapshot.get(reason.metric());
            let labels = [("reason", reason.name())];
            encode(Kind::Counter, value, samples.encode_family(&labels)?)?;
        }
        let help = "System calls the loop made, by call as Linux names it: reads, writes, \
                    polls and the rest that serving clients costs (file opens and the like not \
                    included).";
        let mut samples = describe(&mut out, "readyloop_syscalls", help, Kind::Counter)?;
        for call in Call::ALL {
            let value = snapshot.get(call.metric());
            let labels = [("call", call.name())];
            encode(Kind::Counter, value, samples.encode_family(&labels)?)?;
        }
        for family in FAMILIES {
            let mut samples = describe(&mut out, family.name, family.help, family.kind)?;
            match family.members {
                One(metric) => encode(family.kind, snapshot.get(metric), samples)?,
                By(label, members) => {
                    for (metric, value) in members {
                        let labels = [(label, *value)];
                        encode(
                            family.kind,
                            snapshot.get(*metric),
                            samples.encode_family(&labels)?,
                        )?;
                    }
                }
            }
        }
        self.encode_histograms(&mut out)?;
        self.encode_process(&mut out)
    }
}

impl Scrape {
    fn encode_histograms(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let histogram = MetricType::Histogram;
        let help = "Time per pass of the loop, from poll returning to the next poll.";
        let samples =
            out.encode_descriptor("readyloop_loop_pass_seconds", help, None, histogram)?;
        Buckets(self.snapshot.pass_time()).encode(samples)?;

        let help = "Readiness events returned by one poll.";
        let samples = out.encode_descriptor("readyloop_events_per_poll", help, None, histogram)?;
        Buckets(self.snapshot.events_per_poll()).encode(samples)?;

        let help = "How long client connections lived, accept to close, by service.";
        let name = "readyloop_connection_lifetime_seconds";
        let mut samples = out.encode_descriptor(name, help, None, histogram)?;
        for service in CONNECTED {
            let labels = [("service", service.name())];
            Buckets(self.snapshot.lifetime(*service)).encode(samples.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// The standard process figures, named and described as the Go client has them, each only
    /// if it could be read.
    fn encode_process(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let process = &self.process;
        let counts = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                process.resident_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                process.max_fds,
            ),
        ];
        for (name, help, value) in counts {
            if let Some(value) = value {
                encode(Kind::Gauge, value, describe(out, name, help, Kind::Gauge)?)?;
            }
        }
        if let Some(seconds) = process.cpu_seconds {
            let help = "Total user and system CPU time spent in seconds.";
            let samples = describe(out, "process_cpu_seconds", help, Kind::Counter)?;
            ConstCounter::new(seconds).encode(samples)?;
        }
        if let Some(seconds) = process.start_time_seconds {
            let help = "Start time of the process since unix epoch in seconds.";
            let samples = describe(out, "process_start_time_seconds", help, Kind::Gauge)?;
            ConstGauge::new(seconds).encode(samples)?;
        }
        Ok(())
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines, and returns the encoder for its samples.
fn describe<'s>(
    out: &'s mut DescriptorEncoder<'_>,
    name: &'s str,
    help: &str,
    kind: Kind,
) -> Result<MetricEncoder<'s>, fmt::Error> {
    let metric_type = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    out.encode_descriptor(name, help, None, metric_type)
}

/// Writes one sample of a counter or gauge.
fn encode(kind: Kind, value: u64, sample: MetricEncoder<'_>) -> fmt::Result {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(sample),
        Kind::Gauge => ConstGauge::new(value).encode(sample),
    }
}

/// One of our histograms, as the encoder wants it: each bucket's upper bound and own count.
#[derive(Debug)]
struct Buckets<'a>(&'a HistogramSnapshot);

impl EncodeMetric for Buckets<'_> {
    fn encode(&self, mut sample: MetricEncoder<'_>) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self.0.buckets().collect();
        sample.encode_histogram::<NoLabelSet>(self.0.sum(), self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests;
