//! A blocking client for readyloop's download port. Run it from the repository root with
//! `cargo run --release --example download -- HOST:PORT NAME [-o FILE] [--continue]` or
//! `cargo run --release --example download -- HOST:PORT --list`.
//!
//! It speaks the `GET <name> <offset>` and `LIST` forms of the protocol (`docs/PROTOCOL.md`):
//! one request per connection, a status line (`OK <size>` or `ERR <code> <reason>`), then the
//! body until the server closes. Plain `std::net` with timeouts, because a client that makes one
//! transfer at a time has no use for a readiness loop. It leaves out retries and parallel ranges:
//! running it again with `--continue` is the whole recovery story.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// How long to wait for the TCP handshake: a reachable server answers in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may stay silent before we give up, so the client never hangs forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest status line accepted, in bytes before its `\n`: the server's own request limit.
const MAX_STATUS: usize = 4096;
/// Longest listing line accepted, in bytes: a name `GET` accepts (≤ 4 096 bytes) plus its size.
const MAX_LIST_LINE: usize = MAX_STATUS + 32;

/// Fetch a file from a readyloop download port, or list the files it serves.
#[derive(Parser)]
struct Args {
    /// The server's download port, e.g. 127.0.0.1:7890.
    #[arg(value_name = "HOST:PORT")]
    addr: String,
    /// The file to fetch, relative to the server's root.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Where to save it [default: the name's last component, in the current directory].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Resume: keep the output file and fetch only the bytes it is missing.
    #[arg(long = "continue")]
    resume: bool,
    /// Print the server's files, `<size> <name>` per line, instead of fetching one.
    #[arg(long, conflicts_with_all = ["name", "output", "resume"])]
    list: bool,
}

