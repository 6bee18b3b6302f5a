//! A scripted socket for the state-machine tests: its input is a list of answers, its send buffer
//! a window of bytes.
//!
//! Every connection kind runs on a [`Stream`], so its tests drive it with a [`Fake`] and no network
//! at all: each read, write and FIN is decided by the test, including the answers a real socket
//! gives only under load (`WouldBlock`, `Interrupted`, a short write, a reset). Shared by the echo
//! and download tests; the server never builds one.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::Stream;

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
