//! The operating system's edges: socket options and the error kinds the loop must tell apart.
//!
//! Everything that depends on what the kernel says or offers beyond `std` and mio lives here, so
//! the rest of the crate reads as portable logic. Errors are classified once, in this file, and every
//! read, write and accept loop asks the same questions: "is this the end of the drain?" (`would_block`),
//! "should I simply try again?" (`interrupted`), "did the peer go away?" (`peer_gone`).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

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

/// `accept` failed because the process or the system ran out of a resource (file descriptors,
/// socket buffers). Retrying at once would fail again and spin the loop, so the listener backs off.
pub fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Opens a non-blocking TCP listener.
///
/// `SO_REUSEADDR` lets a restarted server bind while connections of the previous run sit in
/// `TIME_WAIT`; it does not let two live servers share a port.
///
/// # Errors
/// Any error of `socket`, `bind` or `listen`, for the caller to name the service and port.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}
