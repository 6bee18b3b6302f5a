//! The `readyloop` binary as an operator meets it: the start-up line, flag and environment
//! handling, start-up errors, signals, and running out of file descriptors.
//!
//! Each test spawns the real binary on `127.0.0.1` with every port 0 (the files and chat ports
//! too, so the tests keep working once those services bind). [`Running`] kills the child on
//! drop, so a failing test never leaves a server behind, and every wait on the child is bounded.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{AT_ONCE, WAIT, read_to_eof_within, round_trip, wait_until, wait_until_refused};

/// Bound on start-up and on exits that should be prompt.
const START: Duration = Duration::from_secs(10);

/// Flags every test passes: loopback only, and a free port for every service.
const LOCAL: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--echo-port",
    "0",
    "--files-port",
    "0",
    "--chat-port",
    "0",
    "--admin-port",
    "0",
];

/// A spawned `readyloop`, killed on drop unless it has already exited.
struct Running {
    child: Child,
    /// Lines of stdout, as they arrive.
    stdout: Receiver<String>,
    /// Everything written to stderr so far.
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Running {
    /// Starts the binary with `args`, with no `READYLOOP_*` or `RUST_LOG` from the caller's
    /// environment (they would change what is tested), plus `env`.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::spawn_with(args, env, |_| {})
    }

