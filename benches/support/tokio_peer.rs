//! The peer readyloop is measured against: the tokio server a reader would write for the same
//! echo and `GET` protocols.
//!
//! It runs a current-thread runtime on one std thread of its own, so that, like readyloop, one
//! thread does all the socket work and its CPU time can be read from `/proc` by thread id. Each
//! connection is one task, written the way tokio's own examples write them (`examples/echo.rs`:
//! a buffer per task, `read`, `write_all`). It leaves out what a benchmark does not exercise:
//! `LIST`, the bare request form, request grace, lingering close, limits and stats.
//!
//! The chat relay ([`chat_relay`]) is the loop the issue compares against: receive one datagram,
//! send its line to every member of the sender's room (awaiting each send), then receive the
//! next. It speaks as much of readyloop's protocol as `readyloop bench chat` uses: a new address
//! joins `lobby`, `/join ROOM` answers `* you joined ROOM (N others here)`, `/leave` leaves, any
//! other command is ignored, and text goes to the room as `<ip:port>: <text>`, the sender
//! included.
//!
//! Download bodies are copied with an explicit read/write loop through a 64 KiB buffer, in one of
//! two ways (see [`Body`]): through `tokio::fs::File`, which is what the tokio documentation
//! offers, or through a `std::fs::File` read inside the task, which costs only the copy.

use std::collections::HashMap;
use std::io::{self, Read, SeekFrom};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Bytes per read of a download body: the buffer size of the copy loops in `benches/download.rs`.
const COPY_BUFFER: usize = 64 * 1024;

/// Bytes per read of an echo connection: tokio's `examples/echo.rs` reads into `vec![0; 1024]`.
const ECHO_BUFFER: usize = 1024;

/// Longest request line accepted, as readyloop's 4 096-byte limit.
const MAX_REQUEST: u64 = 4096;

/// Name of the threads of the peer's blocking pool, where `tokio::fs` reads run: 15 bytes, so
/// `/proc/self/task/<tid>/comm` shows it whole and [`TokioPeer::threads`] can find them.
const POOL_THREAD_NAME: &str = "tokio-peer-pool";

/// How the `GET` service reads the file it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `tokio::fs::File`: every read is handed to the blocking thread pool and back. This is the
    /// idiomatic form, and its hand-offs are part of its cost.
    TokioFs,
    /// `std::fs::File` read inside the task: a read from the page cache does not block for long,
    /// so this pays only for copying the bytes through user space.
    StdFs,
}

/// A running tokio peer.
#[derive(Debug, Clone, Copy)]
pub struct TokioPeer {
    /// The echo service.
    pub echo: SocketAddr,
    /// The `GET` service reading through `tokio::fs` ([`Body::TokioFs`]).
    pub files: SocketAddr,
    /// The `GET` service reading through `std::fs` ([`Body::StdFs`]).
    pub files_std: SocketAddr,
    /// The UDP chat relay.
    pub chat: SocketAddr,
    /// The runtime thread's kernel id, for `/proc/self/task/<tid>`.
    pub tid: i32,
}

impl TokioPeer {
    /// The kernel ids of every thread doing the peer's work: the runtime thread, then the
    /// threads of its blocking pool (where `tokio::fs` reads run) that exist now.
    pub fn threads(&self) -> Vec<i32> {
        let mut tids = vec![self.tid];
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return tids;
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == POOL_THREAD_NAME {
                tids.extend(
                    task.file_name()
                        .to_str()
                        .and_then(|t| t.parse::<i32>().ok()),
                );
            }
        }
        tids
    }
}

/// Starts the peer on 127.0.0.1 with ports chosen by the kernel, serving files beneath `root`,
/// on a new thread that runs until the process ends; `pin` pins that thread to a core.
///
/// # Panics
/// The runtime cannot be built or a port cannot be bound: a benchmark cannot go on without them.
pub fn start_tokio_peer(root: PathBuf, pin: Option<usize>) -> TokioPeer {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("tokio-peer".into())
        .spawn(move || {
            if let Some(core) = pin {
                // Threads spawned later (tokio's blocking pool) inherit this affinity.
                if let Err(e) = readyloop::sys::pin_to_core(core) {
                    eprintln!("tokio peer: cannot pin to core {core}: {e}");
                }
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .thread_name(POOL_THREAD_NAME)
                // Pool threads normally exit after 10 s idle; a thread that exits between two
                // readings of the peer's CPU time would take its share with it.
                .thread_keep_alive(Duration::from_secs(24 * 3600))
                .build()
                .expect("a tokio runtime");
            runtime.block_on(serve(Arc::new(root), tx))
        })
        .expect("the tokio peer thread starts");
    rx.recv().expect("the tokio peer binds")
}

/// Binds the three services, reports them, and serves forever.
async fn serve(root: Arc<PathBuf>, ready: mpsc::Sender<TokioPeer>) {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (echo, files, files_std) = (bind().await, bind().await, bind().await);
    let (echo, files, files_std) = (
        echo.expect("bind echo"),
        files.expect("bind files"),
        files_std.expect("bind files"),
    );
    let chat = UdpSocket::bind("127.0.0.1:0").await.expect("bind chat");
    let addr = |listener: &TcpListener| listener.local_addr().expect("a bound address");
    let _ = ready.send(TokioPeer {
        echo: addr(&echo),
        files: addr(&files),
        files_std: addr(&files_std),
        chat: chat.local_addr().expect("a bound address"),
        // SAFETY: gettid has no preconditions; this is the runtime's only thread.
        tid: unsafe { libc::gettid() },
    });
    let files_std_root = Arc::clone(&root);
    tokio::join!(
        accept_loop(echo, |stream| async move {
            let _ = echo_connection(stream).await;
        }),
        accept_loop(files, move |stream| {
            let root = Arc::clone(&root);
            async move {
                let _ = get_connection(stream, &root, Body::TokioFs).await;
            }
        }),
        accept_loop(files_std, move |stream| {
            let root = Arc::clone(&files_std_root);
            async move {
                let _ = get_connection(stream, &root, Body::StdFs).await;
            }
        }),
        chat_relay(chat),
    );
}

/// Accepts forever, one task per connection.
async fn accept_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handler(stream));
            }
            // Out of descriptors, for example: the connection waits in the backlog.
            Err(e) => eprintln!("tokio peer: accept failed: {e}"),
        }
    }
}

