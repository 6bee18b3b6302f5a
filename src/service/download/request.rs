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
//! A line is *typed* (one of the first two forms) when its first word, everything before the first
//! space or tab, is `GET` or `LIST` in any mix of case; any other line is a bare name. So a slip
//! such as `get a.txt`, `GET` alone or `LIST x` is answered `ERR 400` with what is wrong, rather
//! than looked up as a file of that name, while `list.txt` or `Getting started.md` stay bare names.
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
    /// 400: the line cannot be understood (bad UTF-8, empty name, bad offset, a near miss of the
    /// `GET` or `LIST` form).
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

impl fmt::Display for Request {
    /// The canonical request line, without its `\n`, which [`parse`] reads back as this request
    /// (for a request `parse` returned, whose name has no control characters).
    ///
    /// `GET` carries its offset only when the offset is not 0 or the name itself ends in
    /// ` <digits>`. A bare name whose first word reads as a method (`get`, from the bare line
    /// `./get` or `get/`) gets a `./` in front, so the line stays bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Get { name, offset } if *offset == 0 && trailing_number(name).is_none() => {
                write!(f, "GET {name}")
            }
            Request::Get { name, offset } => write!(f, "GET {name} {offset}"),
            Request::List => f.write_str("LIST"),
            Request::Bare { name } if !is_bare(name.as_bytes()) => write!(f, "./{name}"),
            Request::Bare { name } => f.write_str(name),
        }
    }
}

/// Whether a line is the tutorial's bare form: its reply has no status line, and a refusal closes
/// the connection without a word. Any other line is typed, and hears why it was refused.
pub fn is_bare(line: &[u8]) -> bool {
    method_end(without_cr(line)).is_none()
}

/// Where the method word of a typed line ends, or `None` for a bare line.
///
/// The first word is everything before the first space or tab. It makes the line typed when it is
/// `GET` or `LIST` ignoring ASCII case: `get` or `List` is a client meaning a method and spelling
/// it wrong, which deserves a reason more than a lookup of a file by that name. A name that merely
/// starts with those letters (`list.txt`, `GETa`, `Getting started.md`) is a bare name.
fn method_end(line: &[u8]) -> Option<usize> {
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let word = &line[..end];
    (word.eq_ignore_ascii_case(b"GET") || word.eq_ignore_ascii_case(b"LIST")).then_some(end)
}

/// The line without the `\r` of a `\r\n` ending.
fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one complete request line (without its `\n`; a trailing `\r` is dropped here).
///
/// # Errors
/// The refusal to send back, for a malformed line or a name that may not be served.
pub fn parse(line: &[u8], serve_hidden: bool) -> Result<Request, Refusal> {
    let line = without_cr(line);
    if line.len() > MAX_LINE {
        return Err(Refusal::TooLong);
    }
    let method_end = method_end(line);
    let line =
        std::str::from_utf8(line).map_err(|_| Refusal::BadRequest("request is not valid UTF-8"))?;
    match method_end {
        None => Ok(Request::Bare {
            name: check_name(line, serve_hidden)?,
        }),
        // The split falls at a space, a tab or the end, so both halves are valid UTF-8.
        Some(end) => parse_typed(line.split_at(end), serve_hidden),
    }
}

/// A typed line, as its method word (in whatever case the client sent it) and the rest, separator
/// included.
fn parse_typed((method, rest): (&str, &str), serve_hidden: bool) -> Result<Request, Refusal> {
    match (method, rest) {
        ("LIST", "") => Ok(Request::List),
        ("LIST", _) => Err(Refusal::BadRequest("LIST takes no argument")),
        ("GET", "") => Err(Refusal::BadRequest("GET needs a file name")),
        ("GET", rest) => {
            // Only a space: a tab is a near miss. More spaces belong to the name (` a` is a name).
            let rest = rest.strip_prefix(' ').ok_or(Refusal::BadRequest(
                "put one space between GET and the file name",
            ))?;
            let (name, offset) = split_offset(rest)?;
            if name.is_empty() {
                return Err(Refusal::BadRequest("GET needs a file name"));
            }
            Ok(Request::Get {
                name: check_name(name, serve_hidden)?,
                offset,
            })
        }
        // `method_end` lets through only GET and LIST, in some mix of case.
        (method, _) if method.eq_ignore_ascii_case("GET") => {
            Err(Refusal::BadRequest("methods are upper case: GET"))
        }
        _ => Err(Refusal::BadRequest("methods are upper case: LIST")),
    }
}

