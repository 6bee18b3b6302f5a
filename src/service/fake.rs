//! The test doubles of the state-machine tests: a scripted socket, and the loop's side of a call.
//!
//! Every connection kind runs on a [`Stream`], so its tests drive it with a [`Fake`] and no network
//! at all: each read, write and FIN is decided by the test, including the answers a real socket
//! gives only under load (`WouldBlock`, `Interrupted`, a short write, a reset). What the loop hands
//! a handler besides its socket (settings, counters, the scratch buffer, the clock, the access-log
//! notes) is a [`Harness`], which builds the [`Context`] of each call as the loop does. Shared by
//! the echo, download, admin and chat tests; the server never builds either.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Token;

use super::{Context, FAIR_SHARE, Next, Settings, Stream};
use crate::access::Notes;
use crate::buffer::Watermarks;
use crate::stats::{CloseReason, Stats};

/// What the fake socket answers to the next read.
pub(crate) enum Input {
    Bytes(Vec<u8>),
    Fin,
    Fail(io::ErrorKind),
}

/// A socket whose input is a script and whose send buffer takes `window` more bytes.
#[derive(Default)]
pub(crate) struct Fake {
    /// Empty means `WouldBlock`.
    pub(crate) input: VecDeque<Input>,
    pub(crate) output: Vec<u8>,
    pub(crate) window: usize,
    pub(crate) write_error: Option<io::ErrorKind>,
    pub(crate) fin_sent: bool,
    /// Answer the next read or write with `Interrupted` first.
    pub(crate) interrupt: bool,
    /// Take [`Stream::send_file`] as a kernel with `sendfile(2)` does, under the same window,
    /// errors and interruptions as a write; otherwise it answers `Unsupported`, as the default.
    pub(crate) zero_copy: bool,
    /// The connection asked for its close to be a reset.
    pub(crate) reset: bool,
}

impl Fake {
    pub(crate) fn with_input(chunks: &[&[u8]]) -> Self {
        Fake {
            input: chunks.iter().map(|c| Input::Bytes(c.to_vec())).collect(),
            window: usize::MAX,
            ..Fake::default()
        }
    }
}

impl Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.interrupt) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        match self.input.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Input::Fin) => {
                self.input.push_front(Input::Fin);
                Ok(0)
            }
            Some(Input::Fail(kind)) => Err(kind.into()),
            Some(Input::Bytes(bytes)) => {
                // Like a kernel receive buffer: one read takes everything queued, up to `buf`.
                self.input.push_front(Input::Bytes(bytes));
                let mut n = 0;
                while let Some(Input::Bytes(bytes)) = self.input.front_mut() {
                    let take = bytes.len().min(buf.len() - n);
                    buf[n..n + take].copy_from_slice(&bytes[..take]);
                    n += take;
                    if take < bytes.len() {
                        bytes.drain(..take);
                        break;
                    }
                    self.input.pop_front();
                }
                Ok(n)
            }
        }
    }
}

impl Write for Fake {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.interrupt) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = self.write_error {
            return Err(kind.into());
        }
        assert!(!self.fin_sent, "wrote after FIN");
        let n = buf.len().min(self.window);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.window -= n;
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Fake {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.fin_sent = true;
        Ok(())
    }

    fn reset_on_close(&mut self) -> io::Result<()> {
        self.reset = true;
        Ok(())
    }

    fn send_file(&mut self, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
        if !self.zero_copy {
            return Err(io::ErrorKind::Unsupported.into());
        }
        if std::mem::take(&mut self.interrupt) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = self.write_error {
            return Err(kind.into());
        }
        assert!(!self.fin_sent, "sent a file after FIN");
        let want = count.min(self.window);
        if want == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut bytes = vec![0; want];
        let n = file.read_at(&mut bytes, *offset)?;
        self.window -= n;
        self.output.extend_from_slice(&bytes[..n]);
        *offset += n as u64;
        Ok(n)
    }
}

/// The loop's side of one connection under test: what it hands a handler besides the socket.
///
/// `K` is what the kind under test needs besides, if anything (the download's served root, the
/// chat's configuration). Each test file names its own `Harness` type with its `K`, and gives it
/// the constructor and the connection maker of its kind; what is here is what they all share.
pub(crate) struct Harness<K> {
    pub(crate) settings: Settings,
    /// Shared, so that what the kind under test counts on its own (the download's open files)
    /// lands in the same counters.
    pub(crate) stats: Arc<Stats>,
    /// The loop's one read buffer, lent to each call.
    pub(crate) scratch: Vec<u8>,
    /// The loop's clock: a test moves it to reach a deadline, never sleeps.
    pub(crate) now: Instant,
    /// The event being handled reported the peer's FIN (so a short read proves nothing).
    pub(crate) hangup: bool,
    /// The access log's notes on the connection, handed to every call once
    /// [`log_access`](Harness::log_access) turns them on; `None`, as with `--access-log` off.
    pub(crate) notes: Option<Notes>,
    /// What the kind under test needs besides.
    pub(crate) kind: K,
}

impl<K> Harness<K> {
    /// The loop's side for a connection of `kind`. Water marks are tiny (high 16, low 8) so a few
    /// bytes reach them, and the scratch buffer is 64 bytes so a longer input or body takes several
    /// steps. The timeouts are far apart (request grace 50 ms, linger 2 s, idle and admin
    /// timeouts 10 s), so a test that moves the clock to one deadline does not reach the next by
    /// accident. A test file that needs another value sets it on the harness it gets.
    pub(crate) fn of(kind: K) -> Self {
        Harness {
            settings: Settings {
                marks: Watermarks { high: 16, low: 8 },
                idle_timeout: Duration::from_secs(10),
                linger: Duration::from_secs(2),
                request_grace: Duration::from_millis(50),
                admin_timeout: Duration::from_secs(10),
                access_log: false,
            },
            stats: Arc::new(Stats::default()),
            scratch: vec![0; 64],
            now: Instant::now(),
            hangup: false,
            notes: None,
            kind,
        }
    }

    /// What the loop hands a handler for one call: the whole [`FAIR_SHARE`] as budget, and a short
    /// read proving the socket drained unless the event reported a hang-up.
    pub(crate) fn ctx(&mut self) -> Context<'_> {
        Context {
            now: self.now,
            token: Token(0),
            settings: &self.settings,
            stats: &self.stats,
            scratch: &mut self.scratch,
            budget: FAIR_SHARE,
            short_read_drains: !self.hangup,
            access: self.notes.as_mut(),
            // The chat bus's exchange concerns the relay and its links, tested with their own.
            bus: None,
        }
    }

    /// Turns the access log on for the connection, as the loop does for each client of `service`
    /// under `--access-log`: from now on every call is handed the same notes, to fill in.
    pub(crate) fn log_access(&mut self, service: &'static str) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        self.settings.access_log = true;
        self.notes = Some(Notes::new(service, peer));
    }
}

/// What a handler returns to have its connection closed for `reason`.
pub(crate) fn close(reason: CloseReason) -> Next {
    ControlFlow::Break(reason)
}