/// The chat relay: one datagram at a time, its whole fan-out sent before the next is received.
async fn chat_relay(socket: UdpSocket) {
    const LOBBY: &str = "lobby";
    let mut rooms: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut members: HashMap<SocketAddr, String> = HashMap::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        // Errors here are ICMP reports for earlier sends: that peer's concern only.
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let text = text.trim_end_matches(['\r', '\n']);
        if let std::collections::hash_map::Entry::Vacant(entry) = members.entry(from) {
            entry.insert(LOBBY.to_string());
            rooms.entry(LOBBY.to_string()).or_default().push(from);
        }
        let leave = |rooms: &mut HashMap<String, Vec<SocketAddr>>, room: &str| {
            if let Some(list) = rooms.get_mut(room) {
                list.retain(|m| *m != from);
            }
        };
        if let Some(room) = text.strip_prefix("/join ") {
            let room = room.trim();
            let old = members.insert(from, room.to_string()).unwrap_or_default();
            let reply = if old == room {
                format!("* you are already in {room}\n")
            } else {
                leave(&mut rooms, &old);
                let list = rooms.entry(room.to_string()).or_default();
                list.push(from);
                format!("* you joined {room} ({} others here)\n", list.len() - 1)
            };
            let _ = socket.send_to(reply.as_bytes(), from).await;
        } else if text == "/leave" {
            if let Some(old) = members.remove(&from) {
                leave(&mut rooms, &old);
            }
        } else if !text.starts_with('/') && !text.trim().is_empty() {
            let line = format!("{from}: {text}\n");
            let room = &members[&from];
            for &member in rooms.get(room).into_iter().flatten() {
                let _ = socket.send_to(line.as_bytes(), member).await;
            }
        }
    }
}

/// RFC 862: sends back every byte until the client closes.
async fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0; ECHO_BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// `GET <name> [offset]`: `OK <size>\n`, the file from `offset`, then close.
async fn get_connection(mut stream: TcpStream, root: &Path, body: Body) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new((&mut stream).take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let Some((path, offset)) = parse_get(&line, root) else {
        return stream.write_all(b"ERR 400 bad request\n").await;
    };
    let mut buf = vec![0; COPY_BUFFER];
    match body {
        Body::TokioFs => {
            let Ok(mut file) = tokio::fs::File::open(&path).await else {
                return stream.write_all(b"ERR 404 no such file\n").await;
            };
            let size = file.metadata().await?.len();
            if offset > size {
                return stream.write_all(b"ERR 416 offset past the end\n").await;
            }
            file.seek(SeekFrom::Start(offset)).await?;
            stream
                .write_all(format!("OK {}\n", size - offset).as_bytes())
                .await?;
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        Body::StdFs => {
            use std::io::Seek;
            let Ok(mut file) = std::fs::File::open(&path) else {
                return stream.write_all(b"ERR 404 no such file\n").await;
            };
            let size = file.metadata()?.len();
            if offset > size {
                return stream.write_all(b"ERR 416 offset past the end\n").await;
            }
            file.seek(SeekFrom::Start(offset))?;
            stream
                .write_all(format!("OK {}\n", size - offset).as_bytes())
                .await?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
    }
}

/// The file a `GET` line names, beneath `root`, and the offset; `None` for anything else,
/// including names that climb out of the root.
fn parse_get(line: &str, root: &Path) -> Option<(PathBuf, u64)> {
    let request = line.trim_end().strip_prefix("GET ")?;
    let (name, offset) = match request.rsplit_once(' ') {
        Some((name, offset)) if offset.bytes().all(|b| b.is_ascii_digit()) => {
            (name, offset.parse().ok()?)
        }
        _ => (request, 0),
    };
    let name = Path::new(name);
    let confined = name
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (confined && !name.as_os_str().is_empty()).then(|| (root.join(name), offset))
}
