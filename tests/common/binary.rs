//! The `readyloop` binary run as a child process: spawned on `127.0.0.1` with every port 0, its
//! start-up line parsed, its stderr collected, killed on drop so a failing test never leaves a
//! server behind; every wait on it is bounded.
//!
//! For tests that need the real binary: its flags and signals (`tests/cli.rs`), or a server in a
//! process of its own, with its own descriptor limit (10 000 connections in `tests/admin.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{IO_TIMEOUT, WAIT, join_within};

/// Bound on start-up and on exits that should be prompt.
pub const START: Duration = Duration::from_secs(10);

/// Flags every test passes: loopback only, and a free port for every service.
pub const LOCAL: &[&str] = &[
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
pub struct Running {
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
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::spawn_with(args, env, |_| {})
    }

    /// As [`Running::spawn`], letting `adjust` change the command first.
    pub fn spawn_with(
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
    pub fn serve(extra: &[&str]) -> (Running, HashMap<String, SocketAddr>) {
        let args: Vec<&str> = LOCAL.iter().chain(extra).copied().collect();
        let mut running = Running::spawn(&args, &[]);
        let addresses = running.startup_addresses();
        (running, addresses)
    }

    /// The next line of stdout, waiting at most `timeout`.
    #[track_caller]
    pub fn stdout_line(&mut self, timeout: Duration) -> String {
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
    pub fn startup_addresses(&mut self) -> HashMap<String, SocketAddr> {
        let line = self.stdout_line(START);
        parse_startup_line(&line)
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.status.is_none(), "the child has already exited");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid cannot
        // have been reused: the child has not been reaped (no successful wait yet), so its pid
        // still names it.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the child to exit, at most `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // The child is gone, so stderr reaches EOF and the reader ends promptly.
                if let Some(reader) = self.stderr_reader.take() {
                    join_within(reader, WAIT, "the stderr reader");
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

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The child's state for a failure message: whether it is still running, and its stderr.
    pub fn describe(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "still running".to_string(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(e) => format!("unknown: {e}"),
        };
        format!("readyloop {state}; stderr:\n{}", self.stderr())
    }

    /// Connects a client as `common::connect` does, describing the child if that fails.
    #[track_caller]
    pub fn connect(&mut self, addr: SocketAddr) -> TcpStream {
        match TcpStream::connect_timeout(&addr, WAIT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                stream.set_nodelay(true).unwrap();
                stream
            }
            Err(e) => panic!("connect to {addr}: {e}; {}", self.describe()),
        }
    }

    /// Everything written to stderr so far (all of it once [`Running::wait_exit`] returned).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text`.
    #[track_caller]
    pub fn wait_stderr_contains(&self, text: &str, timeout: Duration) {
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
    pub fn remaining_stdout(&self) -> Vec<String> {
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
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut running = Running::spawn(args, &[]);
    let status = running.wait_exit(timeout);
    let stdout = running.remaining_stdout().join("\n");
    (status, stdout, running.stderr())
}

/// `readyloop listening echo=127.0.0.1:PORT [name=addr]...` into its pairs, by name.
#[track_caller]
pub fn parse_startup_line(line: &str) -> HashMap<String, SocketAddr> {
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
pub fn echo_of(addresses: &HashMap<String, SocketAddr>) -> SocketAddr {
    *addresses
        .get("echo")
        .unwrap_or_else(|| panic!("no echo= in the start-up line: {addresses:?}"))
}
