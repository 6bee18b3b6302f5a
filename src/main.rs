//! The `readyloop` command: parse the flags, start logging, hand over to the library.
//!
//! Run with `cargo run --release` (or `readyloop serve --help` for the flags); `readyloop bench
//! --help` for the load generator. All logic lives in the library, so tests and benchmarks run
//! exactly the server (and the generator) this binary runs.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;
use readyloop::Server;
use readyloop::cli::{Cli, Command, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG, when set, wins over -v/-q and --access-log's own filter.
    let filter = cli.log_filter();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();

    let args = match cli.command {
        Some(Command::Serve(args)) => *args,
        Some(Command::Bench(args)) => return readyloop::bench::command(&args),
        None => cli.serve,
    };
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readyloop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds every service, prints the start-up line, and serves until shut down.
fn serve(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    let mut server = Server::bind(args.into_config()?)?;
    server.watch_signals()?;
    // The start-up line: scripts and tests read the real ports from it. Keep its shape stable.
    println!("readyloop listening {}", server.addresses());
    server
        .run()
        .map_err(|e| format!("the event loop failed: {e}"))?;
    Ok(())
}
