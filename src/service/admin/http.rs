//! The admin service's HTTP/1.1: reading a request head with `httparse`, and writing a response
//! head. No I/O here, so every rule is tested on byte strings.
//!
//! Only what a browser, `curl` and Prometheus send is accepted: `GET` and `HEAD`, no request body,
//! a head of at most [`MAX_HEAD`] bytes with at most [`MAX_HEADERS`] headers. Everything else gets
//! the status that says why (400 and 405 from RFC 9110, 431 from RFC 6585) and the connection
//! closes.

use std::fmt::Write as _;

/// Longest request head accepted, in bytes: browsers send well under 2 KiB; 8 KiB is the limit
/// most servers apply.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most headers in one request: a browser sends about 15.
pub const MAX_HEADERS: usize = 32;

/// The two methods the admin service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The resource, head and body.
    Get,
    /// The head a `GET` would get, without the body.
    Head,
}

/// A request head that the admin service will answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string after `?`, without it; empty when there is none.
    pub query: String,
    /// Whether the client wants the connection kept open after the response (HTTP/1.1 unless it
    /// says `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// HTTP/1.1 (rather than 1.0): only then may a response use chunked transfer coding.
    pub http11: bool,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet: read more.
    Partial,
    /// A whole head of this many bytes; any bytes after it belong to the next request.
    Complete(Request, usize),
    /// A request the service will not answer: reply with this status, then close.
    Refused(Status),
}

/// The statuses the admin service sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400: the head is not HTTP/1.x, or has a body; or a query the route cannot read.
    BadRequest,
    /// 404: no such path.
    NotFound,
    /// 405: a method other than GET or HEAD.
    MethodNotAllowed,
    /// 408: the head did not arrive in time.
    RequestTimeout,
    /// 431: the head is too large, or has too many headers.
    HeadersTooLarge,
    /// 503: `/healthz` while the server is draining.
    Unavailable,
}

impl Status {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadersTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

/// Parses the bytes received so far as one request head.
pub fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Parsed::Refused(Status::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Status::HeadersTooLarge),
        Err(_) => return Parsed::Refused(Status::BadRequest),
    };
    if length > MAX_HEAD {
        return Parsed::Refused(Status::HeadersTooLarge);
    }
    // `Complete` guarantees the method, the path and the version are there.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Refused(Status::BadRequest);
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Parsed::Refused(Status::MethodNotAllowed),
    };
    let mut keep_alive = version == 1;
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = tokens(value).any(|t| t.eq_ignore_ascii_case("keep-alive"))
                || (keep_alive && !tokens(value).any(|t| t.eq_ignore_ascii_case("close")));
        }
        // The service reads no bodies: a request announcing one cannot be framed, so it is refused
        // rather than have its body read as the next request.
        let body = (header.name.eq_ignore_ascii_case("content-length") && value != "0")
            || header.name.eq_ignore_ascii_case("transfer-encoding");
        if body {
            return Parsed::Refused(Status::BadRequest);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        keep_alive,
        http11: version == 1,
    };
    Parsed::Complete(request, length)
}

/// The method of a head refused or cut short, as far as it can be told: a response to `HEAD`
/// carries no body (RFC 9110, section 9.3.2), a refusal's included. Anything but `HEAD` is answered
/// as a `GET` would be.
pub fn method_of(input: &[u8]) -> Method {
    // A server ignores empty lines before the request line (RFC 9112, section 2.2); httparse does.
    let start = input
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if input[start..].starts_with(b"HEAD ") {
        Method::Head
    } else {
        Method::Get
    }
}

/// The comma-separated tokens of a header value.
fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

/// The value of `name` in a query string (`service=echo&limit=10`), if present.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// How the body after a response head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A body of this many bytes.
    Length(usize),
    /// A body produced piece by piece: chunked transfer coding, each piece framed by [`chunk`].
    Chunked,
    /// A body produced piece by piece that ends when the server closes the connection: for a
    /// client that will not keep it open anyway, or an HTTP/1.0 client, which knows no chunks.
    UntilClose,
}

