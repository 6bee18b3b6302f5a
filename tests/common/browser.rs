//! Headless Chromium for the tests of the live page: load a URL, let its scripts run, and take
//! the DOM (or, for the docs, a screenshot).
//!
//! The page is JavaScript, so only a real browser proves that it shows what the server said.
//! Debian's `chromium` runs headless without a display. Each run gets a fresh profile in a
//! temporary directory and its own process group, killed whole if it overruns its time, so a hung
//! browser fails the test instead of hanging the suite. The flags switch off everything that
//! would reach beyond loopback: background networking, component updates, sync and QUIC.
//!
//! `--virtual-time-budget` runs the page's timers on virtual time, which Chromium holds still
//! while a fetch is in flight: the page's first polls are answered and drawn before the DOM is
//! taken, and the test never sleeps.
//!
//! The browser is required, never optional: without it these functions panic with the command
//! that installs it, rather than let the page go untested.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian's `chromium` package installs its launcher.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags of every run: no sandbox (tests may run as root or in a container), no GPU, and no
/// traffic of the browser's own.
const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Virtual time the page runs for before the DOM or the picture is taken, in milliseconds: the
/// page polls `/stats.json` every second and `/connections` every three, so this covers a few of
/// each. Virtual time costs little real time: Chromium skips ahead while nothing is pending.
const VIRTUAL_TIME_MS: u64 = 4000;

/// How often the run is checked for having exited (the pipe's end already came).
const POLL_EVERY: Duration = Duration::from_millis(5);

/// The DOM of `url` after its scripts have run for [`VIRTUAL_TIME_MS`] of virtual time, as
/// serialised by `chromium --dump-dom`.
///
/// # Panics
/// If Chromium is not installed (the message says `apt-get install chromium`), if it does not
/// finish within `timeout` (it is killed first), or if it exits with an error; the message ends
/// with the last lines Chromium wrote to stderr.
#[track_caller]
pub fn dump_dom(url: &str, timeout: Duration) -> String {
    let dom = run(&["--dump-dom".to_string(), url.to_string()], timeout);
    String::from_utf8(dom).unwrap_or_else(|e| panic!("the DOM of {url} is not UTF-8: {e}"))
}

/// Writes a PNG of the first `width` x `height` pixels of `url` to `png`, after its scripts have
/// run as for [`dump_dom`].
///
/// # Panics
/// As [`dump_dom`], and if no picture was written.
#[track_caller]
pub fn screenshot(url: &str, png: &Path, (width, height): (u32, u32), timeout: Duration) {
    let _ = fs::remove_file(png);
    run(
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".to_string(),
            url.to_string(),
        ],
        timeout,
    );
    assert!(png.is_file(), "Chromium wrote no screenshot of {url}");
}

/// Runs Chromium with [`FLAGS`], a fresh profile and `args`, and gives its stdout.
#[track_caller]
fn run(args: &[String], timeout: Duration) -> Vec<u8> {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} not found: the page tests need headless Chromium; apt-get install chromium"
    );
    let deadline = Instant::now() + timeout;
    let scratch = tempfile::tempdir().expect("create a directory for Chromium's profile");
    let stderr_path = scratch.path().join("stderr.log");
    let stderr = File::create(&stderr_path).expect("create Chromium's stderr log");
    let mut child = Command::new(CHROMIUM)
        .args(FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            scratch.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Its own group, so that a timeout kills the renderer and helper processes too.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}; apt-get install chromium"));
    let log = || stderr_tail(&stderr_path);

    // std has no read with a deadline on a pipe: a thread reads, the deadline is on the channel.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = tx.send(stdout.read_to_end(&mut out).map(|_| out));
    });
    let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => fail(
            &mut child,
            &format!("reading its output failed: {e}"),
            log(),
        ),
        Err(_) => fail(
            &mut child,
            &format!("still running after {timeout:?}"),
            log(),
        ),
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_EVERY),
            Ok(None) => fail(
                &mut child,
                &format!("did not exit within {timeout:?}"),
                log(),
            ),
            Err(e) => fail(&mut child, &format!("waiting for it failed: {e}"), log()),
        }
    };
    if !status.success() {
        panic!(
            "{CHROMIUM} {}: {}{}",
            args.join(" "),
            describe(status),
            log()
        );
    }
    out
}

/// Kills the whole process group of a run that went wrong, reaps it, and panics with `why`.
///
/// The group is killed before the leader is reaped, so its id cannot have been reused.
fn fail(child: &mut Child, why: &str, log: String) -> ! {
    // The group id is the leader's pid (`process_group(0)`); pids fit in pid_t.
    let group = child.id() as libc::pid_t;
    // SAFETY: killpg only sends a signal; the group is ours and its leader not yet reaped.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = child.wait();
    panic!("{CHROMIUM} {why}; killed{log}");
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".to_string(),
    }
}

/// The last few lines Chromium wrote to stderr, for a failure message.
fn stderr_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nits stderr ends:\n  {tail}")
    }
}
