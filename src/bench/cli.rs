//! The command line of `readyloop bench`: one subcommand per scenario, turned into a checked
//! [`Plan`] of one run or a sweep's steps, and the printing around [`run`].
//!
//! Kept apart from the generator so that [`run`] takes a plain [`Load`], which the cargo-bench
//! harness builds without clap. Every default here is the scenario's usual case: 50 echo
//! connections of 64-byte messages, 4 parallel downloads, one chat sender and ten members, for
//! 10 s in a closed loop, against the service's default port on 127.0.0.1.
//!
//! What the command prints: the load line and the table (or with `--json`, one JSON document, an
//! array of them for a sweep) on stdout; warnings and the reason for a failure on stderr; and
//! with `--svg` and `--hgrm`, files. Its exit status: 0 after runs that measured what they meant
//! to (even with errors, which the table shows); 1 when the target is unreachable, nothing
//! completed, the chat relay's rate limit was measured instead of the relay, or a file could not
//! be written; 2 for invalid flags.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::json::Document;
use super::report::{RATE_LIMITED, noun};
use super::{
    BenchError, DEFAULT_DURATION, DEFAULT_MAX_INFLIGHT, Load, MAX_DURATION, Mode, Report, Scenario,
    chart, run, table,
};
use crate::config::{DEFAULT_CHAT_PORT, DEFAULT_ECHO_PORT, DEFAULT_FILES_PORT, parse_duration};

/// Most steps in one sweep: every run is bounded, and a sweep of many is many runs.
pub const MAX_STEPS: usize = 32;

/// `readyloop bench SCENARIO ...`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario and its flags.
    #[command(subcommand)]
    pub scenario: ScenarioArgs,
}

/// One subcommand per scenario.
#[derive(Debug, Clone, Subcommand)]
pub enum ScenarioArgs {
    /// Echo round trips: -c connections, each with --pipeline messages of --size bytes in flight
    /// (or, with --rate, sent at a fixed rate).
    Echo(EchoArgs),
    /// Connection churn: connect, one echo round trip, close; connections per second.
    Connect(ConnectArgs),
    /// Repeated `GET NAME` downloads: MB/s and downloads per second, each checked for its size.
    // `[ADDR] NAME`: with one word it is NAME, as `allow_missing_positional` lets clap read it.
    #[command(allow_missing_positional = true)]
    Download(DownloadArgs),
    /// Chat relay: senders and members in one room; deliveries per second, delivery ratio and
    /// one-way latency. Start the server with --chat-rate 0.
    Chat(ChatArgs),
}

/// `readyloop bench echo`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// The echo service.
    #[arg(value_parser = parse_target, default_value_t = loopback(DEFAULT_ECHO_PORT))]
    pub addr: SocketAddr,
    /// Concurrent connections; a comma list sweeps (1,10,100).
    #[arg(
        short = 'c',
        long = "connections",
        value_delimiter = ',',
        default_value = "50"
    )]
    pub connections: Vec<usize>,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Flags every scenario takes.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `readyloop bench connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The echo service.
    #[arg(value_parser = parse_target, default_value_t = loopback(DEFAULT_ECHO_PORT))]
    pub addr: SocketAddr,
    /// Connections in progress at once; a comma list sweeps (1,10,100).
    #[arg(
        short = 'c',
        long = "connections",
        value_delimiter = ',',
        default_value = "50"
    )]
    pub connections: Vec<usize>,
    /// Flags every scenario takes.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `readyloop bench download`.
#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// The file download service.
    #[arg(value_parser = parse_target, default_value_t = loopback(DEFAULT_FILES_PORT))]
    pub addr: SocketAddr,
    /// The file to download, relative to the server's root.
    pub name: String,
    /// Downloads in progress at once; a comma list sweeps (1,4,16).
    #[arg(
        short = 'c',
        long = "connections",
        value_delimiter = ',',
        default_value = "4"
    )]
    pub connections: Vec<usize>,
    /// Flags every scenario takes.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `readyloop bench chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// The chat relay.
    #[arg(value_parser = parse_target, default_value_t = loopback(DEFAULT_CHAT_PORT))]
    pub addr: SocketAddr,
    /// Sockets that send (and receive); closed loop: each keeps 8 messages in flight.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Sockets that only receive.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// A relay the members join instead of ADDR, in turn if repeated. The senders still talk to
    /// ADDR but hear the room at the first of these, their copies at ADDR turned off: with relays
    /// sharing a chat bus, every delivery then crosses Redis, and paces the senders.
    #[arg(long, value_name = "ADDR", value_parser = parse_target)]
    pub members_at: Vec<SocketAddr>,
    /// Flags every scenario takes.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Open loop: this many requests, connections, downloads or chat messages per second in
    /// total, on a fixed schedule (k and M suffixes: 10k, 1.5M); a comma list sweeps
    /// (10k,50k,100k). Latency counts from when each was due.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub rate: Vec<f64>,
    /// Open loop: operations one client may have in flight [default: 64; 1 for connect and
    /// download].
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// How long to measure [default: 10s; with --requests, up to 1 hour].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Load to generate first, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Stop after this many requests, connections, downloads or chat messages sent.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Generator threads, each running its own mio loop.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator thread i to core (i + 1) % cores (core 0 is left to `serve --pin 0`).
    #[arg(long)]
    pub pin: bool,
    /// Print one JSON document (a sweep: an array of them) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart: the latency percentile spectrum of a run, or p50/p99/p99.9 against
    /// throughput for a sweep.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm text format (a sweep: one file
    /// per step, named after it).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
}

