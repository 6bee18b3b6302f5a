//! RESP2, the Redis serialization protocol, as the bus links speak it: commands out, replies in.
//!
//! The bytes are the `redis-protocol` crate's business, in both directions; the loop owns the
//! socket and the buffers. A command is an array of bulk strings. A reply is decoded from the
//! front of the link's input: a whole [`Frame`] and how many bytes it took, "not yet"
//! (`Ok(None)`, as mini-redis maps its `Incomplete`) while the frame is still arriving, or
//! [`Garbage`] when the bytes are not RESP at all.
//!
//! One guard is ours. The crate's decoder recurses once per level of nested arrays, so a peer
//! that sends `*1\r\n` ten thousand times would overflow the loop's stack long before the input
//! bound stopped it. [`too_deep`] walks the frame's headers first, without recursion, and refuses
//! nesting deeper than any reply Redis gives to the commands the bus sends.

use std::fmt;

use redis_protocol::resp2::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;
pub use redis_protocol::resp2::types::OwnedFrame as Frame;

/// Deepest nesting of arrays a reply may have. Every reply the bus expects is a flat array (a
/// pub/sub message, a script's list) or no array at all; four leaves room and refuses abuse.
pub const MAX_DEPTH: usize = 4;

/// Bytes that are not a RESP2 frame, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage(pub String);

impl fmt::Display for Garbage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not RESP: {}", self.0)
    }
}

/// Appends the command `args` (its name first) to `out`, as an array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The slice was just sized by the crate's own `encode_len`, so it cannot be too small, and
    // arrays of bulk strings have no other way to fail.
    let written = encode_borrowed(&mut out[start..], &frame, false)
        .expect("a buffer of encode_len bytes holds the frame");
    out.truncate(start + written);
}

/// Decodes the frame at the front of `input`: the frame and the bytes it took, or `None` while it
/// is incomplete.
///
/// # Errors
/// [`Garbage`]: the bytes are not RESP2, or nest arrays deeper than [`MAX_DEPTH`].
pub fn decode(input: &[u8]) -> Result<Option<(Frame, usize)>, Garbage> {
    if too_deep(input, MAX_DEPTH) {
        return Err(Garbage(format!("arrays nested deeper than {MAX_DEPTH}")));
    }
    decode::decode(input).map_err(|e| Garbage(e.to_string()))
}

/// Whether the frame at the front of `input` nests arrays deeper than `max`, as far as its
/// headers have arrived. Only array headers (`*N`) and bulk lengths (`$N`) are read, to skip to
/// the next header; anything else odd is left for the decoder to refuse.
pub fn too_deep(input: &[u8], max: usize) -> bool {
    // Elements still to come in each array that is open, innermost last.
    let mut open: Vec<i64> = Vec::new();
    let mut at = 0;
    loop {
        let Some(kind) = input.get(at) else {
            return false;
        };
        let Some(end) = line_end(input, at) else {
            return false;
        };
        // A line that is only `\r\n` has no header at all (`get` is then `None`).
        let header = input
            .get(at + 1..end)
            .and_then(|h| std::str::from_utf8(h).ok());
        let length = header.and_then(|h| h.parse::<i64>().ok());
        at = end + 2;
        match (kind, length) {
            (b'*', Some(n)) if n > 0 => {
                open.push(n);
                if open.len() > max {
                    return true;
                }
                continue;
            }
            (b'$', Some(n)) if n >= 0 => {
                // Skip the payload and its CRLF; a length that runs past the input is simply
                // not here yet.
                let Some(next) = usize::try_from(n).ok().and_then(|n| at.checked_add(n + 2)) else {
                    return false;
                };
                at = next;
            }
            (b'*' | b'$', Some(_)) | (b'+' | b'-' | b':', _) => {}
            _ => return false,
        }
        // One element is complete: close every array it completed.
        while let Some(left) = open.last_mut() {
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
        if open.is_empty() {
            return false;
        }
    }
}

/// Where the line starting at `from` ends (the index of its `\r\n`), if it has ended yet.
fn line_end(input: &[u8], from: usize) -> Option<usize> {
    input[from..]
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|i| from + i)
}

