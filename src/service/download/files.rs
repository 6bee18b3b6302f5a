//! The served directory: opening requested files inside it, the open-file limit, the listing, and
//! the body of a download in progress.
//!
//! One [`Files`] is shared by the download listener and every download connection. It is behind an
//! `Arc` (and its listing cache behind a `Mutex`, never contended) although the loop has one
//! thread, so that a bound server can be handed to the thread that runs it. It holds the root open as a directory descriptor, so requests are
//! resolved by the kernel relative to it (see [`sys::open_beneath`]) and renaming the root's path
//! away cannot redirect them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::warn;

use super::request::Refusal;
use crate::buffer::write_ready;
use crate::config::Config;
use crate::service::Stream;
use crate::stats::{Metric, Stats};
use crate::sys::counted::{self, Call};
use crate::sys::{self, Opened, interrupted, would_block};

/// How long one rendering of the listing serves later `LIST` requests: walking a large tree is
/// disk I/O on the loop's only thread, so a burst of requests shares one walk.
const LISTING_TTL: Duration = Duration::from_secs(1);

/// The served root and what every download connection shares.
#[derive(Debug)]
pub struct Files {
    /// The root, opened as a directory: requests are resolved beneath this descriptor.
    dir: File,
    /// The root's canonical path, for the listing and for systems without `openat2`.
    path: PathBuf,
    max_open: usize,
    list_max: usize,
    serve_hidden: bool,
    /// How bodies are sent; `Copy` when `--no-sendfile` asks for the portable path.
    via: Via,
    stats: Arc<Stats>,
    /// The latest listing (header included) and when it was taken.
    listing: Mutex<Option<(Instant, Arc<[u8]>)>>,
}

impl Files {
    /// Opens the served root.
    ///
    /// # Errors
    /// The root does not exist, is not a directory, or cannot be read.
    pub fn open(config: &Config, stats: Arc<Stats>) -> io::Result<Files> {
        let path = std::fs::canonicalize(&config.root)?;
        let dir = File::open(&path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Files {
            dir,
            path,
            max_open: config.max_open_files,
            list_max: config.list_max,
            serve_hidden: config.serve_hidden,
            via: if config.no_sendfile {
                Via::Copy
            } else {
                Via::Sendfile
            },
            stats,
            listing: Mutex::new(None),
        })
    }

    /// The root's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether names with a component starting with `.` may be served.
    pub fn serve_hidden(&self) -> bool {
        self.serve_hidden
    }

    /// Opens a checked name for sending from `offset`.
    ///
    /// # Errors
    /// The refusal to report: 503 at the open-file limit, 404, 403 (outside the root, not a
    /// regular file, permissions), 416 for an offset past the end.
    pub fn open_file(&self, name: &str, offset: u64) -> Result<Transfer, Refusal> {
        if self.stats.get(Metric::OpenFiles) >= self.max_open as u64 {
            warn!(
                "download: {} files open (--max-open-files): refusing",
                self.max_open
            );
            return Err(Refusal::Busy);
        }
        let (file, size) = match sys::open_beneath(&self.dir, &self.path, name) {
            // The size is taken now: if the file grows, only this much is sent.
            Ok(Opened::Regular(file, size)) => (file, size),
            Ok(Opened::Missing) => return Err(Refusal::NotFound),
            Ok(Opened::Directory) => return Err(Refusal::Forbidden("is a directory")),
            Ok(Opened::Special) => return Err(Refusal::Forbidden("not a regular file")),
            Ok(Opened::Outside) => return Err(Refusal::Forbidden("outside the served root")),
            Ok(Opened::Denied) => return Err(Refusal::Forbidden("permission denied")),
            Err(e) => {
                warn!("download: cannot open {name:?}: {e}");
                return Err(Refusal::Forbidden("cannot be opened"));
            }
        };
        if offset > size {
            return Err(Refusal::OffsetPastEnd);
        }
        Ok(Transfer::new(
            file,
            offset,
            size,
            self.via,
            Arc::clone(&self.stats),
        ))
    }