/// Everything that can go wrong, each worded so the operator knows what to do next.
#[derive(Debug)]
enum Error {
    /// clap accepted the command line but the protocol cannot express it (exit code 2).
    Usage(String),
    /// No connection could be made to (the address, why).
    Connect(String, io::Error),
    /// The connection to (the address) broke, or went silent for [`READ_TIMEOUT`].
    Network(String, io::Error),
    /// (The address) answered with (an `ERR <code> <reason>` line).
    Refused(String, String),
    /// (The address) broke the protocol in (this way).
    Protocol(String, String),
    /// The server closed after `got` of the announced `size` bytes; `path` keeps them.
    ShortRead { got: u64, size: u64, path: PathBuf },
    /// The server reset the connection after `got` of the announced `size` bytes: it gave up on
    /// the download (the file shrank, or it was shutting down); `path` keeps what arrived.
    Cut { got: u64, size: u64, path: PathBuf },
    /// The output file (path) could not be opened or written.
    File(PathBuf, io::Error),
    /// Standard output is gone, e.g. after `--list | head`.
    Stdout(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use io::ErrorKind::{TimedOut, WouldBlock};
        match self {
            Error::Usage(why) => write!(f, "{why}"),
            Error::Connect(addr, e) => write!(f, "cannot connect to {addr}: {e}"),
            // An expired read timeout is WouldBlock on Unix and TimedOut on Windows.
            Error::Network(addr, e) if matches!(e.kind(), WouldBlock | TimedOut) => {
                let secs = READ_TIMEOUT.as_secs();
                write!(f, "{addr} sent nothing for {secs} s; giving up")
            }
            Error::Network(addr, e) => write!(f, "connection to {addr} failed: {e}"),
            Error::Refused(addr, reply) if reply.starts_with("ERR 416") => write!(
                f,
                "{addr} answered {reply}: the local file is longer than the remote one, \
                 so run again without --continue"
            ),
            Error::Refused(addr, reply) => write!(f, "{addr} answered {reply}"),
            Error::Protocol(addr, what) => write!(f, "{addr} {what}"),
            Error::ShortRead { got, size, path } => write!(
                f,
                "short read: got {got} of {size} bytes; {} keeps them, run again with \
                 --continue to fetch the rest",
                path.display()
            ),
            Error::Cut { got, size, path } => write!(
                f,
                "the server cut the download short (connection reset) after {got} of {size} \
                 bytes; {} keeps them, run again with --continue to fetch the rest",
                path.display()
            ),
            Error::File(path, e) => write!(f, "cannot write {}: {e}", path.display()),
            Error::Stdout(e) => write!(f, "cannot write the listing to standard output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// One request on one connection: the reply stream, and the server's address for messages.
struct Exchange {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl Exchange {
    /// Connects to `addr` and sends `request` and its `\n`.
    fn start(addr: &str, request: &str) -> Result<Self, Error> {
        let connect_error = |e| Error::Connect(addr.into(), e);
        let network_error = |e| Error::Network(addr.into(), e);
        // `localhost` may resolve to both ::1 and 127.0.0.1, and the server may listen on one.
        let mut connected = Err(io::Error::new(io::ErrorKind::NotFound, "no address found"));
        for candidate in addr.to_socket_addrs().map_err(connect_error)? {
            connected = TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT);
            if connected.is_ok() {
                break;
            }
        }
        let mut stream = connected.map_err(connect_error)?;
        // Only the reply needs a timeout: a few bytes fit in a fresh socket's send buffer.
        let timeout = stream.set_read_timeout(Some(READ_TIMEOUT));
        let sent = timeout.and_then(|()| stream.write_all(format!("{request}\n").as_bytes()));
        sent.map_err(network_error)?;
        let (addr, reader) = (addr.into(), BufReader::new(stream));
        Ok(Exchange { addr, reader })
    }

    /// Reads the status line: the number in `OK <n>`, or the `ERR` line as an error.
    fn status(&mut self) -> Result<u64, Error> {
        let line = self.line(MAX_STATUS)?;
        let line = line.ok_or_else(|| self.protocol("closed the connection without a reply"))?;
        let text = String::from_utf8_lossy(&line);
        if let Some(n) = text.strip_prefix("OK ").and_then(|n| n.parse().ok()) {
            Ok(n)
        } else if text.starts_with("ERR ") {
            Err(Error::Refused(self.addr.clone(), text.into()))
        } else {
            let what = format!("answered {text:?}: is that readyloop's download port?");
            Err(self.protocol(&what))
        }
    }

    /// Reads one line of at most `limit` bytes before its `\n`, and returns it without the `\n`;
    /// `None` when the server closed cleanly before the line began.
    fn line(&mut self, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        let mut line = Vec::new();
        // `take` bounds the read, so a server that never sends `\n` cannot fill our memory.
        let mut bounded = (&mut self.reader).take(limit as u64 + 1);
        if let Err(e) = bounded.read_until(b'\n', &mut line) {
            return Err(self.network(e));
        }
        match line.pop() {
            Some(b'\n') => Ok(Some(line)),
            None => Ok(None),
            Some(_) if line.len() >= limit => Err(self.protocol("sent an over-long line")),
            Some(_) => Err(self.protocol("closed the connection in the middle of a line")),
        }
    }

    fn network(&self, e: io::Error) -> Error {
        Error::Network(self.addr.clone(), e)
    }

    fn protocol(&self, what: &str) -> Error {
        Error::Protocol(self.addr.clone(), what.into())
    }
}

/// GET mode: fetches `name` into the output file; with `resume`, only what the file lacks.
fn get(addr: &str, name: &str, output: Option<PathBuf>, resume: bool) -> Result<(), Error> {
    if name.contains(['\n', '\r']) {
        return Err(Error::Usage("NAME cannot hold a line break".into()));
    }
    let derived = || Path::new(name).file_name().map(PathBuf::from);
    let no_name = || Error::Usage(format!("{name:?} ends in no file name; give -o FILE"));
    let path = output.or_else(derived).ok_or_else(no_name)?;
    let file_error = |e| Error::File(path.clone(), e);
    let offset = match fs::metadata(&path) {
        _ if !resume => 0,
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(file_error(e)),
    };

    // Always send the offset: without it, a name ending in ` <digits>` would be read as one.
    let mut server = Exchange::start(addr, &format!("GET {name} {offset}"))?;
    let size = server.status()?;
    if size == 0 && offset > 0 {
        eprintln!("{} is already complete ({offset} bytes)", path.display());
        return Ok(());
    }

    // Opened only now, so that a refused request never creates or truncates the file.
    let file = match offset {
        0 => File::create(&path),
        _ => OpenOptions::new().append(true).open(&path),
    };
    // ProgressBar::new draws on stderr, and draws nothing when stderr is not a terminal.
    let template = "{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    // Cannot fail: the template is a constant that uses only indicatif's own keys.
    let style = ProgressStyle::with_template(template).expect("valid progress template");
    let bar = ProgressBar::new(size).with_style(style);
    // Every byte written to `out` moves the bar.
    let mut out = bar.wrap_write(BufWriter::new(file.map_err(file_error)?));
    let received = receive(&mut server, &mut out, &path, size);
    // Flush even after a failure: the bytes that arrived are what --continue resumes from.
    let flushed = out.flush().map_err(file_error);
    if let Err(e) = received.and(flushed) {
        bar.abandon(); // leaves the bar on screen, showing where the transfer stopped
        return Err(e);
    }
    bar.finish_and_clear();
    let total = offset + size;
    eprintln!("saved {} ({total} bytes, {size} fetched)", path.display());
    Ok(())
}

/// Copies the body into `out` (writing to `path`) until EOF, which must come after exactly
/// `size` bytes.
fn receive(ex: &mut Exchange, out: &mut impl Write, path: &Path, size: u64) -> Result<(), Error> {
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    // The server closes after the body, so EOF is the only end marker: count every byte. A
    // download the server abandons ends in a reset instead (docs/PROTOCOL.md).
    loop {
        let n = match ex.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The server's way of saying "this is not all": a reset, never a clean end.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                let path = path.into();
                return Err(Error::Cut { got, size, path });
            }
            Err(e) => return Err(ex.network(e)),
        };
        got += n as u64;
        if got > size {
            return Err(ex.protocol(&format!("sent more than the announced {size} bytes")));
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::File(path.into(), e))?;
    }
    if got < size {
        let path = path.into();
        return Err(Error::ShortRead { got, size, path });
    }
    Ok(())
}

/// LIST mode: prints `<size> <name>` per served file, and checks the announced count.
fn list(addr: &str) -> Result<(), Error> {
    let mut server = Exchange::start(addr, "LIST")?;
    let count = server.status()?;
    let mut stdout = io::stdout().lock();
    let mut seen = 0;
    while let Some(mut line) = server.line(MAX_LIST_LINE)? {
        line.push(b'\n');
        stdout.write_all(&line).map_err(Error::Stdout)?;
        seen += 1;
    }
    stdout.flush().map_err(Error::Stdout)?;
    if seen != count {
        return Err(server.protocol(&format!("announced {count} files but listed {seen}")));
    }
    Ok(())
}

fn main() -> ExitCode {
    // On a usage error clap prints the problem and a hint, and exits with code 2 itself.
    let args = Args::parse();
    // clap insists on NAME unless --list is given, and refuses the two together.
    let result = match args.name {
        Some(name) => get(&args.addr, &name, args.output, args.resume),
        None => list(&args.addr),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("download: {e}");
            ExitCode::from(if matches!(e, Error::Usage(_)) { 2 } else { 1 })
        }
    }
}
