//! The download request line: parsing it and checking the file name, with no I/O at all.
//!
//! Three forms share one port (see `docs/PROTOCOL.md`):
//!
//! ```text
//!   GET <name> [offset]\n      → OK <size>\n, then the bytes
//!   LIST\n                     → OK <n>\n, then "<size> <name>\n" per file
//!   <name>                     → the raw bytes (the tutorial's downloader)
//! ```
//!
//! Everything a client can get wrong is decided here, as a [`Refusal`] carrying the protocol's
//! status code, so the connection code only moves bytes.

use std::fmt;

/// Longest request line accepted, in bytes, without its line ending: generous for any path a
/// served tree can hold (Linux allows 4 096 bytes per path).
pub const MAX_LINE: usize = 4096;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET <name> [offset]`: a header, then the file from `offset`.
    Get {
        /// The checked relative path.
        name: String,
        /// First byte to send.
        offset: u64,
    },
    /// `LIST`: the regular files under the root.
    List,
    /// A bare file name (the tutorial's form): the raw bytes, no header.
    Bare {
        /// The checked relative path.
        name: String,
    },
}

/// Why a request is refused: the status code and reason of the `ERR` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the line cannot be understood (bad UTF-8, empty name, bad offset).
    BadRequest(&'static str),
    /// 403: the name points outside the root, or at something that is not a servable file.
    Forbidden(&'static str),
    /// 404: no such file.
    NotFound,
    /// 414: the request line is longer than [`MAX_LINE`].
    TooLong,
    /// 416: the offset is past the end of the file.
    OffsetPastEnd,
    /// 503: the server is at its open-file limit.
    Busy,
    /// 503: the server is at its connection limit (`--max-conns`).
    Full,
}

impl Refusal {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::NotFound => 404,
            Refusal::TooLong => 414,
            Refusal::OffsetPastEnd => 416,
            Refusal::Busy | Refusal::Full => 503,
        }
    }
}

impl fmt::Display for Refusal {
    /// The reply line without its `\n`: `ERR <code> <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self {
            Refusal::BadRequest(why) | Refusal::Forbidden(why) => why,
            Refusal::NotFound => "not found",
            Refusal::TooLong => "request line too long",
            Refusal::OffsetPastEnd => "offset past end of file",
            Refusal::Busy => "busy: too many open files, try again later",
            Refusal::Full => "busy: too many connections, try again later",
        };
        write!(f, "ERR {} {reason}", self.code())
    }
}

/// Whether a line is the tutorial's bare form: its reply has no status line, and a refusal closes
/// the connection without a word.
pub fn is_bare(line: &[u8]) -> bool {
    !(line.starts_with(b"GET ") || line.starts_with(b"LIST"))
}

/// Parses one complete request line (without its `\n`; a trailing `\r` is dropped here).
///
/// # Errors
/// The refusal to send back, for a malformed line or a name that may not be served.
pub fn parse(line: &[u8], serve_hidden: bool) -> Result<Request, Refusal> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(Refusal::TooLong);
    }
    let line =
        std::str::from_utf8(line).map_err(|_| Refusal::BadRequest("request is not valid UTF-8"))?;
    if let Some(rest) = line.strip_prefix("GET ") {
        let (name, offset) = split_offset(rest)?;
        return Ok(Request::Get {
            name: check_name(name, serve_hidden)?,
            offset,
        });
    }
    if line == "LIST" {
        return Ok(Request::List);
    }
    if line.starts_with("LIST") {
        return Err(Refusal::BadRequest("LIST takes no argument"));
    }
    Ok(Request::Bare {
        name: check_name(line, serve_hidden)?,
    })
}

/// Splits `name [offset]`. The offset is the last space-separated word when it is all digits,
/// so a name that itself ends in ` <digits>` must be followed by an explicit offset.
fn split_offset(rest: &str) -> Result<(&str, u64), Refusal> {
    match rest.rsplit_once(' ') {
        Some((name, word)) if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) => {
            let offset = word
                .parse()
                .map_err(|_| Refusal::BadRequest("offset out of range"))?;
            Ok((name, offset))
        }
        _ => Ok((rest, 0)),
    }
}

