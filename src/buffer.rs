//! A bounded byte buffer for output that the socket would not take yet, and its water marks.
//!
//! Most of the time a connection owes nothing: the loop reads into one scratch buffer shared by
//! every connection and writes the reply straight back. Only what the kernel refuses (`WouldBlock`)
//! is copied here. So the buffer allocates only while bytes are in flight and frees its memory as
//! soon as it is empty: an idle connection costs no heap at all.
//!
//! The buffer itself does not refuse bytes. Its owner asks [`Watermarks::room`] before reading
//! more input, which is how "a client that sends and never reads" stays bounded: once the owed
//! output reaches the high-water mark, the connection stops reading, and TCP flow control pushes
//! back on the client.

use std::io::{self, Write};

use crate::sys::{interrupted, would_block};

/// Hysteresis for one buffer: stop reading at `high`, resume once drained below `low`.
///
/// Two marks instead of one keep a connection from flapping between "paused" and "reading" (and
/// re-registering its interest with the kernel each time) on every few bytes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Bytes owed at which the connection stops reading input.
    pub high: usize,
    /// Bytes owed below which a paused connection reads again.
    pub low: usize,
}

impl Watermarks {
    /// How many more bytes may be buffered before the high-water mark.
    pub fn room(&self, buffer: &Buffer) -> usize {
        self.high.saturating_sub(buffer.len())
    }

    /// The buffer has reached the high-water mark: stop reading.
    pub fn is_full(&self, buffer: &Buffer) -> bool {
        buffer.len() >= self.high
    }

    /// A paused connection has drained enough to read again.
    pub fn has_drained(&self, buffer: &Buffer) -> bool {
        buffer.len() < self.low
    }
}

/// Bytes owed to a peer, oldest first.
#[derive(Debug, Default)]
pub struct Buffer {
    /// Holds consumed bytes before `start` until the next compaction; empty when nothing is owed.
    data: Vec<u8>,
    /// Index of the first byte not yet written.
    start: usize,
}

impl Buffer {
    /// An empty buffer; allocates nothing.
    pub const fn new() -> Self {
        Buffer {
            data: Vec::new(),
            start: 0,
        }
    }

    /// Number of bytes owed.
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// Nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes owed, oldest first.
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Appends bytes behind those already owed.
    pub fn extend(&mut self, bytes: &[u8]) {
        // Reclaim the consumed front before growing: a buffer that is written out as fast as it
        // fills then never grows beyond its high-water mark.
        if self.start > 0 && self.data.len() + bytes.len() > self.data.capacity() {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Forgets the first `n` owed bytes, which have been written.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len(), "consumed more than was owed");
        self.start += n;
        if self.start == self.data.len() {
            // Release the memory: idle connections should cost no heap.
            *self = Buffer::new();
        }
    }

    /// Writes owed bytes until the buffer is empty or the writer would block.
    ///
    /// Returns the number of bytes written; `WouldBlock` ends the drain and is not an error.
    ///
    /// # Errors
    /// Any other error of `write`; the bytes not written stay owed.
    pub fn write_to(&mut self, writer: &mut impl Write) -> io::Result<usize> {
        let written = write_ready(writer, self.as_slice())?;
        self.consume(written);
        Ok(written)
    }
}

/// Writes `bytes` until all are written or the writer would block; returns how many were written.
///
/// This is the edge-triggered write drain: `WouldBlock` is the normal end, `Interrupted` is
/// retried, and the caller keeps whatever was not written. A short write ends it too: a stream
/// socket takes less than offered only when its send buffer is full, so the next write would only
/// say `WouldBlock`, and the socket raises a new writable edge once space frees (epoll(7)).
///
/// # Errors
/// Any other error of `write`. A zero-length write is reported as `WriteZero`.
pub fn write_ready(writer: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match writer.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                if written < bytes.len() {
                    break; // the send buffer is full
                }
            }
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call, then refuses with `WouldBlock` once its
    /// `capacity` is used, like a socket whose send buffer fills.
    struct Sink {
        taken: Vec<u8>,
        chunk: usize,
        capacity: usize,
        interrupt_next: bool,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if std::mem::take(&mut self.interrupt_next) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf
                .len()
                .min(self.chunk)
                .min(self.capacity - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn new_buffer_allocates_nothing() {
        let buffer = Buffer::new();
        assert!(buffer.is_empty());
        assert_eq!(buffer.data.capacity(), 0);
    }

    #[test]
    fn consuming_everything_frees_the_memory() {
        let mut buffer = Buffer::new();
        buffer.extend(b"hello");
        buffer.consume(2);
        assert_eq!(buffer.as_slice(), b"llo");
        buffer.consume(3);
        assert!(buffer.is_empty());
        assert_eq!(buffer.data.capacity(), 0);
    }

    #[test]
    fn extend_reuses_the_consumed_front_instead_of_growing() {
        let mut buffer = Buffer::new();
        buffer.extend(&[1; 64]);
        let capacity = buffer.data.capacity();
        buffer.consume(60);
        buffer.extend(&[2; 50]);
        assert_eq!(buffer.data.capacity(), capacity);
        assert_eq!(buffer.len(), 54);
        assert_eq!(&buffer.as_slice()[..4], &[1; 4]);
        assert_eq!(&buffer.as_slice()[4..], &[2; 50]);
    }

    #[test]
    fn write_to_stops_when_the_socket_is_full_and_keeps_the_rest_in_order() {
        let mut buffer = Buffer::new();
        buffer.extend(b"abcdefghij");
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 100,
            capacity: 7,
            interrupt_next: true,
        };
        // Interrupted is retried; the short write of 7 shows the socket full, so no further call.
        assert_eq!(buffer.write_to(&mut sink).unwrap(), 7);
        assert_eq!(sink.taken, b"abcdefg");
        assert_eq!(buffer.as_slice(), b"hij");

        sink.capacity = 100;
        assert_eq!(buffer.write_to(&mut sink).unwrap(), 3);
        assert_eq!(sink.taken, b"abcdefghij");
        assert!(buffer.is_empty());
    }

    #[test]
    fn write_ready_stops_at_would_block() {
        let mut sink = Sink {
            taken: vec![0; 5],
            chunk: 100,
            capacity: 5,
            interrupt_next: false,
        };
        assert_eq!(write_ready(&mut sink, b"xyz").unwrap(), 0);
    }

    #[test]
    fn watermarks_pause_at_high_and_resume_below_low() {
        let marks = Watermarks { high: 10, low: 4 };
        let mut buffer = Buffer::new();
        assert_eq!(marks.room(&buffer), 10);
        buffer.extend(&[0; 10]);
        assert!(marks.is_full(&buffer));
        assert_eq!(marks.room(&buffer), 0);
        buffer.consume(6);
        assert!(!marks.is_full(&buffer));
        assert!(
            !marks.has_drained(&buffer),
            "4 owed is not below the low mark"
        );
        buffer.consume(1);
        assert!(marks.has_drained(&buffer));
    }
}