/// The runs the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One load, or a sweep's steps in the order they run.
    pub steps: Vec<Load>,
    /// What a sweep varies; `None` for a single run.
    pub sweep: Option<Sweep>,
}

/// What a sweep varies from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// `--rate 10k,50k,...`.
    Rate,
    /// `-c 1,10,100`.
    Connections,
}

impl BenchArgs {
    /// The runs the flags describe, each checked.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the flag that is out of range.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let invalid = |message: &str| Err(BenchError::Invalid(message.into()));
        let (scenario, target, connections) = match &self.scenario {
            ScenarioArgs::Echo(a) => (
                Scenario::Echo {
                    size: a.size,
                    pipeline: a.pipeline,
                },
                a.addr,
                a.connections.clone(),
            ),
            ScenarioArgs::Connect(a) => (Scenario::Connect, a.addr, a.connections.clone()),
            ScenarioArgs::Download(a) => {
                let name = a.name.clone();
                (Scenario::Download { name }, a.addr, a.connections.clone())
            }
            ScenarioArgs::Chat(a) => (
                Scenario::Chat {
                    senders: a.senders,
                    members: a.members,
                    size: a.size,
                    members_at: a.members_at.clone(),
                },
                a.addr,
                vec![a.senders.saturating_add(a.members)],
            ),
        };
        let run = self.run_args();
        if run.rate.len() > 1 && connections.len() > 1 {
            return invalid("sweep --rate or -c, not both at once");
        }
        if run.rate.is_empty() && run.max_inflight.is_some() {
            return invalid("--max-inflight bounds an open loop: give --rate too");
        }
        let sweep = if run.rate.len() > 1 {
            Some(Sweep::Rate)
        } else if connections.len() > 1 {
            Some(Sweep::Connections)
        } else {
            None
        };
        if run.rate.len().max(connections.len()) > MAX_STEPS {
            return Err(BenchError::Invalid(format!(
                "a sweep has at most {MAX_STEPS} steps"
            )));
        }
        if sweep.is_some() && run.requests.is_some() {
            return invalid("a sweep runs for --duration per step; --requests does not go with it");
        }
        // One connection (or download) per client is the most connect and download can have.
        let max_inflight = run.max_inflight.unwrap_or(match scenario {
            Scenario::Echo { .. } | Scenario::Chat { .. } => DEFAULT_MAX_INFLIGHT,
            Scenario::Connect | Scenario::Download { .. } => 1,
        });
        let modes: Vec<Mode> = if run.rate.is_empty() {
            vec![Mode::Closed]
        } else {
            run.rate
                .iter()
                .map(|&rate| Mode::Open { rate, max_inflight })
                .collect()
        };
        let duration = match (run.duration, run.requests) {
            (Some(duration), _) => duration,
            (None, Some(_)) => MAX_DURATION,
            (None, None) => DEFAULT_DURATION,
        };
        let mut steps = Vec::with_capacity(connections.len() * modes.len());
        for &connections in &connections {
            for &mode in &modes {
                let load = Load {
                    scenario: scenario.clone(),
                    target,
                    connections,
                    threads: run.threads,
                    duration,
                    warmup: run.warmup,
                    requests: run.requests,
                    mode,
                    pin: run.pin,
                    progress: true,
                };
                load.validate()?;
                steps.push(load);
            }
        }
        Ok(Plan { steps, sweep })
    }

    /// `--json` was given.
    pub fn json(&self) -> bool {
        self.run_args().json
    }

    fn run_args(&self) -> &RunArgs {
        match &self.scenario {
            ScenarioArgs::Echo(a) => &a.run,
            ScenarioArgs::Connect(a) => &a.run,
            ScenarioArgs::Download(a) => &a.run,
            ScenarioArgs::Chat(a) => &a.run,
        }
    }
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// An address like `127.0.0.1:7788`, `[::1]:7788` or `localhost:7788` (the first address the
/// name resolves to).
///
/// # Errors
/// A message for clap to print.
pub fn parse_target(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:7788 ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// A rate like `500`, `2.5`, `10k` or `1.5M`, per second.
///
/// # Errors
/// A message for clap to print.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix(['k', 'K']) {
        Some(number) => (number, 1e3),
        None => match text.strip_suffix('M') {
            Some(number) => (number, 1e6),
            None => (text, 1.0),
        },
    };
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value * scale),
        _ => Err(format!(
            "`{text}` is not a rate like 500, 10k or 1.5M (per second)"
        )),
    }
}

