//! The operating system's edges: socket options and the error kinds the loop must tell apart.
//!
//! Everything that depends on what the kernel says or offers beyond `std` and mio lives here, so
//! the rest of the crate reads as portable logic: listener options, opening a file without leaving
//! the served root or blocking on a FIFO, and zero-copy `sendfile`. Errors are classified once, in this file, and every
//! read, write and accept loop asks the same questions: "is this the end of the drain?" (`would_block`),
//! "should I simply try again?" (`interrupted`), "did the peer go away?" (`peer_gone`).
//! [`process`] reads the process's own figures (memory, descriptors, CPU time) from `/proc`;
//! [`counted`] counts the system calls the loop makes, by kind.

pub mod counted;
pub mod process;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use mio::net::{TcpListener, UdpSocket};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Length of the kernel's queue of completed connections not yet accepted.
///
/// 1 024 absorbs a burst of connects between two passes of the loop; Linux silently caps it at
/// `net.core.somaxconn` (4 096 on current kernels).
const LISTEN_BACKLOG: i32 = 1024;

/// The socket has nothing more for us now: the edge-triggered drain is complete.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal arrived during the system call; nothing happened, so the call is simply repeated.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// The peer reset or abandoned the connection. That is the peer's business, not a server fault,
/// so such closes are logged at debug level only.
pub fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// `accept` failed for one queued connection because of the network under it (accept(2): "treat
/// them like EAGAIN by retrying"). The next queued connection may be fine, so the listener goes on.
pub fn network_hiccup(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENETDOWN
                | libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// `accept` failed because the process or the system ran out of a resource (file descriptors,
/// socket buffers). Retrying at once would fail again and spin the loop, so the listener backs off.
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether closing an endpoint's descriptor also takes it out of the poll set, so that the loop
/// can skip `epoll_ctl(EPOLL_CTL_DEL)`: one system call fewer per connection.
///
/// On Linux it holds for every endpoint readyloop has. epoll(7): a descriptor leaves the interest
/// list when every descriptor referring to its open file description has been closed, and each
/// endpoint (socket, signal pipe) holds the only one: nothing is `dup`ed, and no child process
/// inherits them (sockets are made close-on-exec, and the server starts none). The waker is
/// never closed while the loop runs. Elsewhere (kqueue also drops a closed descriptor's events,
/// but mio's other backends need not), the loop deregisters first, as mio's documentation asks.
pub const CLOSING_DEREGISTERS: bool = cfg!(target_os = "linux");

/// Sets `SO_LINGER` to zero, so that closing the socket sends RST instead of FIN: the peer's
/// next read fails with "connection reset" rather than ending as if everything had arrived.
///
/// # Errors
/// As `setsockopt(2)`.
pub fn reset_on_close(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_linger(Some(Duration::ZERO))
}

/// Opens a non-blocking TCP listener.
///
/// `SO_REUSEADDR` lets a restarted server bind while connections of the previous run sit in
/// `TIME_WAIT`; it does not let two live servers share a port. `reuse_port` (`--reuse-port`) adds
/// `SO_REUSEPORT`, which does: every process that binds the port with it gets a listener of its
/// own, and the kernel spreads new connections across them by a hash of the client's address,
/// the way nginx runs one worker per core.
///
/// # Errors
/// Any error of `socket`, `bind` or `listen`, for the caller to name the service and port.
pub fn tcp_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    share_port(&socket, reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Opens a non-blocking UDP socket, with `SO_REUSEPORT` when `reuse_port` is set: then the kernel
/// gives each process bound to the port the datagrams of a fixed share of source addresses, so
/// one chat member always reaches the same process.
///
/// # Errors
/// Any error of `socket` or `bind`, for the caller to name the service and port.
pub fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    share_port(&socket, reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// Sets `SO_REUSEPORT` when asked. Both sockets must set it, and belong to the same user, for
/// the kernel to let the second bind a port the first holds.
fn share_port(socket: &Socket, reuse_port: bool) -> io::Result<()> {
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(())
}

/// Limits the bytes a socket accepted from `listener` may hold *unsent* to `bytes`
/// (`TCP_NOTSENT_LOWAT`): past that, writes stop early and the socket reports writable again only
/// once less than half of it is left. Bytes sent and awaiting their ACK do not count, so the
/// limit holds back nothing the network could take now; it only keeps the queue behind it short.
///
/// Linux copies a listener's TCP options to every socket it accepts, so one call at start-up
/// covers every connection, at no cost per connection. Elsewhere it does nothing.
///
/// # Errors
/// As `setsockopt(2)`.
pub fn limit_unsent(listener: &impl AsFd, bytes: u32) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        SockRef::from(listener).set_tcp_notsent_lowat(bytes)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (listener, bytes);
        Ok(())
    }
}

/// Pins the calling thread to one CPU core, so that a benchmark's server and load generator do
/// not take turns on the same core. Off Linux it does nothing.
///
/// # Errors
/// The core does not exist or the kernel refused.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it for any
        // `core` below CPU_SETSIZE, which is checked first.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if core >= libc::CPU_SETSIZE as usize {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = core;
    Ok(())
}

