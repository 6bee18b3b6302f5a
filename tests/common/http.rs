//! A minimal blocking HTTP/1.1 client for the admin service's tests: one request, its whole
//! response (`Content-Length`, chunked, or up to a close the head announced), every read bounded
//! by [`IO_TIMEOUT`](super::IO_TIMEOUT).
//!
//! Deliberately small and strict: it parses exactly the framing the server claims to send, so a
//! framing mistake fails a test instead of being papered over by a forgiving client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::connect;

/// One response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find_map(|(key, value)| (*key == name).then_some(value.as_str()))
    }

    /// The body as text.
    #[track_caller]
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `GET path` on a new connection that closes after the response.
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut client = Client::new(addr);
    client.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    ));
    client.response("GET")
}

/// A connection that may carry several requests (keep-alive).
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects, with the common read timeout.
    #[track_caller]
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            reader: BufReader::new(connect(addr)),
        }
    }

    /// Sends raw request bytes.
    #[track_caller]
    pub fn send(&mut self, request: &str) {
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("send the request");
    }

    /// Reads one response; `method` is the request's, since a `HEAD` response has no body.
    #[track_caller]
    pub fn response(&mut self, method: &str) -> Response {
        let status_line = self.line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" {
            return response;
        }
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line();
                let size = usize::from_str_radix(&size, 16).expect("a chunk size");
                let mut piece = vec![0; size + 2];
                self.reader.read_exact(&mut piece).expect("a chunk");
                assert_eq!(&piece[size..], b"\r\n", "a chunk ends with CRLF");
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&piece[..size]);
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().expect("a length");
            response.body = vec![0; length];
            self.reader
                .read_exact(&mut response.body)
                .expect("the body");
        } else {
            // No length and no chunks: the close ends the body, which the head must say.
            assert_eq!(
                response.header("connection"),
                Some("close"),
                "a body with no length or chunks ends only at a close"
            );
            self.reader
                .read_to_end(&mut response.body)
                .expect("the body, up to the close");
        }
        response
    }

    /// Whether the server has closed the connection (clean EOF, nothing more to read).
    #[track_caller]
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => panic!("reading to the close: {e}"),
        }
    }

    /// One CRLF-terminated line, without its CRLF.
    #[track_caller]
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line");
        assert!(n > 0, "the server closed mid-response");
        line.strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("a line ends with CRLF: {line:?}"))
            .to_string()
    }
}