/// Properties of a simulated echo connection that obeys [`Watermarks::room`] before each read:
/// the bytes owed never exceed the high-water mark, and every byte comes out once, in order.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// What the peer's socket does with one `write` call.
    #[derive(Debug, Clone, Copy)]
    enum Take {
        /// Takes at most this many bytes (at least 1).
        UpTo(usize),
        /// Its send buffer is full.
        WouldBlock,
        /// A signal arrived; the caller must retry.
        Interrupted,
    }

    /// A peer socket that answers `write` calls by its script, over and over.
    struct Peer {
        received: Vec<u8>,
        script: Vec<Take>,
        next: usize,
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let take = self.script[self.next % self.script.len()];
            self.next += 1;
            match take {
                Take::UpTo(n) => {
                    let n = n.min(buf.len());
                    self.received.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
                Take::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
                Take::Interrupted => Err(io::ErrorKind::Interrupted.into()),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// One readiness event of the simulated connection.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// The client has sent this many bytes (more than the connection may read, often).
        Readable(usize),
        /// The peer's socket may take output.
        Writable,
    }

    fn marks() -> impl Strategy<Value = Watermarks> {
        // The bounds `Config::validate` enforces: 1 <= low <= high.
        (1..200usize)
            .prop_flat_map(|high| (Just(high), 1..=high))
            .prop_map(|(high, low)| Watermarks { high, low })
    }

    fn script() -> impl Strategy<Value = Vec<Take>> {
        let take = prop_oneof![
            (1..100usize).prop_map(Take::UpTo),
            Just(Take::WouldBlock),
            Just(Take::Interrupted),
        ];
        // Ending on WouldBlock keeps a script of nothing but Interrupted from retrying forever.
        prop::collection::vec(take, 0..8).prop_map(|mut script| {
            script.push(Take::WouldBlock);
            script
        })
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        let event = prop_oneof![
            (1..300usize).prop_map(Event::Readable),
            Just(Event::Writable),
        ];
        prop::collection::vec(event, 0..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_connection_obeying_room_never_owes_more_than_high_and_keeps_order(
            marks in marks(),
            script in script(),
            events in events(),
        ) {
            let mut peer = Peer { received: Vec::new(), script, next: 0 };
            let mut owed = Buffer::new();
            let mut read: Vec<u8> = Vec::new();
            let mut paused = false;
            for event in events {
                match event {
                    // As echo reads: never more than the room left, and pause when there is none.
                    Event::Readable(available) if !paused => {
                        let room = marks.room(&owed).min(available);
                        if room == 0 {
                            paused = true;
                            continue;
                        }
                        let start = read.len();
                        read.extend((start..start + room).map(|i| (i % 251) as u8));
                        let input = &read[start..];
                        let written = if owed.is_empty() {
                            write_ready(&mut peer, input).expect("the peer never fails")
                        } else {
                            0
                        };
                        owed.extend(&input[written..]);
                    }
                    // Paused: the connection does not read, and the client's bytes wait in TCP.
                    Event::Readable(_) => {}
                    Event::Writable => {
                        owed.write_to(&mut peer).expect("the peer never fails");
                        if paused && marks.has_drained(&owed) {
                            paused = false;
                        }
                    }
                }
                prop_assert!(owed.len() <= marks.high, "{} owed", owed.len());
                let sent = peer.received.len();
                prop_assert_eq!(&peer.received[..], &read[..sent]);
                prop_assert_eq!(owed.as_slice(), &read[sent..]);
            }
            // A peer that reads everything: all that was read comes out, and reading resumes.
            peer.script = vec![Take::UpTo(usize::MAX)];
            owed.write_to(&mut peer).expect("the peer never fails");
            prop_assert!(owed.is_empty() && marks.has_drained(&owed));
            prop_assert_eq!(peer.received, read);
        }
    }
}