/// CPU time the calling thread has used so far, user and system together; `None` if the system
/// would not say. `readyloop bench` reads it per generator thread to report its own cost.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill in.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec).ok()?;
    (result == 0).then(|| Duration::new(secs, nanos))
}

/// A one-shot timer that is a readiness source: registered with a `Poll` like a socket, it
/// becomes readable when it expires. `poll` itself waits in whole milliseconds (mio rounds a
/// timeout up), far too coarse for an open-loop generator sending every few microseconds; a
/// Linux `timerfd` expires within the kernel's timer slack, about 50 µs.
///
/// Elsewhere [`Timer::new`] fails with `Unsupported`, and the caller falls back on the poll
/// timeout.
#[derive(Debug)]
pub struct Timer {
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    /// A disarmed, non-blocking timer on the monotonic clock (the clock of `Instant`).
    ///
    /// # Errors
    /// As `timerfd_create(2)`; `Unsupported` off Linux.
    pub fn new() -> io::Result<Timer> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: plain system call; the descriptor it returns is owned by nothing else.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            Ok(Timer {
                fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            })
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Arms the timer to expire once, `after` from now (at once for zero), replacing any
    /// earlier setting and forgetting an expiry not yet read.
    ///
    /// # Errors
    /// As `timerfd_settime(2)`.
    pub fn set(&self, after: Duration) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            // A zero `it_value` would disarm the timer; a nanosecond expires at once.
            let after = after.max(Duration::from_nanos(1));
            let value = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                    // Below 10⁹: fits any c_long.
                    tv_nsec: after.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: the descriptor is open and `value` is a valid itimerspec; the old
            // setting is not asked for (null).
            let result = unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &value, std::ptr::null_mut())
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = after;
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Reads the expiry count, so that the next expiry is a new readiness edge. One read
    /// drains it: the count is a single 8-byte value, and reading resets it.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: the descriptor is open and `count` is 8 writable bytes. Its result is not
        // needed: nothing to read (EAGAIN) means there was no expiry to clear.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

impl mio::event::Source for Timer {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

/// What [`open_beneath`] found at a name.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, opened for reading, and its length when it was opened: from the `statx`
    /// that found it regular, so the size costs no call of its own.
    Regular(File, u64),
    /// A directory: not served.
    Directory,
    /// A FIFO, socket or device: not served, and never opened in a way that could block.
    Special,
    /// Nothing there.
    Missing,
    /// The name resolves outside the root (through a symlink), or loops.
    Outside,
    /// The file system refused (permissions).
    Denied,
}

