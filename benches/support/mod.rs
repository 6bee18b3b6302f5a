//! What every benchmark shares: starting readyloop in-process, reading a thread's CPU time,
//! summarising samples, and writing the file the download benchmarks fetch.
//!
//! On a small machine the load generator costs as much CPU as the server, so requests per second
//! mostly measure the machine. The server's own CPU time per request is what tells two servers
//! apart: [`thread_cpu`] reads it from `/proc` for the server's thread alone.

#![allow(dead_code)] // each benchmark uses its own subset

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use readyloop::{Addresses, Config, Handle, Server};

pub mod nginx;
pub mod tokio_peer;

/// A server running on its own thread, with that thread's kernel id for CPU accounting.
pub struct Running {
    /// The addresses the services bound.
    pub addresses: Addresses,
    /// The server thread's id, for `/proc/self/task/<tid>`.
    pub tid: i32,
    /// The server's figures, its system calls by kind among them.
    pub handle: Handle,
}

/// A configuration on loopback with every port chosen by the kernel.
pub fn loopback_config() -> Config {
    Config {
        bind: "127.0.0.1".parse().unwrap(),
        echo_port: Some(0),
        files_port: Some(0),
        chat_port: Some(0),
        admin_port: Some(0),
        ..Config::default()
    }
}

/// Binds readyloop with `config` and runs it on a new thread until the process ends.
pub fn start_readyloop(config: Config) -> Running {
    let server = Server::bind(config).expect("readyloop binds");
    let addresses = server.addresses();
    let handle = server.handle();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() });
        server.run()
    });
    let tid = rx.recv().expect("the server thread starts");
    Running {
        addresses,
        tid,
        handle,
    }
}

/// CPU time (user and system) a thread of this process has used so far.
pub fn thread_cpu(tid: i32) -> Duration {
    task_cpu(&format!("/proc/self/task/{tid}"))
}

/// CPU time (user and system) the thread whose `/proc` directory is `task` has used so far: a
/// thread of this process, or of another (nginx).
///
/// `schedstat` counts nanoseconds; `stat` (clock ticks, 10 ms) is the fallback where the kernel
/// has no scheduler statistics.
pub fn task_cpu(task: &str) -> Duration {
    if let Ok(text) = std::fs::read_to_string(format!("{task}/schedstat")) {
        if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return Duration::from_nanos(ns);
        }
    }
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Writes `len` bytes of pseudo-random data (so nothing on the way can compress it), in whole
/// blocks of 1 MiB.
pub fn write_file(path: &Path, len: usize) {
    let mut file = File::create(path).expect("create the download file");
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..len / block.len() {
        for byte in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        file.write_all(&block).expect("write the download file");
    }
}

/// The median of some samples.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Cores and kernel, printed with the figures: they mean nothing without the machine.
pub fn machine() -> String {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: {cores} cores, Linux {}", kernel.trim())
}
