//! The `readyloop` command: parse the flags, start logging, hand over to the library.
//!
//! Run with `cargo run --release` (or `readyloop serve --help` for the flags); `readyloop bench
//! --help` for the load generator. All logic lives in the library, so tests and benchmarks run
//! exactly the server (and the generator) this binary runs.

use std::process::ExitCode;

use clap::Parser;
use log::error;
use readyloop::Server;
use readyloop::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG, when set, wins over -v/-q; other crates log warnings only unless it says otherwise.
    let filter = format!("warn,readyloop={}", cli.log_level());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();

    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        Some(Command::Bench(args)) => return readyloop::bench::command(&args),
        None => cli.serve,
    };
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("readyloop: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.watch_signals() {
        eprintln!("readyloop: {e}");
        return ExitCode::FAILURE;
    }
    // The start-up line: scripts and tests read the real ports from it. Keep its shape stable.
    println!("readyloop listening {}", server.addresses());
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            error!("the event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