/// Opens `name`, a relative path already checked for `..` and the like, beneath the directory
/// `root` (whose canonical path is `root_path`), for reading.
///
/// On Linux `openat2(RESOLVE_BENEATH)` lets the kernel resolve the name and refuse any step out of
/// the root, symlinks included, with no window between check and open. The name is first opened
/// with `O_PATH`, which opens nothing and so has no side effect on devices; only a regular file is
/// then opened for reading, with `O_NONBLOCK` so that even a FIFO swapped in meanwhile cannot
/// block the loop. Elsewhere (or where `openat2` is unavailable) the path is canonicalised and
/// checked against the root before opening, which leaves a short race with a concurrent
/// `rename`; the served root is expected not to be writable by clients.
///
/// # Errors
/// Unexpected I/O errors only; expected outcomes are [`Opened`] variants.
pub fn open_beneath(root: &File, root_path: &Path, name: &str) -> io::Result<Opened> {
    #[cfg(target_os = "linux")]
    match linux::open_beneath(root, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        result => return classify_open(result),
    }
    let _ = root;
    classify_open(portable_open_beneath(root_path, name))
}

/// Maps the errors of opening a requested file to what they mean for the client.
fn classify_open(result: io::Result<Opened>) -> io::Result<Opened> {
    match result {
        Ok(opened) => Ok(opened),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => Ok(Opened::Missing),
            Some(libc::EXDEV | libc::ELOOP) => Ok(Opened::Outside),
            Some(libc::EACCES | libc::EPERM) => Ok(Opened::Denied),
            // Opening a socket file fails this way; it is not servable either.
            Some(libc::ENXIO | libc::ENODEV) => Ok(Opened::Special),
            _ => Err(e),
        },
    }
}

fn kind_of(file: File) -> io::Result<Opened> {
    let metadata = file.metadata()?;
    let file_type = metadata.file_type();
    Ok(if file_type.is_file() {
        Opened::Regular(file, metadata.len())
    } else if file_type.is_dir() {
        Opened::Directory
    } else {
        Opened::Special
    })
}

