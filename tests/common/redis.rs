//! A real `redis-server` for the chat bus's tests: started on a free port of `127.0.0.1` with
//! nothing saved to disk, killed on drop; it can be killed and started again on the same port
//! mid-test. Every wait on it is bounded.
//!
//! The tests need Debian's `redis-server` (`.ci/run` installs it); without it they fail saying
//! how to get it, rather than skipping and passing without having tested anything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use readyloop::config::ChatBus;
use tempfile::TempDir;

use super::IO_TIMEOUT;

/// How long Redis may take to start answering: it starts in milliseconds; a machine busy with
/// other builds may take a good part of a second.
const START: Duration = Duration::from_secs(10);

/// A `redis-server` child process of the test.
pub struct Redis {
    child: Option<Child>,
    addr: SocketAddr,
    /// Its working directory: it writes nothing there (no RDB, no AOF), but must have one.
    dir: TempDir,
}

impl Redis {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// If `redis-server` is not installed (saying how to install it), or does not answer in time.
    #[track_caller]
    pub fn start() -> Redis {
        // A port the kernel just gave out and took back: free, barring a very unlucky race.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port");
        let mut redis = Redis {
            child: None,
            addr,
            dir: tempfile::tempdir().expect("a directory for redis-server"),
        };
        redis.restart();
        redis
    }

    /// Where it listens, as `--chat-bus` names it.
    pub fn bus(&self) -> ChatBus {
        ChatBus {
            addr: self.addr,
            db: 0,
        }
    }

    /// Kills it at once (SIGKILL): every connection to it breaks, as when its host dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // SIGKILL cannot be ignored: this wait is immediate.
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty, and waits until it answers `PING`.
    #[track_caller]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.addr.port().to_string();
        let spawned = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.child = Some(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: the chat bus tests need a real Redis \
                 (Debian: apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
        let deadline = Instant::now() + START;
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING within {START:?}",
                self.addr
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends the command `args` and returns the raw reply, for a test that looks at what the
    /// servers left in Redis.
    #[track_caller]
    pub fn command(&self, args: &[&str]) -> String {
        let mut resp = format!("*{}\r\n", args.len());
        for arg in args {
            resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis-server");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(resp.as_bytes()).unwrap();
        let mut buf = vec![0; 64 * 1024];
        let n = stream.read(&mut buf).expect("a reply from redis-server");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