/// The bytes of a string reply, bulk or simple.
pub fn bytes(frame: &Frame) -> Option<&[u8]> {
    match frame {
        Frame::BulkString(bytes) | Frame::SimpleString(bytes) => Some(bytes),
        Frame::Error(_) | Frame::Integer(_) | Frame::Array(_) | Frame::Null => None,
    }
}

/// A string reply as UTF-8 text.
pub fn text(frame: &Frame) -> Option<&str> {
    bytes(frame).and_then(|bytes| std::str::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = b"before".to_vec();
        encode(&[b"SET", b"k", b"v"], &mut out);
        assert_eq!(out, b"before*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn a_reply_decodes_whole_or_waits_for_the_rest() {
        let reply = b"*2\r\n$5\r\nhello\r\n:7\r\n+OK\r\n";
        let (frame, used) = decode(reply).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Array(vec![
                Frame::BulkString(b"hello".to_vec()),
                Frame::Integer(7)
            ])
        );
        assert_eq!(&reply[used..], b"+OK\r\n");
        for cut in 0..used {
            assert_eq!(
                decode(&reply[..cut]),
                Ok(None),
                "{cut} bytes are not enough"
            );
        }
        assert_eq!(decode(b"$-1\r\n"), Ok(Some((Frame::Null, 5))));
    }

    #[test]
    fn bytes_that_are_not_resp_are_garbage() {
        assert!(decode(b"HTTP/1.1 400 Bad Request\r\n").is_err());
        assert!(decode(b"$abc\r\n").is_err());
        // A line with no header at all (once found by the property below to panic the guard).
        assert!(decode(b"\r\n").is_err());
        assert!(decode(b"*1\r\n\r\n").is_err());
    }

    /// Without the guard, the crate's recursive decoder overflows a thread's stack on this.
    #[test]
    fn arrays_nested_past_the_limit_are_refused_before_decoding() {
        let deep = "*1\r\n".repeat(100_000);
        assert!(too_deep(deep.as_bytes(), MAX_DEPTH));
        assert!(decode(deep.as_bytes()).is_err());
        // Nesting reached by arrays that end and begin again, not only by opening ones.
        let mut sideways = String::new();
        for _ in 0..=MAX_DEPTH {
            sideways.push_str("*2\r\n:1\r\n");
        }
        assert!(too_deep(sideways.as_bytes(), MAX_DEPTH));
    }

    #[test]
    fn the_replies_the_bus_expects_are_not_too_deep() {
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$8\r\n*9\r\n*9\r\n\r\n*1\r\n";
        assert!(
            !too_deep(message, MAX_DEPTH),
            "array headers inside a payload are payload"
        );
        assert!(!too_deep(b"*2\r\n*1\r\n:1\r\n*0\r\n", MAX_DEPTH));
        assert!(!too_deep(b"*-1\r\n", MAX_DEPTH));
        let (frame, _) = decode(message).unwrap().unwrap();
        let Frame::Array(parts) = frame else {
            panic!("an array")
        };
        assert_eq!(text(&parts[0]), Some("message"));
        assert_eq!(bytes(&parts[2]), Some(&b"*9\r\n*9\r\n"[..]));
    }
}

/// Properties over generated bytes: decoding never panics nor overflows, whatever arrives, and
/// every command encoded decodes to the same arguments.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"*1\r\n".to_vec()),
            Just(b"*2\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            Just(b"$3\r\nabc\r\n".to_vec()),
            Just(b"$-1\r\n".to_vec()),
            Just(b"$99999999999\r\n".to_vec()),
            Just(b":42\r\n".to_vec()),
            Just(b"+OK\r\n".to_vec()),
            Just(b"-ERR x\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoding_any_bytes_never_panics(input in pieces()) {
            if let Ok(Some((_, used))) = decode(&input) {
                prop_assert!(used <= input.len());
            }
        }

        #[test]
        fn an_encoded_command_decodes_to_its_arguments(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)
        ) {
            let borrowed: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut out = Vec::new();
            encode(&borrowed, &mut out);
            let (frame, used) = decode(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            let expected = Frame::Array(args.into_iter().map(Frame::BulkString).collect());
            prop_assert_eq!(frame, expected);
        }
    }
}
