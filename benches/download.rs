//! Download throughput: readyloop's zero-copy body against plain read/write copy loops.
//!
//! Run with `cargo bench --bench download` (add `-- --quick` for a 32 MiB file and one round).
//!
//! Three servers run side by side in this process on loopback, serving the same 256 MiB file with
//! the same `GET` protocol:
//!
//! - `readyloop`: the real server, body sent with `sendfile(2)`;
//! - `readyloop --no-sendfile`: the same loop, body copied through its scratch buffer;
//! - `copy loop`: a thread per connection doing `read` into a buffer and `write_all`, the way a
//!   first server is usually written (no `std::io::copy`, which would use `sendfile` itself).
//!
//! For 1 and 16 parallel downloads, each server is measured in turn, round after round, and the
//! table shows each one's median MB/s and the ratio readyloop / copy loop. The clients read into a
//! buffer and discard, and every download is checked against its announced size.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use readyloop::Config;
use support::{loopback_config, machine, median, start_readyloop, write_file};

mod support;

/// Parallel downloads per measurement.
const CONCURRENCY: [usize; 2] = [1, 16];

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (file_len, rounds) = if quick { (32 << 20, 1) } else { (256 << 20, 5) };
    let root = tempfile::tempdir().expect("a temporary directory");
    let path = root.path().join("big.bin");
    write_file(&path, file_len);

    let servers = [
        ("readyloop", readyloop(root.path(), false)),
        ("readyloop --no-sendfile", readyloop(root.path(), true)),
        ("copy loop", start_copy_loop(root.path().to_path_buf())),
    ];
    println!(
        "download of a {} MiB file over loopback, {rounds} round(s), median MB/s",
        file_len >> 20
    );
    println!("{}", machine());
    println!(
        "{:>11} | {:>10} | {:>23} | {:>10} | {:>22}",
        "parallel", "readyloop", "readyloop --no-sendfile", "copy loop", "readyloop / copy loop"
    );
    for concurrency in CONCURRENCY {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        for _ in 0..rounds {
            for (i, (_, addr)) in servers.iter().enumerate() {
                samples[i].push(measure(*addr, concurrency, file_len as u64));
            }
        }
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        println!(
            "{concurrency:>11} | {:>10.0} | {:>23.0} | {:>10.0} | {:>21.2}x",
            medians[0],
            medians[1],
            medians[2],
            medians[0] / medians[2]
        );
    }
}

/// Starts readyloop in-process with the given root; returns its download address.
fn readyloop(root: &Path, no_sendfile: bool) -> SocketAddr {
    let config = Config {
        root: root.to_path_buf(),
        no_sendfile,
        ..loopback_config()
    };
    start_readyloop(config)
        .addresses
        .files
        .expect("files is on")
}

/// The peer: a blocking server, one thread per connection, copying through a 64 KiB buffer.
fn start_copy_loop(root: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("the copy loop binds");
    let addr = listener.local_addr().unwrap();
    let root = Arc::new(root);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = Arc::clone(&root);
            thread::spawn(move || copy_loop_serve(stream, &root));
        }
    });
    addr
}

fn copy_loop_serve(stream: TcpStream, root: &Path) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let name = line.trim_end().strip_prefix("GET ")?;
    let mut file = File::open(root.join(name)).ok()?;
    let mut stream = stream;
    writeln!(stream, "OK {}", file.metadata().ok()?.len()).ok()?;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(());
        }
        stream.write_all(&buf[..n]).ok()?;
    }
}

/// Runs `concurrency` parallel downloads of the file; returns the aggregate MB/s.
fn measure(addr: SocketAddr, concurrency: usize, file_len: u64) -> f64 {
    let start = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| thread::spawn(move || download(addr, file_len)))
        .collect();
    for client in clients {
        client.join().expect("a download thread");
    }
    let seconds = start.elapsed().as_secs_f64();
    (concurrency as u64 * file_len) as f64 / seconds / 1e6
}

/// Downloads `big.bin` and checks its length.
fn download(addr: SocketAddr, file_len: u64) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(b"GET big.bin\n")
        .expect("send the request");
    let mut buf = vec![0; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = stream.read(&mut buf).expect("read the body");
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let header = format!("OK {file_len}\n").len() as u64;
    assert_eq!(received, header + file_len, "short download from {addr}");
}
