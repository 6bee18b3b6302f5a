//! The `readyloop` binary as an operator meets it: the start-up line, flag and environment
//! handling, start-up errors, signals, and running out of file descriptors.
//!
//! Each test spawns the real binary on `127.0.0.1` with every port 0 (the files and chat ports
//! too, so the tests keep working once those services bind). [`Running`] kills the child on
//! drop, so a failing test never leaves a server behind, and every wait on the child is bounded.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::{LOCAL, Running, START, echo_of, run_to_exit};
use common::{AT_ONCE, WAIT, read_to_eof_within, round_trip, wait_until, wait_until_refused};

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
        server.is_running(),
        "the first signal should drain, not stop"
    );
    let second = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(WAIT);
    let took = second.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < AT_ONCE, "exited {took:?} after the second signal");
}

/// The health check a load balancer polls turns 503 with the first signal, while the server
/// still drains (a client that never reads holds it there).
#[test]
fn sigterm_turns_the_health_check_to_503_while_draining() {
    let (mut server, addresses) = Running::serve(&["--shutdown-grace", "60s"]);
    let admin = addresses["admin"];
    assert_eq!(common::http::get(admin, "/healthz").status, 200);
    let mut hog = server.connect(echo_of(&addresses));
    hog.set_nonblocking(true).unwrap();
    let chunk = common::payload(3, 64 * 1024);
    wait_until(WAIT, "the hog's writes to be pushed back", || {
        match hog.write(&chunk) {
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            Err(e) => panic!("hog write failed: {e}; {}", server.describe()),
        }
    });

    server.signal(libc::SIGTERM);
    wait_until(WAIT, "the health check to say draining", || {
        common::http::get(admin, "/healthz").status == 503
    });
    assert!(server.is_running(), "still draining");
}

/// `off` on a port flag leaves its service out, start-up line included; the others serve.
#[test]
fn a_port_flag_set_to_off_turns_its_service_off() {
    let args: Vec<&str> = [
        "--bind",
        "127.0.0.1",
        "--echo-port",
        "0",
        "--files-port",
        "off",
    ]
    .into_iter()
    .chain(["--chat-port", "off", "--admin-port", "off"])
    .collect();
    let mut server = Running::spawn(&args, &[]);
    let addresses = server.startup_addresses();
    let mut names: Vec<&String> = addresses.keys().collect();
    names.sort();
    assert_eq!(names, ["echo"]);
    round_trip(&mut server.connect(echo_of(&addresses)), b"alone");
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