    /// The `LIST` reply, header included: rendered at most once per `LISTING_TTL`.
    pub fn listing(&self, now: Instant) -> Arc<[u8]> {
        // Only the loop's thread locks it, so the lock is never contended nor poisoned by another
        // thread; a poisoned cache would only mean rendering afresh.
        let mut cached = self
            .listing
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match &*cached {
            Some((taken, bytes)) if now.duration_since(*taken) < LISTING_TTL => Arc::clone(bytes),
            _ => {
                let bytes: Arc<[u8]> =
                    super::listing::render(&self.path, self.list_max, self.serve_hidden).into();
                *cached = Some((now, Arc::clone(&bytes)));
                bytes
            }
        }
    }
}

/// How a body's bytes leave: straight from the page cache, or copied through the scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `sendfile(2)`, through [`Stream::send_file`]: no copy through user space. A stream or
    /// file system without it answers `Unsupported`, and the transfer goes on with `Copy`.
    Sendfile,
    /// `pread` into the loop's scratch buffer, then `write`. Bytes the socket refuses are read
    /// again next time, so the connection holds no buffer of its own.
    Copy,
}

/// How far one [`Transfer::send`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every byte was sent.
    Done,
    /// The socket is full: wait for writable.
    Blocked,
    /// The handler's budget is spent: the loop resumes the transfer after the rest of the batch.
    Yielded,
    /// The file ended before its size at open time: it shrank during the transfer.
    Truncated,
}

/// A file being sent. Its place in the open-file count lasts exactly as long as this value, and
/// dropping it before the end counts an aborted download, whatever closed the connection.
#[derive(Debug)]
pub struct Transfer {
    file: File,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send: the file's size when it was opened.
    end: u64,
    /// Where the transfer started (the request's offset), and how many bytes the reply promised
    /// (`end - from` when the file was opened; `end` moves back if the file shrinks).
    from: u64,
    promised: u64,
    via: Via,
    stats: Arc<Stats>,
}

impl Transfer {
    fn new(file: File, pos: u64, end: u64, via: Via, stats: Arc<Stats>) -> Self {
        stats.add(Metric::OpenFiles, 1);
        Transfer {
            file,
            pos,
            end,
            from: pos,
            promised: end - pos,
            via,
            stats,
        }
    }

    /// Bytes sent so far, and bytes the reply promised (`OK <size>`, or the whole file in the
    /// bare form).
    pub fn progress(&self) -> (u64, u64) {
        (self.pos - self.from, self.promised)
    }

    /// Bytes still to send.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Sends until done, the socket is full, or the file turns out shorter than it was.
    ///
    /// # Errors
    /// A write error on the socket or a read error on the file.
    pub fn send(
        &mut self,
        socket: &mut impl Stream,
        scratch: &mut [u8],
        budget: &mut usize,
    ) -> io::Result<Progress> {
        while self.pos < self.end {
            if *budget == 0 {
                return Ok(Progress::Yielded);
            }
            let want = usize::try_from(self.remaining()).map_or(*budget, |left| left.min(*budget));
            let sent = match self.via {
                Via::Sendfile => socket.send_file(&self.file, &mut self.pos, want),
                Via::Copy => self.copy(socket, scratch, want),
            };
            match sent {
                Ok(0) => {
                    // What was sent is all there is: not an abort, a truncation.
                    self.end = self.pos;
                    return Ok(Progress::Truncated);
                }
                Ok(n) => {
                    let metric = match self.via {
                        Via::Sendfile => Metric::BodyBytesSendfile,
                        Via::Copy => Metric::BodyBytesCopied,
                    };
                    self.stats.add(metric, n as u64);
                    self.stats.add(Metric::BytesOut, n as u64);
                    *budget = budget.saturating_sub(n);
                }
                Err(e) if would_block(&e) => return Ok(Progress::Blocked),
                Err(e) if interrupted(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported && self.via == Via::Sendfile => {
                    self.via = Via::Copy;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Progress::Done)
    }

    /// One step of the portable path: read at `pos` into scratch, write what the socket takes.
    fn copy(
        &mut self,
        socket: &mut impl Stream,
        scratch: &mut [u8],
        want: usize,
    ) -> io::Result<usize> {
        let want = want.min(scratch.len());
        counted::count(Call::Pread64);
        let read = self.file.read_at(&mut scratch[..want], self.pos)?;
        if read == 0 {
            return Ok(0);
        }
        match write_ready(socket, &scratch[..read])? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            written => {
                self.pos += written as u64;
                Ok(written)
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stats.sub(Metric::OpenFiles, 1);
        if self.pos < self.end {
            self.stats.add(Metric::DownloadsAborted, 1);
        }
    }
}