    /// As [`Running::spawn`], letting `adjust` change the command first.
    fn spawn_with(
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_readyloop"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("READYLOOP_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn readyloop");

        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let collected = Arc::new(Mutex::new(String::new()));
        let stderr_reader = thread::spawn({
            let collected = Arc::clone(&collected);
            move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut buf) {
                    collected
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Running {
            child,
            stdout: lines_rx,
            stderr: collected,
            stderr_reader: Some(stderr_reader),
            status: None,
        }
    }

    /// Starts the server with `extra` flags after [`LOCAL`] and returns it with its start-up
    /// addresses.
    fn serve(extra: &[&str]) -> (Running, HashMap<String, SocketAddr>) {
        let args: Vec<&str> = LOCAL.iter().chain(extra).copied().collect();
        let mut running = Running::spawn(&args, &[]);
        let addresses = running.startup_addresses();
        (running, addresses)
    }

    /// The next line of stdout, waiting at most `timeout`.
    #[track_caller]
    fn stdout_line(&mut self, timeout: Duration) -> String {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => panic!(
                "no stdout line within {timeout:?}; stderr so far:\n{}",
                self.stderr()
            ),
        }
    }

    /// Reads the start-up line and parses its `name=address` pairs.
    #[track_caller]
    fn startup_addresses(&mut self) -> HashMap<String, SocketAddr> {
        let line = self.stdout_line(START);
        parse_startup_line(&line)
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Sends `signal` to the child.
    fn signal(&self, signal: libc::c_int) {
        assert!(self.status.is_none(), "the child has already exited");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid cannot
        // have been reused: the child has not been reaped (no successful wait yet), so its pid
        // still names it.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the child to exit, at most `timeout`.
    #[track_caller]
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // The child is gone, so stderr reaches EOF and the reader ends promptly.
                if let Some(reader) = self.stderr_reader.take() {
                    common::join_within(reader, WAIT, "the stderr reader");
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "still running after {timeout:?}; stderr so far:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The child's state for a failure message: whether it is still running, and its stderr.
    fn describe(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "still running".to_string(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(e) => format!("unknown: {e}"),
        };
        format!("readyloop {state}; stderr:\n{}", self.stderr())
    }

    /// Connects a client as `common::connect` does, describing the child if that fails.
    #[track_caller]
    fn connect(&mut self, addr: SocketAddr) -> TcpStream {
        match TcpStream::connect_timeout(&addr, WAIT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
                stream.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
                stream.set_nodelay(true).unwrap();
                stream
            }
            Err(e) => panic!("connect to {addr}: {e}; {}", self.describe()),
        }
    }

    /// Everything written to stderr so far (all of it once [`Running::wait_exit`] returned).
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text`.
    #[track_caller]
    fn wait_stderr_contains(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            if Instant::now() >= deadline {
                panic!(
                    "stderr lacks {text:?} after {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every stdout line not read yet, up to EOF: call once the child has exited.
    #[track_caller]
    fn remaining_stdout(&self) -> Vec<String> {
        assert!(
            self.status.is_some(),
            "stdout is complete only once the child has exited"
        );
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("stdout did not reach EOF within {WAIT:?}")
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            // SIGKILL cannot be ignored: this wait is immediate.
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion (within `timeout`): status, stdout, stderr.
fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut running = Running::spawn(args, &[]);
    let status = running.wait_exit(timeout);
    let stdout = running.remaining_stdout().join("\n");
    (status, stdout, running.stderr())
}

/// `readyloop listening echo=127.0.0.1:PORT [name=addr]...` into its pairs, by name.
#[track_caller]
fn parse_startup_line(line: &str) -> HashMap<String, SocketAddr> {
    let pairs = line
        .strip_prefix("readyloop listening ")
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"));
    pairs
        .split(' ')
        .map(|pair| {
            let (name, addr) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{pair:?} in {line:?} is not name=address"));
            let addr = addr
                .parse()
                .unwrap_or_else(|e| panic!("{addr:?} in {line:?} is not an address: {e}"));
            (name.to_string(), addr)
        })
        .collect()
}

/// The echo address from the start-up pairs.
#[track_caller]
fn echo_of(addresses: &HashMap<String, SocketAddr>) -> SocketAddr {
    *addresses
        .get("echo")
        .unwrap_or_else(|| panic!("no echo= in the start-up line: {addresses:?}"))
}

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

// ---- start-up -------------------------------------------------------------------------------

#[test]
fn startup_line_names_the_echo_address_and_is_the_only_stdout() {
    let (mut server, addresses) = Running::serve(&[]);
    let echo = echo_of(&addresses);
    assert_eq!(echo.ip(), LOCALHOST);
    assert_ne!(echo.port(), 0, "the real port, not the 0 asked for");
    round_trip(&mut server.connect(echo), b"is this the echo port?");

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(START).success());
    assert_eq!(
        server.remaining_stdout(),
        Vec::<String>::new(),
        "stdout is the start-up line only"
    );
}

#[test]
fn serve_subcommand_starts_the_same_server() {
    let args: Vec<&str> = ["serve"].iter().chain(LOCAL).copied().collect();
    let mut server = Running::spawn(&args, &[]);
    let echo = echo_of(&server.startup_addresses());
    round_trip(&mut server.connect(echo), b"served by `serve`");
}

/// A std listener holds a port on 127.0.0.1; readyloop is asked for the same one.
#[test]
fn busy_port_gives_one_clear_line_and_a_failure_status() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let args = [
        "--bind",
        "127.0.0.1",
        "--echo-port",
        &port,
        "--files-port",
        "0",
        "--chat-port",
        "0",
        "--admin-port",
        "0",
    ];
    let (status, stdout, stderr) = run_to_exit(&args, START);

    assert!(!status.success(), "exit status {status}");
    assert_eq!(stdout, "", "no start-up line when nothing is listening");
    let expected = format!("readyloop: cannot listen for echo on port {port} (127.0.0.1:{port}): ");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(lines[0].starts_with(&expected), "got {:?}", lines[0]);
}

/// `localhost` may resolve to `::1` first; the tutorial's IPv4 clients need 127.0.0.1.
#[test]
fn bind_takes_a_host_name_and_logs_the_address_it_chose() {
    let args = [
        "--bind",
        "localhost",
        "--echo-port",
        "0",
        "--files-port",
        "0",
    ];
    let rest = ["--chat-port", "0", "--admin-port", "0"];
    let args: Vec<&str> = args.into_iter().chain(rest).collect();
    let mut server = Running::spawn(&args, &[]);
    let echo = echo_of(&server.startup_addresses());
    assert_eq!(echo.ip(), LOCALHOST);
    round_trip(&mut server.connect(echo), b"bound by name");
    // Logged before the start-up line, but stderr is read by another thread.
    wait_until(START, "the log line naming the address", || {
        server
            .stderr()
            .contains("--bind localhost resolved to 127.0.0.1")
    });
}

#[test]
fn a_bind_name_that_does_not_resolve_gives_one_clear_line_and_a_failure_status() {
    let args = ["--bind", "no-such-host.invalid", "--echo-port", "0"];
    let (status, stdout, stderr) = run_to_exit(&args, START);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stdout, "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("readyloop: --bind no-such-host.invalid: cannot resolve the name"),
        "got {:?}",
        lines[0]
    );
}

#[test]
fn low_water_above_high_water_is_rejected_naming_the_flag() {
    let args: Vec<&str> = LOCAL
        .iter()
        .copied()
        .chain(["--high-water", "1000", "--low-water", "2000"])
        .collect();
    let (status, stdout, stderr) = run_to_exit(&args, START);
    assert!(!status.success(), "exit status {status}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("--low-water"), "stderr: {stderr}");
}

#[test]
fn help_exits_zero_and_lists_max_conns() {
    let (status, stdout, _) = run_to_exit(&["--help"], START);
    assert!(status.success(), "exit status {status}");
    assert!(stdout.contains("--max-conns"), "help text:\n{stdout}");
}

// ---- environment ----------------------------------------------------------------------------

#[test]
fn echo_port_falls_back_to_the_environment() {
    let args = [
        "--bind",
        "127.0.0.1",
        "--files-port",
        "0",
        "--chat-port",
        "0",
        "--admin-port",
        "0",
    ];
    let mut server = Running::spawn(&args, &[("READYLOOP_ECHO_PORT", "0")]);
    let echo = echo_of(&server.startup_addresses());
    assert_ne!(
        echo.port(),
        readyloop::config::DEFAULT_ECHO_PORT,
        "the variable was ignored"
    );
    round_trip(&mut server.connect(echo), b"configured by the environment");
}

/// The variable names port 1, which an unprivileged process cannot bind: starting at all shows
/// the flag won.
#[test]
fn echo_port_flag_wins_over_the_environment() {
    let mut server = Running::spawn(LOCAL, &[("READYLOOP_ECHO_PORT", "1")]);
    let echo = echo_of(&server.startup_addresses());
    assert_ne!(echo.port(), 1);
    round_trip(&mut server.connect(echo), b"configured by the flag");
}

// ---- signals --------------------------------------------------------------------------------

#[test]
fn sigterm_exits_zero_with_the_stopped_summary() {
    let (mut server, addresses) = Running::serve(&[]);
    let mut client = server.connect(echo_of(&addresses));
    round_trip(&mut client, b"counted");
    drop(client);

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(START);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let stderr = server.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("stopped: accepted=1 ")),
        "no summary line in stderr:\n{stderr}"
    );
}

/// The idle client gets FIN once it has been quiet for `--request-grace` (50 ms), but never
/// answers it, and `--linger 30s` would wait for it: only the 1 s grace can end the drain.
#[test]
fn sigint_with_an_open_idle_client_still_exits_zero_within_grace() {
    const GRACE: Duration = Duration::from_secs(1);
    let (mut server, addresses) = Running::serve(&["--shutdown-grace", "1s", "--linger", "30s"]);
    let mut client = server.connect(echo_of(&addresses));
    round_trip(&mut client, b"then silence");

    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    let rest = read_to_eof_within(&mut client, WAIT)
        .unwrap_or_else(|(e, _)| panic!("expected FIN from the draining server, got {e}"));
    assert!(rest.is_empty());
    let status = server.wait_exit(GRACE + WAIT);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < GRACE + AT_ONCE, "exited {took:?} after SIGINT");
    drop(client);
}

/// A client that never reads keeps the server draining for the whole 60 s grace (and a 60 s
/// linger covers the case where its output had all been delivered to the kernel). Refused
/// connections show the first signal was handled before the second is sent (two signals sent
/// together may be delivered as one).
#[test]
fn a_second_signal_stops_at_once() {
    let (mut server, addresses) = Running::serve(&["--shutdown-grace", "60s", "--linger", "60s"]);
    let echo = echo_of(&addresses);
    let mut hog = server.connect(echo);
    round_trip(&mut hog, b"about to stop reading");
    hog.set_nonblocking(true).unwrap();
    let chunk = common::payload(9, 64 * 1024);
    // Fill every buffer between us and the server, so output stays owed.
    wait_until(WAIT, "the hog's writes to be pushed back", || {
        match hog.write(&chunk) {
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            Err(e) => panic!("hog write failed: {e}; {}", server.describe()),
        }
    });

    server.signal(libc::SIGTERM);
    wait_until_refused(echo, WAIT);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the first signal should drain, not stop"
    );
    let second = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(WAIT);
    let took = second.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < AT_ONCE, "exited {took:?} after the second signal");
}

// ---- out of file descriptors ----------------------------------------------------------------

/// Descriptor limit for the child: the server needs about ten for itself (stdio, epoll, listener,
/// signal pipe, waker), so 40 clients run it out.
const NOFILE: libc::rlim_t = 32;

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: libc::pid_t) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Field 2, the command name, is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), numbered from 1; `after_name` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The child starts with `RLIMIT_NOFILE` lowered to 32, and 40 clients connect. The kernel
/// completes their handshakes regardless (backlog), so `accept` fails with EMFILE while they
/// stay queued, and the listener stays readable: a loop that simply retried would spin at 100%
/// CPU. The test measures the child's CPU time over one second, then closes the clients and
/// checks that the listener recovered.
#[test]
fn running_out_of_descriptors_backs_off_without_spinning_and_recovers() {
    let args: Vec<&str> = LOCAL.to_vec();
    let mut server = Running::spawn_with(&args, &[], |command| {
        let limit = libc::rlimit {
            rlim_cur: NOFILE,
            rlim_max: NOFILE,
        };
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called. It calls only setrlimit(2), a plain system
        // call (async-signal-safe: it takes no lock and does not allocate), on a `rlimit` copied
        // into the closure before the fork, and builds its error from errno without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    let echo = echo_of(&server.startup_addresses());

    let clients: Vec<TcpStream> = (0..40).map(|_| server.connect(echo)).collect();
    // The OS's text for EMFILE, which the back-off warning quotes.
    server.wait_stderr_contains("Too many open files", WAIT);

    let wall_start = Instant::now();
    let cpu_start = cpu_time(server.pid());
    // A measurement window, not synchronisation: how much CPU does a second of EMFILE cost?
    thread::sleep(Duration::from_secs(1));
    let cpu = cpu_time(server.pid()) - cpu_start;
    let wall = wall_start.elapsed();
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "the loop spins: {cpu:?} of CPU in {wall:?} while out of descriptors"
    );

    drop(clients);
    let mut fresh = server.connect(echo);
    round_trip(&mut fresh, b"accepting again");
    drop(fresh);

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(START);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(status.signal(), None);
}