/// Checks that `name` is a relative path that stays inside the root, and returns it normalised
/// (empty and `.` components dropped).
///
/// This is the first of two fences. It refuses what is wrong on its face; the second fence, at
/// open time, refuses symlinks that lead out of the root (see `sys::open_beneath`).
///
/// # Errors
/// 400 for an empty name, 403 for everything that could leave the root or reach hidden files.
pub fn check_name(name: &str, serve_hidden: bool) -> Result<String, Refusal> {
    if name.contains('\0') {
        return Err(Refusal::Forbidden("NUL byte in name"));
    }
    if name.contains('\\') {
        return Err(Refusal::Forbidden(
            "backslash in name: use / between components",
        ));
    }
    if name.starts_with('/') {
        return Err(Refusal::Forbidden(
            "absolute path: names are relative to the root",
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Refusal::Forbidden("'..' in name")),
            hidden if hidden.starts_with('.') && !serve_hidden => {
                return Err(Refusal::Forbidden("hidden file"));
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(Refusal::BadRequest("empty file name"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str, offset: u64) -> Result<Request, Refusal> {
        Ok(Request::Get {
            name: name.into(),
            offset,
        })
    }

    #[test]
    fn get_takes_a_name_and_an_optional_offset() {
        assert_eq!(parse(b"GET a.txt", false), get("a.txt", 0));
        assert_eq!(parse(b"GET a.txt 10\r", false), get("a.txt", 10));
        assert_eq!(parse(b"GET my file.txt", false), get("my file.txt", 0));
        assert_eq!(parse(b"GET report 2024 0", false), get("report 2024", 0));
        assert_eq!(parse(b"GET ./dir//b.bin", false), get("dir/b.bin", 0));
    }

    #[test]
    fn list_is_exact_and_anything_else_is_a_bare_name() {
        assert_eq!(parse(b"LIST", false), Ok(Request::List));
        assert_eq!(parse(b"LIST\r", false), Ok(Request::List));
        assert!(matches!(
            parse(b"LIST x", false),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            parse("一个文件.txt".as_bytes(), false),
            Ok(Request::Bare {
                name: "一个文件.txt".into()
            })
        );
    }

    #[test]
    fn names_that_leave_the_root_are_forbidden() {
        for bad in [
            "/etc/passwd",
            "../secret",
            "a/../../b",
            "a\\b",
            "a\0b",
            ".hidden",
            "dir/.git/config",
        ] {
            let refusal = check_name(bad, false).unwrap_err();
            assert_eq!(refusal.code(), 403, "{bad:?}");
        }
        assert_eq!(check_name(".hidden", true), Ok(".hidden".into()));
        assert_eq!(check_name("a/../b", true).unwrap_err().code(), 403);
    }

    #[test]
    fn malformed_lines_are_bad_requests() {
        assert_eq!(parse(b"GET ", false).unwrap_err().code(), 400);
        assert_eq!(parse(b"", false).unwrap_err().code(), 400);
        assert_eq!(parse(b"\xff\xfe", false).unwrap_err().code(), 400);
        assert_eq!(
            parse(b"GET a 99999999999999999999999", false)
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(parse(&[b'a'; MAX_LINE + 1], false), Err(Refusal::TooLong));
    }

    #[test]
    fn only_get_and_list_lines_have_a_header() {
        assert!(!request_is_bare(b"GET a"));
        assert!(!request_is_bare(b"LIST"));
        assert!(request_is_bare(b"a.txt"));
        assert!(request_is_bare(b"GETa"));
    }

    fn request_is_bare(line: &[u8]) -> bool {
        is_bare(line)
    }

    #[test]
    fn refusals_print_as_err_lines() {
        assert_eq!(Refusal::NotFound.to_string(), "ERR 404 not found");
        assert_eq!(
            Refusal::Forbidden("hidden file").to_string(),
            "ERR 403 hidden file"
        );
        assert_eq!(Refusal::Busy.code(), 503);
    }
}