/// A response head: status line, headers, blank line.
pub fn head(status: Status, content_type: &str, framing: Framing, keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\n",
        status.code(),
        status.reason()
    );
    // Writing into a String cannot fail.
    let _ = match framing {
        Framing::Length(length) => write!(head, "Content-Length: {length}\r\n"),
        Framing::Chunked => write!(head, "Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose => Ok(()),
    };
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str(if keep_alive {
        "\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head
}

/// Frames one piece of a chunked body; an empty piece is the last one.
pub fn chunk(piece: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> (Request, usize) {
        match parse(input) {
            Parsed::Complete(request, length) => (request, length),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn a_get_is_parsed_with_its_query_and_keeps_the_connection() {
        let input = b"GET /connections?service=echo&limit=5 HTTP/1.1\r\nHost: x\r\n\r\nGET /";
        let (request, length) = complete(input);
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.path, "/connections");
        assert_eq!(query_value(&request.query, "service"), Some("echo"));
        assert_eq!(query_value(&request.query, "limit"), Some("5"));
        assert_eq!(query_value(&request.query, "other"), None);
        assert!(request.keep_alive);
        assert_eq!(&input[length..], b"GET /", "the next request is left");
    }

    #[test]
    fn connection_headers_and_the_version_decide_keep_alive() {
        let close = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0;
        assert!(!close.keep_alive);
        let old = complete(b"HEAD / HTTP/1.0\r\n\r\n").0;
        assert_eq!(old.method, Method::Head);
        assert!(!old.keep_alive);
        let asked = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0;
        assert!(asked.keep_alive);
    }

    #[test]
    fn a_head_in_pieces_is_partial_until_its_blank_line() {
        assert_eq!(parse(b""), Parsed::Partial);
        assert_eq!(parse(b"GET /metr"), Parsed::Partial);
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
    }

    #[test]
    fn what_the_service_will_not_answer_gets_the_status_that_says_why() {
        let refused = |input: &[u8]| match parse(input) {
            Parsed::Refused(status) => status.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(b"POST / HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(refused(b"DELETE /x HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(refused(b"\x00\x01 garbage\r\n\r\n"), 400);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            refused(long.as_bytes()),
            431,
            "over the limit before it ends"
        );
    }

    #[test]
    fn the_method_of_a_refused_head_is_head_only_when_it_says_so() {
        assert_eq!(method_of(b"HEAD / HTTP/1.1\r\nX"), Method::Head);
        assert_eq!(method_of(b"\r\nHEAD /"), Method::Head);
        assert_eq!(method_of(b"HEAD"), Method::Get, "not yet told");
        assert_eq!(method_of(b"HEADER / HTTP/1.1"), Method::Get);
        assert_eq!(method_of(b"POST / HTTP/1.1"), Method::Get);
        assert_eq!(method_of(b""), Method::Get);
    }

    #[test]
    fn heads_frame_their_bodies() {
        let ok = head(Status::Ok, "text/plain", Framing::Length(3), true);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("Content-Length: 3\r\n"));
        assert!(ok.ends_with("no-store\r\nContent-Length: 3\r\n\r\n"));
        let streamed = head(Status::Ok, "application/json", Framing::Chunked, false);
        assert!(streamed.contains("Transfer-Encoding: chunked\r\n"));
        assert!(streamed.ends_with("Connection: close\r\n\r\n"));
        let refused = head(
            Status::MethodNotAllowed,
            "text/plain",
            Framing::Length(0),
            false,
        );
        assert!(refused.contains("Allow: GET, HEAD\r\n"));
        let mut body = Vec::new();
        chunk(b"[1,2]", &mut body);
        chunk(b"", &mut body);
        assert_eq!(body, b"5\r\n[1,2]\r\n0\r\n\r\n");
    }
}
