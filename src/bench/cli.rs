//! The command line of `readyloop bench`: one subcommand per scenario, turned into a checked
//! [`Load`], and the printing around [`run`].
//!
//! Kept apart from the generator so that [`run`] takes a plain [`Load`], which the cargo-bench
//! harness builds without clap. Every default here is the scenario's usual case: 50 echo
//! connections of 64-byte messages, 4 parallel downloads, one chat sender and ten members, for
//! 10 s, against the service's default port on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::report::{RATE_LIMITED, noun};
use super::{BenchError, DEFAULT_DURATION, Load, MAX_DURATION, Scenario, run};
use crate::config::{DEFAULT_CHAT_PORT, DEFAULT_ECHO_PORT, DEFAULT_FILES_PORT, parse_duration};

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
    /// Echo round trips: -c connections, each with --pipeline messages of --size bytes in flight.
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
    /// Concurrent connections.
    #[arg(short = 'c', long = "connections", default_value_t = 50)]
    pub connections: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection.
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
    /// Connections in progress at once.
    #[arg(short = 'c', long = "connections", default_value_t = 50)]
    pub connections: usize,
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
    /// Downloads in progress at once.
    #[arg(short = 'c', long = "connections", default_value_t = 4)]
    pub connections: usize,
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
    /// Sockets that send (each keeps 8 messages in flight, and receives too).
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
    /// How long to generate load [default: 10s; with --requests, up to 1 hour].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests, connections, downloads or chat messages sent.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Generator threads, each running its own mio loop.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator thread i to core (i + 1) % cores (core 0 is left to `serve --pin 0`).
    #[arg(long)]
    pub pin: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The run the flags describe, checked.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the flag that is out of range.
    pub fn load(&self) -> Result<Load, BenchError> {
        let (scenario, target, connections) = match &self.scenario {
            ScenarioArgs::Echo(a) => (
                Scenario::Echo {
                    size: a.size,
                    pipeline: a.pipeline,
                },
                a.addr,
                a.connections,
            ),
            ScenarioArgs::Connect(a) => (Scenario::Connect, a.addr, a.connections),
            ScenarioArgs::Download(a) => {
                let name = a.name.clone();
                (Scenario::Download { name }, a.addr, a.connections)
            }
            ScenarioArgs::Chat(a) => (
                Scenario::Chat {
                    senders: a.senders,
                    members: a.members,
                    size: a.size,
                    members_at: a.members_at.clone(),
                },
                a.addr,
                a.senders.saturating_add(a.members),
            ),
        };
        let run = self.run_args();
        let duration = match (run.duration, run.requests) {
            (Some(duration), _) => duration,
            (None, Some(_)) => MAX_DURATION,
            (None, None) => DEFAULT_DURATION,
        };
        let load = Load {
            scenario,
            target,
            connections,
            threads: run.threads,
            duration,
            requests: run.requests,
            pin: run.pin,
            progress: true,
        };
        load.validate()?;
        Ok(load)
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

/// Runs `readyloop bench` as the command line asked, printing the table (or the JSON) to stdout
/// and problems to stderr.
///
/// Exit status: 0 after a run that completed operations (even with errors, which the table
/// shows); 1 when the target is unreachable or no operation completed; 2 for invalid flags.
pub fn command(args: &BenchArgs) -> ExitCode {
    let load = match args.load() {
        Ok(load) => load,
        Err(e) => {
            eprintln!("readyloop bench: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.json() {
        println!("{load}");
    }
    match run(&load) {
        Ok(report) => {
            if args.json() {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            if report.errors.contains_key(RATE_LIMITED) {
                eprintln!(
                    "readyloop bench: the relay's rate limit dropped messages; start it with \
                     --chat-rate 0 to measure the relay itself"
                );
            }
            if report.operations == 0 {
                eprintln!(
                    "readyloop bench: no {} completed against {}",
                    noun(report.scenario),
                    load.target
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("readyloop bench: {e}");
            ExitCode::FAILURE
        }
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
            Some(crate::cli::Command::Bench(bench)) => bench.load().map_err(|e| e.to_string()),
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

    #[test]
    fn bench_flags_do_not_clash_with_the_global_ones() {
        assert!(parse(&["echo", "-v"]).is_ok());
        assert!(parse(&["echo", "-q", "--json"]).is_ok());
    }
}
