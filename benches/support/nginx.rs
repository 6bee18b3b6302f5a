//! nginx as a second download peer: Debian's package, started by the benchmark on a free loopback
//! port with a generated configuration, one process, `sendfile on; tcp_nopush on;`.
//!
//! The generator speaks readyloop's protocol: it sends `GET NAME\n` and reads `OK <size>\n`
//! before the body. nginx answers a request line with no HTTP version (`GET /big.bin`, HTTP/0.9)
//! with the file alone, no headers. So the downloaded file starts with its own `OK <size of the
//! rest>\n` line ([`write_reply_head`]): asked for `/big.bin`, nginx sends exactly the reply the
//! generator expects, and readyloop and tokio send that line as the first bytes of an ordinary
//! body. Same generator, same file, same page cache.
//!
//! It runs as one process (`master_process off`): the process that starts is the one that serves,
//! so its CPU time is nginx's whole cost, it can be pinned like the other servers, and it never
//! changes user (as a master does for its workers), so it can read the benchmark's private
//! temporary directory. Without nginx installed, [`Nginx::start`] says so and the benchmark leaves
//! nginx out.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where nginx may be: on the `PATH`, or where Debian installs it (`/usr/sbin`, often not on a
/// user's `PATH`).
const CANDIDATES: [&str; 3] = ["nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx"];

/// How long nginx has to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running nginx, stopped when dropped.
pub struct Nginx {
    /// The port it serves on.
    pub addr: SocketAddr,
    /// Its process id, for `/proc/<pid>`.
    pub pid: u32,
    /// What `nginx -v` says, for the report.
    pub version: String,
    child: Child,
    /// Configuration, pid file, error log and temporary directories.
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx serving `root`, pinned to `pin` if given, and checks that it answers `GET
    /// /<name>` with the `OK` line of [`write_reply_head`].
    ///
    /// # Errors
    /// Why there is no nginx to measure: not installed, failed to start, or answered otherwise.
    pub fn start(root: &Path, name: &str, pin: Option<usize>) -> Result<Nginx, String> {
        let (binary, version) = CANDIDATES
            .iter()
            .find_map(|candidate| {
                let out = Command::new(candidate).arg("-v").output().ok()?;
                let said = String::from_utf8_lossy(&out.stderr);
                out.status
                    .success()
                    .then(|| (candidate, said.trim().replace("nginx version: ", "")))
            })
            .ok_or("nginx is not installed (Debian: apt-get install nginx)")?;
        let prefix = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        // A port the kernel just handed out and took back: free, unless something else grabs it
        // in the next few milliseconds, in which case nginx says so and is left out.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port: {e}"))?;
        let config = prefix.path().join("nginx.conf");
        std::fs::write(&config, configuration(prefix.path(), root, addr))
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let error_log = prefix.path().join("error.log");
        let child = Command::new(binary)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e}"))?;
        let mut nginx = Nginx {
            addr,
            pid: child.id(),
            version,
            child,
            _prefix: prefix,
        };
        let log = || std::fs::read_to_string(&error_log).unwrap_or_default();
        nginx
            .wait_until_serving(name)
            .map_err(|why| format!("{binary} {why}; its error log: {:?}", log().trim()))?;
        if let Some(core) = pin {
            pin_process(nginx.pid, core).map_err(|e| format!("cannot pin nginx: {e}"))?;
        }
        Ok(nginx)
    }

    /// Waits until nginx accepts connections, then asks for `/<name>` once and checks the line
    /// that comes first.
    fn wait_until_serving(&mut self, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited at start ({status})"));
            }
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    // Polling a port that is not open yet: nothing to wait on but time.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("did not listen on {} within 5 s: {e}", self.addr)),
            }
        };
        let probe = || -> std::io::Result<String> {
            stream.set_read_timeout(Some(START_TIMEOUT))?;
            (&stream).write_all(format!("GET /{name}\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(&stream).take(64).read_line(&mut line)?;
            Ok(line)
        };
        match probe() {
            Ok(line) if line.starts_with("OK ") => Ok(()),
            Ok(line) => Err(format!(
                "answered `GET /{name}` with {line:?}, not an OK line"
            )),
            Err(e) => Err(format!("did not answer `GET /{name}`: {e}")),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: one process in the foreground, every path inside `prefix`, `root` served
/// on `addr` with sendfile, no access log (readyloop writes none by default either).
fn configuration(prefix: &Path, root: &Path, addr: SocketAddr) -> String {
    let at = |name: &str| -> PathBuf { prefix.join(name) };
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {error_log} error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {temp};
    proxy_temp_path {temp};
    fastcgi_temp_path {temp};
    uwsgi_temp_path {temp};
    scgi_temp_path {temp};
    server {{
        listen {addr};
        root {root};
    }}
}}
",
        pid = at("nginx.pid").display(),
        error_log = at("error.log").display(),
        temp = prefix.display(),
        root = root.display(),
    )
}

/// Overwrites the start of the file at `path` with `OK <rest>\n`, where `<rest>` is the number of
/// bytes after that line: nginx's HTTP/0.9 reply is then exactly readyloop's `GET` reply.
///
/// # Panics
/// The file cannot be opened or written: the benchmark cannot go on.
pub fn write_reply_head(path: &Path) {
    let file = File::options()
        .write(true)
        .open(path)
        .expect("open the download file");
    let len = file.metadata().expect("the download file's size").len();
    // For the sizes benchmarked (many MiB) the number is as wide with the line counted as
    // without it; the assertion checks.
    let width = format!("OK {len}\n").len() as u64;
    let head = format!("OK {}\n", len - width);
    assert_eq!(head.len() as u64, width, "the head line changed width");
    file.write_all_at(head.as_bytes(), 0)
        .expect("write the download file's head line");
}

/// Pins every thread of process `pid` (nginx has one) to `core`.
fn pin_process(pid: u32, core: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it for a core below
    // CPU_SETSIZE, which is checked first; sched_setaffinity only reads the set.
    unsafe {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
