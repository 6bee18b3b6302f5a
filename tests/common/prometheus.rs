//! Prometheus's side of the admin service's tests: its own checker, `promtool`, and the samples
//! of a text-format body.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// promtool answers in well under a second; this bounds the wait if it hangs.
const PROMTOOL_BOUND: Duration = Duration::from_secs(20);

/// Runs `promtool check metrics` on `body`: whether it passed, and what it printed.
///
/// # Panics
/// promtool is not installed (the message says how to install it), or it did not finish in time.
pub fn promtool_check(body: &str) -> (bool, String) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed ({e}); this test needs it: `apt-get install prometheus`"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    stdin.write_all(body.as_bytes()).expect("write to promtool");
    drop(stdin);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for promtool") {
            break status;
        }
        if started.elapsed() > PROMTOOL_BOUND {
            let _ = child.kill();
            panic!("promtool did not finish within {PROMTOOL_BOUND:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // It has exited: its few lines of output wait in the pipes.
    let mut said = String::new();
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    stdout.read_to_string(&mut said).expect("promtool's output");
    stderr.read_to_string(&mut said).expect("promtool's errors");
    (status.success(), said)
}

/// Each sample of a text-format body as `name{labels}` and its value.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            (series.to_owned(), value)
        })
        .collect()
}