/// One step of the command: its load, and what came of it.
struct Step {
    load: Load,
    report: Option<Report>,
    /// Why the step failed; `None` for a success.
    error: Option<String>,
}

/// Runs `readyloop bench` as the command line asked, printing the table (or the JSON) to stdout
/// and problems to stderr. The module doc lists the exit statuses.
pub fn command(args: &BenchArgs) -> ExitCode {
    let json = args.json();
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(e) => {
            if json {
                print_json(&Document::new(None, None, Some(e.to_string())));
            }
            eprintln!("readyloop bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut steps: Vec<Step> = Vec::with_capacity(plan.steps.len());
    for load in plan.steps {
        if !json {
            println!("{load}");
        }
        let step = match run(&load) {
            Ok(report) => Step {
                error: verdict(&load, &report),
                load,
                report: Some(report),
            },
            Err(e) => Step {
                load,
                report: None,
                error: Some(e.to_string()),
            },
        };
        warn(&step, plan.sweep);
        let failed = step.error.is_some();
        steps.push(step);
        if failed {
            break; // a failed step would fail the rest of a sweep the same way
        }
    }
    let measured: Vec<(Load, Report)> = steps
        .iter()
        .filter_map(|s| s.report.clone().map(|r| (s.load.clone(), r)))
        .collect();
    let written = write_files(args.run_args(), plan.sweep, &measured);
    if json {
        let documents: Vec<Document<'_>> = steps
            .iter()
            .map(|s| Document::new(Some(&s.load), s.report.as_ref(), s.error.clone()))
            .collect();
        match (plan.sweep, documents.as_slice()) {
            (None, [document]) => print_json(document),
            _ => print_json(&documents),
        }
    } else if plan.sweep.is_some() {
        print!("{}", table::sweep(&measured));
    } else if let Some((_, report)) = measured.first() {
        print!("{report}");
    }
    let mut status = ExitCode::SUCCESS;
    for error in steps.iter().filter_map(|s| s.error.as_ref()) {
        eprintln!("readyloop bench: {error}");
        status = ExitCode::FAILURE;
    }
    if let Err(e) = written {
        eprintln!("readyloop bench: {e}");
        status = ExitCode::FAILURE;
    }
    status
}

/// Whether a run that completed measured what it meant to: `Some(reason)` when not.
fn verdict(load: &Load, report: &Report) -> Option<String> {
    if report.operations == 0 {
        return Some(format!(
            "no {} completed against {}",
            noun(report.scenario),
            load.target
        ));
    }
    if report.errors.contains_key(RATE_LIMITED) {
        return Some(
            "the relay's rate limit dropped messages, so this measured the limit, not the \
             relay: start it with --chat-rate 0"
                .to_string(),
        );
    }
    None
}

/// Warns on stderr about what makes a step's figures the generator's rather than the server's.
fn warn(step: &Step, sweep: Option<Sweep>) {
    let Some(report) = &step.report else { return };
    let at = match sweep {
        Some(_) => format!(" (-c {}, {})", step.load.connections, rate_of(&step.load)),
        None => String::new(),
    };
    if report.generator.saturated() {
        eprintln!(
            "readyloop bench: a generator thread was busy {:.0} % of the run{at}: the \
             generator, not the server, may have set the pace (try more --threads)",
            report.generator.busiest * 100.0
        );
    }
    if step.load.mode.rate().is_some() && !report.behind.on_time() {
        eprintln!(
            "readyloop bench: fell behind the timetable{at}: {} {} started 1 ms or more late \
             (up to {}), {} never started; their latency includes the wait. What held them back: \
             --max-inflight, reconnects, or a busy machine",
            report.behind.late,
            noun(report.scenario),
            table::human_duration(report.behind.max_lag),
            report.behind.unstarted
        );
    }
}

/// `closed` or `10000.0/s`.
fn rate_of(load: &Load) -> String {
    load.mode
        .rate()
        .map_or("closed".to_string(), |rate| format!("{rate:.1}/s"))
}

/// Writes `--svg` and `--hgrm`, if asked, from the steps that measured something.
///
/// # Errors
/// A sentence naming the file that could not be written.
fn write_files(
    run: &RunArgs,
    sweep: Option<Sweep>,
    measured: &[(Load, Report)],
) -> Result<(), String> {
    let write = |path: &Path, text: &str| {
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &run.hgrm {
        for (load, report) in measured {
            let path = match sweep {
                None => path.clone(),
                Some(sweep) => step_path(path, &step_name(sweep, load)),
            };
            write(&path, &report.distribution.to_hgrm())?;
        }
    }
    if let (Some(path), Some((first, report))) = (&run.svg, measured.first()) {
        let svg = match sweep {
            None => {
                let mode = match first.mode.rate() {
                    Some(rate) => format!("open loop at {rate:.1}/s"),
                    None => "closed loop".to_string(),
                };
                let title = format!(
                    "{} {}, -c {}, {mode}: latency by percentile",
                    first.scenario.name(),
                    first.target,
                    first.connections
                );
                chart::spectrum(&title, report)
            }
            Some(sweep) => {
                let title = format!(
                    "{} {}: latency against throughput, {}",
                    first.scenario.name(),
                    first.target,
                    match sweep {
                        Sweep::Rate => "a sweep of --rate",
                        Sweep::Connections => "a sweep of -c",
                    }
                );
                chart::curve(&title, measured)
            }
        };
        write(path, &svg)?;
    }
    Ok(())
}

/// What tells a sweep's step apart: `rate-10000` or `c-50`.
fn step_name(sweep: Sweep, load: &Load) -> String {
    match sweep {
        Sweep::Rate => format!("rate-{}", load.mode.rate().unwrap_or(0.0)),
        Sweep::Connections => format!("c-{}", load.connections),
    }
}

/// `dir/name.hgrm` with `step` before its extension: `dir/name.rate-10000.hgrm`.
fn step_path(path: &Path, step: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{step}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{step}"),
    };
    path.with_file_name(name)
}

/// Prints one JSON value on one line.
fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        // Plain structs of numbers, strings and maps with string keys always serialise.
        Err(e) => eprintln!("readyloop bench: cannot write JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_addresses_or_names() {
        assert_eq!(parse_target("127.0.0.1:7788"), Ok(loopback(7788)));
        assert_eq!(
            parse_target("[::1]:8080"),
            Ok("[::1]:8080".parse().unwrap())
        );
        assert!(parse_target("localhost:7890").is_ok_and(|a| a.port() == 7890));
        assert!(parse_target("7788").is_err());
    }

    fn parse(args: &[&str]) -> Result<Load, String> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["readyloop", "bench"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Some(crate::cli::Command::Bench(bench)) => {
                let plan = bench.plan().map_err(|e| e.to_string())?;
                assert_eq!(plan.sweep, None, "one run");
                Ok(plan.steps[0].clone())
            }
            other => panic!("expected bench, got {other:?}"),
        }
    }

    #[test]
    fn each_scenario_defaults_to_its_service_on_loopback() {
        assert_eq!(
            parse(&["echo"]).unwrap().target,
            loopback(DEFAULT_ECHO_PORT)
        );
        assert_eq!(
            parse(&["connect"]).unwrap().target,
            loopback(DEFAULT_ECHO_PORT)
        );
        assert_eq!(
            parse(&["download", "f"]).unwrap().target,
            loopback(DEFAULT_FILES_PORT)
        );
        assert_eq!(
            parse(&["chat"]).unwrap().target,
            loopback(DEFAULT_CHAT_PORT)
        );
    }

    #[test]
    fn echo_defaults_are_fifty_connections_of_64_bytes_for_ten_seconds() {
        let load = parse(&["echo"]).unwrap();
        assert_eq!(
            load.scenario,
            Scenario::Echo {
                size: 64,
                pipeline: 1
            }
        );
        assert_eq!((load.connections, load.threads), (50, 1));
        assert_eq!(load.duration, DEFAULT_DURATION);
        assert_eq!(load.requests, None);
        assert!(!load.pin);
    }

    #[test]
    fn flags_reach_the_load() {
        let load = parse(&[
            "echo",
            "127.0.0.1:9",
            "-c",
            "8",
            "--size",
            "1000",
            "--pipeline",
            "4",
            "--duration",
            "250ms",
            "--requests",
            "99",
            "--threads",
            "2",
            "--pin",
        ])
        .unwrap();
        assert_eq!(load.target, loopback(9));
        assert_eq!(
            load.scenario,
            Scenario::Echo {
                size: 1000,
                pipeline: 4
            }
        );
        assert_eq!(load.connections, 8);
        assert_eq!(load.duration, Duration::from_millis(250));
        assert_eq!((load.requests, load.threads, load.pin), (Some(99), 2, true));
    }

    #[test]
    fn requests_without_a_duration_are_bounded_by_an_hour() {
        assert_eq!(
            parse(&["connect", "--requests", "10"]).unwrap().duration,
            MAX_DURATION
        );
    }

    #[test]
    fn download_takes_a_name_with_or_without_an_address() {
        let load = parse(&["download", "big.bin"]).unwrap();
        assert_eq!(
            load.scenario,
            Scenario::Download {
                name: "big.bin".into()
            }
        );
        assert_eq!(load.connections, 4);
        let load = parse(&["download", "127.0.0.1:9", "big.bin", "-c", "2"]).unwrap();
        assert_eq!(load.target, loopback(9));
        assert_eq!(load.connections, 2);
        assert!(parse(&["download", "nowhere:port", "big.bin"]).is_err());
    }

    /// ADDR has a default and NAME has none: without arguments it is NAME that is missing, and
    /// the help's usage line and argument list both show ADDR as the optional one.
    #[test]
    fn download_without_a_name_says_the_name_is_missing() {
        let error = parse(&["download"]).unwrap_err();
        assert!(error.contains("<NAME>"), "{error}");
        assert!(!error.contains("<ADDR>"), "{error}");
        use clap::CommandFactory;
        let help = crate::cli::Cli::command()
            .find_subcommand_mut("bench")
            .and_then(|bench| bench.find_subcommand_mut("download"))
            .expect("bench download")
            .render_help()
            .to_string();
        assert!(help.contains("download [OPTIONS] [ADDR] <NAME>"), "{help}");
        assert!(
            help.contains("  [ADDR]") && help.contains("  <NAME>"),
            "{help}"
        );
    }

    #[test]
    fn chat_counts_senders_and_members_as_its_clients() {
        let load = parse(&["chat", "--senders", "2", "--members", "5", "--threads", "7"]).unwrap();
        assert_eq!(load.sockets(), 7);
        assert!(
            parse(&["chat", "--members", "0"])
                .unwrap_err()
                .contains("--members")
        );
    }

    #[test]
    fn members_at_sends_the_members_to_other_relays_in_turn() {
        let args = ["chat", "127.0.0.1:1", "--members-at", "127.0.0.1:2"];
        let load = parse(&[&args[..], &["--members-at", "127.0.0.1:3"]].concat()).unwrap();
        let Scenario::Chat { members_at, .. } = &load.scenario else {
            panic!("a chat load");
        };
        assert_eq!(members_at, &[loopback(2), loopback(3)]);
        assert_eq!(load.target, loopback(1), "the senders' relay");
        assert!(
            load.to_string()
                .contains("(members at 127.0.0.1:2, 127.0.0.1:3)")
        );
    }

    #[test]
    fn out_of_range_flags_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["echo", "-c", "0"][..], "-c"),
            (&["echo", "--size", "0"], "--size"),
            (&["echo", "--pipeline", "0"], "--pipeline"),
            (&["echo", "--threads", "0"], "--threads"),
            (&["echo", "-c", "2", "--threads", "3"], "--threads"),
            (&["echo", "--duration", "0"], "--duration"),
            (&["echo", "--duration", "2h"], "--duration"),
            (&["echo", "--duration", "61m"], "--duration"),
            (&["echo", "--requests", "0"], "--requests"),
            (&["chat", "--size", "4"], "--size"),
        ] {
            let message = parse(args).unwrap_err();
            assert!(message.contains(flag), "{args:?}: {message}");
        }
    }

    /// The plan of `readyloop bench ARGS`, or the error message.
    fn plan(args: &[&str]) -> Result<Plan, String> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["readyloop", "bench"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Some(crate::cli::Command::Bench(bench)) => bench.plan().map_err(|e| e.to_string()),
            other => panic!("expected bench, got {other:?}"),
        }
    }

    #[test]
    fn rates_take_k_and_m_suffixes_and_fractions() {
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert_eq!(parse_rate("10k"), Ok(10_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        for bad in ["", "k", "-5", "0", "fast", "10m", "inf", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rate_makes_an_open_loop_with_the_scenarios_in_flight_bound() {
        let load = parse(&["echo", "--rate", "10k"]).unwrap();
        assert_eq!(
            load.mode,
            Mode::Open {
                rate: 10_000.0,
                max_inflight: DEFAULT_MAX_INFLIGHT
            }
        );
        let load = parse(&["connect", "--rate", "100"]).unwrap();
        assert!(matches!(
            load.mode,
            Mode::Open {
                max_inflight: 1,
                ..
            }
        ));
        let load = parse(&["chat", "--rate", "100", "--max-inflight", "4"]).unwrap();
        assert!(matches!(
            load.mode,
            Mode::Open {
                max_inflight: 4,
                ..
            }
        ));
        assert_eq!(parse(&["echo"]).unwrap().mode, Mode::Closed);
    }

    #[test]
    fn max_inflight_needs_a_rate_and_connect_takes_only_one() {
        assert!(
            parse(&["echo", "--max-inflight", "4"])
                .unwrap_err()
                .contains("give --rate too")
        );
        assert!(
            parse(&["download", "f", "--rate", "5", "--max-inflight", "4"])
                .unwrap_err()
                .contains("--max-inflight is 1")
        );
    }

    #[test]
    fn warmup_reaches_the_load_and_defaults_to_none() {
        let load = parse(&["echo", "--warmup", "2s"]).unwrap();
        assert_eq!(load.warmup, Duration::from_secs(2));
        assert_eq!(parse(&["echo"]).unwrap().warmup, Duration::ZERO);
    }

    #[test]
    fn a_list_of_rates_or_connections_is_a_sweep_in_order() {
        let p = plan(&["echo", "--rate", "10k,50k,100k"]).unwrap();
        assert_eq!(p.sweep, Some(Sweep::Rate));
        let rates: Vec<Option<f64>> = p.steps.iter().map(|l| l.mode.rate()).collect();
        assert_eq!(rates, [Some(10e3), Some(50e3), Some(100e3)]);
        let p = plan(&["connect", "-c", "1,10,100"]).unwrap();
        assert_eq!(p.sweep, Some(Sweep::Connections));
        let counts: Vec<usize> = p.steps.iter().map(|l| l.connections).collect();
        assert_eq!(counts, [1, 10, 100]);
        let p = plan(&["echo", "-c", "8", "--rate", "5k"]).unwrap();
        assert_eq!((p.sweep, p.steps.len()), (None, 1));
    }

    #[test]
    fn sweeps_are_one_dimension_bounded_and_checked_step_by_step() {
        let message = plan(&["echo", "-c", "1,2", "--rate", "1k,2k"]).unwrap_err();
        assert!(message.contains("not both"), "{message}");
        let many = vec!["1"; MAX_STEPS + 1].join(",");
        let message = plan(&["echo", "-c", &many]).unwrap_err();
        assert!(message.contains("at most 32 steps"), "{message}");
        let message = plan(&["echo", "-c", "4,0"]).unwrap_err();
        assert!(message.contains("-c"), "{message}");
        let message = plan(&["echo", "--rate", "1k,2k", "--requests", "5"]).unwrap_err();
        assert!(message.contains("--requests"), "{message}");
    }

    #[test]
    fn a_sweeps_hgrm_files_are_named_after_their_steps() {
        let p = plan(&["echo", "--rate", "500,2.5k"]).unwrap();
        let names: Vec<String> = p.steps.iter().map(|l| step_name(Sweep::Rate, l)).collect();
        assert_eq!(names, ["rate-500", "rate-2500"]);
        assert_eq!(
            step_path(Path::new("out/run.hgrm"), "c-10"),
            Path::new("out/run.c-10.hgrm")
        );
        assert_eq!(step_path(Path::new("run"), "c-10"), Path::new("run.c-10"));
    }

    #[test]
    fn bench_flags_do_not_clash_with_the_global_ones() {
        assert!(parse(&["echo", "-v"]).is_ok());
        assert!(parse(&["echo", "-q", "--json"]).is_ok());
    }
}