fn portable_open_beneath(root_path: &Path, name: &str) -> io::Result<Opened> {
    use std::os::unix::fs::OpenOptionsExt;

    let real = std::fs::canonicalize(root_path.join(name))?;
    if !real.starts_with(root_path) {
        return Ok(Opened::Outside);
    }
    let metadata = std::fs::metadata(&real)?;
    if !metadata.is_file() {
        return Ok(if metadata.is_dir() {
            Opened::Directory
        } else {
            Opened::Special
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&real)?;
    kind_of(file)
}

/// Sends up to `count` bytes of `file` from `*offset` to `socket` without copying them through
/// user space, and advances `*offset`. Returns 0 when `*offset` is at or past the file's end.
///
/// # Errors
/// As `sendfile(2)`: `WouldBlock` when the socket is full; `Unsupported` off Linux or for a file
/// system without it, in which case the caller copies instead.
pub fn sendfile(
    socket: &impl AsRawFd,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        linux::sendfile(socket, file, offset, count)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Most datagrams one [`send_datagrams`] call hands the kernel. A chat message to a large room
/// goes out in a few calls of this many; the call's arrays live on the stack (about 13 KiB).
pub const SEND_BATCH: usize = 64;

/// Sends datagrams in order, up to [`SEND_BATCH`] of them in one `sendmmsg(2)` on Linux, and
/// returns how many the kernel took: at least one, unless `datagrams` is empty. A datagram the
/// kernel refuses ends the call early; sent again first, it reports its own error.
///
/// Off Linux it sends the first datagram alone, with `sendto(2)`.
///
/// # Errors
/// The first datagram's: `WouldBlock` when the send buffer is full, and the kernel's reasons
/// otherwise.
pub fn send_datagrams<'a>(
    socket: &UdpSocket,
    datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        linux::sendmmsg(socket, datagrams)
    }
    #[cfg(not(target_os = "linux"))]
    {
        match datagrams.into_iter().next() {
            Some((payload, to)) => socket.send_to(payload, to).map(|_| 1),
            None => Ok(0),
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use std::net::SocketAddr;

    use mio::net::UdpSocket;
    use socket2::SockAddr;

    use super::{Opened, SEND_BATCH, kind_of};

    pub fn open_beneath(root: &File, name: &str) -> io::Result<Opened> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
        let look = openat2(root, &name, libc::O_PATH)?;
        match kind_of(File::from(look))? {
            Opened::Regular(..) => {}
            other => return Ok(other),
        }
        let file = openat2(
            root,
            &name,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )?;
        kind_of(File::from(file))
    }

    fn openat2(root: &File, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: `open_how` is plain data for which all-zero is valid (no flags, no mode).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: the descriptor and the NUL-terminated name outlive the call, and `how` is a
        // valid `open_how` whose size is passed alongside it, as openat2(2) requires.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    pub fn sendfile(
        socket: &impl AsRawFd,
        file: &File,
        offset: &mut u64,
        count: usize,
    ) -> io::Result<usize> {
        let mut off = libc::off_t::try_from(*offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: both descriptors are open for the duration of the call and `off` is a valid
        // `off_t` the kernel updates in place.
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
        if sent < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                    io::ErrorKind::Unsupported.into()
                }
                _ => err,
            });
        }
        *offset = off as u64;
        Ok(sent as usize)
    }

    pub fn sendmmsg<'a>(
        socket: &UdpSocket,
        datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    ) -> io::Result<usize> {
        let mut addresses: [Option<SockAddr>; SEND_BATCH] = [const { None }; SEND_BATCH];
        // SAFETY: all-zero `iovec`s and `mmsghdr`s are valid empty values (null pointers, zero
        // lengths); the ones handed to the kernel are filled in below.
        let mut buffers: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        for (payload, to) in datagrams.into_iter().take(SEND_BATCH) {
            buffers[count] = libc::iovec {
                iov_base: payload.as_ptr().cast_mut().cast(),
                iov_len: payload.len(),
            };
            addresses[count] = Some(SockAddr::from(to));
            count += 1;
        }
        // The pointers are taken once every array is written, so no later write moves under them.
        let buffers = buffers.as_mut_ptr();
        for (i, (header, address)) in headers.iter_mut().zip(&addresses).enumerate() {
            let Some(address) = address else { break };
            header.msg_hdr.msg_name = address.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = address.len();
            header.msg_hdr.msg_iov = buffers.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
        }
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: the first `count` headers point at payloads, buffers and addresses that all
        // outlive the call; the kernel reads them and writes only each header's `msg_len`.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// The limit is set once on the listener: it must reach the sockets the listener accepts.
    #[test]
    fn an_accepted_socket_inherits_the_listeners_unsent_limit() {
        let mut listener = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        limit_unsent(&listener, 48 * 1024).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = accept_within(&mut listener);
        assert_eq!(
            SockRef::from(&accepted).tcp_notsent_lowat().unwrap(),
            48 * 1024
        );
    }

    #[test]
    fn send_datagrams_gives_each_datagram_its_own_payload_and_address() {
        let sender = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let payloads = [&b"zero"[..], b"one", b"two"];
        let each = receivers
            .iter()
            .zip(payloads)
            .map(|(r, payload)| (payload, r.local_addr().unwrap()));
        assert_eq!(send_datagrams(&sender, each).unwrap(), 3);
        for (receiver, payload) in receivers.iter().zip(payloads) {
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0; 16];
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload);
            assert_eq!(from, sender.local_addr().unwrap());
        }
    }

    #[test]
    fn send_datagrams_takes_one_batch_at_most_and_nothing_from_nothing() {
        let sender = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let many = std::iter::repeat_n((&b"x"[..], to), SEND_BATCH + 10);
        assert_eq!(send_datagrams(&sender, many).unwrap(), SEND_BATCH);
        assert_eq!(send_datagrams(&sender, std::iter::empty()).unwrap(), 0);
    }

    /// Waits (at most five seconds) for the listener to report the connection, then takes it.
    fn accept_within(listener: &mut TcpListener) -> mio::net::TcpStream {
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(listener, mio::Token(0), mio::Interest::READABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(1);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "no connection within five seconds");
        listener.accept().unwrap().0
    }
}