/// Splits `name [offset]`. The offset is the last space-separated word when it is all digits,
/// so a name that itself ends in ` <digits>` must be followed by an explicit offset.
fn split_offset(rest: &str) -> Result<(&str, u64), Refusal> {
    match trailing_number(rest) {
        Some((name, word)) => {
            let offset = word
                .parse()
                .map_err(|_| Refusal::BadRequest("offset out of range"))?;
            Ok((name, offset))
        }
        None => Ok((rest, 0)),
    }
}

/// `text` split before its last space-separated word, when that word is all ASCII digits.
fn trailing_number(text: &str) -> Option<(&str, &str)> {
    text.rsplit_once(' ')
        .filter(|(_, word)| !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks that `name` is a relative path that stays inside the root, and returns it normalised
/// (empty and `.` components dropped).
///
/// This is the first of two fences. It refuses what is wrong on its face; the second fence, at
/// open time, refuses symlinks that lead out of the root (see `sys::open_beneath`).
///
/// # Errors
/// 400 for an empty name; 403 for everything that could leave the root or reach hidden files, and
/// for control characters.
pub fn check_name(name: &str, serve_hidden: bool) -> Result<String, Refusal> {
    if name.contains('\0') {
        return Err(Refusal::Forbidden("NUL byte in name"));
    }
    // A line break could not be sent on the request line, and `LIST` never shows such names.
    if name.chars().any(char::is_control) {
        return Err(Refusal::Forbidden("control character in name"));
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
    fn list_is_exact_and_a_line_without_a_method_is_a_bare_name() {
        assert_eq!(parse(b"LIST", false), Ok(Request::List));
        assert_eq!(parse(b"LIST\r", false), Ok(Request::List));
        assert_eq!(
            parse("一个文件.txt".as_bytes(), false),
            Ok(Request::Bare {
                name: "一个文件.txt".into()
            })
        );
    }

    #[test]
    fn near_misses_of_get_and_list_are_bad_requests_naming_the_mistake() {
        for (line, reason) in [
            (&b"GET"[..], "GET needs a file name"),
            (b"GET\r", "GET needs a file name"),
            (b"GET ", "GET needs a file name"),
            (b"GET  7", "GET needs a file name"),
            (b"GET\ta.txt", "put one space between GET and the file name"),
            (b"get", "methods are upper case: GET"),
            (b"get a.txt", "methods are upper case: GET"),
            (b"Get a.txt 10", "methods are upper case: GET"),
            (b"list", "methods are upper case: LIST"),
            (b"List x", "methods are upper case: LIST"),
            (b"LIST x", "LIST takes no argument"),
            (b"LIST ", "LIST takes no argument"),
            (b"LIST\tx", "LIST takes no argument"),
        ] {
            assert_eq!(
                parse(line, false),
                Err(Refusal::BadRequest(reason)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            assert!(
                !is_bare(line),
                "{:?} is typed",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_name_that_only_starts_like_a_method_is_a_bare_name() {
        for name in [
            "list.txt",
            "LISTING",
            "GETa",
            "get.txt",
            "Getting started.md",
            "GET/a.txt",
            " GET a.txt",
        ] {
            assert!(is_bare(name.as_bytes()), "{name:?}");
            assert_eq!(
                parse(name.as_bytes(), false),
                Ok(Request::Bare { name: name.into() })
            );
        }
    }

    /// The price of the rule: a file whose name's first word is a method is typed in the bare form,
    /// and needs `./` (or a `GET`) to be fetched.
    #[test]
    fn a_name_whose_first_word_is_a_method_is_fetched_bare_behind_dot_slash() {
        assert!(!is_bare(b"get started.md"));
        assert_eq!(
            parse(b"./get started.md", false),
            Ok(Request::Bare {
                name: "get started.md".into()
            })
        );
        assert_eq!(
            parse(b"GET get started.md", false),
            get("get started.md", 0)
        );
    }

    #[test]
    fn requests_render_as_their_canonical_line() {
        let render = |line: &[u8]| parse(line, false).unwrap().to_string();
        assert_eq!(render(b"GET ./a//b.txt 0"), "GET a/b.txt");
        assert_eq!(render(b"GET a.txt 007"), "GET a.txt 7");
        assert_eq!(render(b"GET report 2024 0"), "GET report 2024 0");
        assert_eq!(render(b"LIST\r"), "LIST");
        assert_eq!(render(b"./notes.txt"), "notes.txt");
        assert_eq!(render(b"./LIST"), "./LIST");
        assert_eq!(render(b".//get x"), "./get x");
        assert_eq!(render(b"GET/"), "./GET");
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
    fn control_characters_in_a_name_are_forbidden() {
        for bad in ["a\tb", "line\rbreak", "esc\u{1b}[0m", "del\u{7f}"] {
            assert_eq!(
                check_name(bad, false),
                Err(Refusal::Forbidden("control character in name")),
                "{bad:?}"
            );
        }
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

/// Properties over generated lines: `parse` never panics, the line's form (`is_bare`) and the
/// parse agree, and a parsed request renders to a line that parses back to it.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Lines built from the pieces the parser cares about, so that near misses, offsets, dot
    /// components and forbidden bytes meet far more often than in random bytes.
    fn request_lines() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just("GET"),
            Just("get"),
            Just("LIST"),
            Just("List"),
            Just(" "),
            Just("\t"),
            Just("\r"),
            Just("/"),
            Just("."),
            Just(".."),
            Just("\\"),
            Just("\0"),
            Just("0"),
            Just("2024"),
            Just("18446744073709551616"),
            Just("a"),
            Just("é"),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat().into_bytes())
    }

    /// Anything a client could send: random bytes, random text, or a request-like line.
    fn any_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..48),
            any::<String>().prop_map(String::into_bytes),
            request_lines(),
        ]
    }

    /// A name as `check_name` returns it: components joined by `/`, none empty, `.`, `..` or
    /// hidden, no control characters; some with a method for their first word or digits at the
    /// end, the cases rendering must take care of.
    fn served_name() -> impl Strategy<Value = String> {
        let component = prop_oneof![
            "[a-zA-Z0-9 é_-][a-zA-Z0-9 .é_-]{0,8}",
            Just("get".to_string()),
            Just("LIST 1".to_string()),
            Just("GET".to_string()),
            Just(" 5".to_string()),
        ];
        prop::collection::vec(component, 1..4).prop_map(|parts| parts.join("/"))
    }

    fn valid_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (served_name(), prop_oneof![Just(0), any::<u64>()])
                .prop_map(|(name, offset)| Request::Get { name, offset }),
            Just(Request::List),
            served_name().prop_map(|name| Request::Bare { name }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// parse(render(parse(x))) == parse(x) for every accepted x, and the form is kept.
        #[test]
        fn a_parsed_line_re_renders_to_a_line_that_parses_the_same(
            line in any_line(),
            serve_hidden in any::<bool>(),
        ) {
            let Ok(request) = parse(&line, serve_hidden) else {
                return Ok(());
            };
            prop_assert_eq!(is_bare(&line), matches!(request, Request::Bare { .. }));
            let rendered = request.to_string();
            prop_assert_eq!(is_bare(rendered.as_bytes()), is_bare(&line));
            prop_assert_eq!(parse(rendered.as_bytes(), serve_hidden), Ok(request));
        }

        #[test]
        fn a_valid_request_renders_and_parses_back_to_itself(request in valid_request()) {
            let rendered = request.to_string();
            prop_assert_eq!(parse(rendered.as_bytes(), false), Ok(request));
        }
    }
}
