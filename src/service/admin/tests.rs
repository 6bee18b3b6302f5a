//! The admin HTTP state machine, state by state, on a scripted fake socket.
//!
//! Each state has a fixture that builds a connection already in it; every (state, input) pair has a
//! test below its state's banner, or a comment saying why it has none. The inputs are the loop's
//! calls: `on_readable`, `on_writable`, `on_timeout`, `on_shutdown`, and, for content only the loop
//! has, `wants` and `supply`; the loop's own part (rendering content, resuming a connection that
//! gave its turn back) is played by [`serve`]. The scratch buffer is 4 KiB, so a head near
//! [`MAX_HEAD`] takes several reads.

use std::io;
use std::time::{Duration, Instant};

use mio::Interest;

use super::http::{MAX_HEAD, MAX_HEADERS, Status};
use super::{Connection, Content, DEFAULT_ROW_LIMIT, PAGE, State, Supply, TEXT, WRITE_TIMEOUT};
use crate::service::fake::{self, Fake, Input, close};
use crate::service::{Handler, KEEP, Next, resume};
use crate::stats::Moved;
use crate::stats::{CloseReason, Metric, ServiceId, ServiceMetric};

/// The loop's side of an admin connection: admin needs nothing besides what every kind gets.
type Harness = fake::Harness<Admin>;

/// The kind under test.
struct Admin;

impl Harness {
    /// With a 4 KiB scratch buffer, so a head near [`MAX_HEAD`] takes several reads.
    fn new() -> Self {
        let mut h = fake::Harness::of(Admin);
        h.scratch = vec![0; 4096];
        h
    }

    fn connection(&mut self, fake: Fake) -> Connection<Fake> {
        Connection::new(fake, self.now, &self.settings)
    }
}

/// The loop's part for a connection that gave its turn back: supply what it wants, then resume
/// it (readable, then writable), as `EventLoop::supply_admin` and `Endpoint::on_resume` do.
fn serve(c: &mut Connection<Fake>, h: &mut Harness, supply: Supply) -> Next {
    assert!(c.wants().is_some(), "supplied only what was asked for");
    c.supply(supply);
    resume(c, &mut h.ctx())
}

/// `/healthz`'s content while the server runs, as the loop renders it.
fn healthy() -> Supply {
    Supply::Whole {
        status: Status::Ok,
        content_type: TEXT,
        body: b"ok\n".to_vec(),
    }
}

/// Everything the client has received, as text.
fn received(c: &Connection<Fake>) -> String {
    String::from_utf8_lossy(&c.stream.output).into_owned()
}

/// The response a plain-text answer of the connection's own makes, byte for byte.
fn plain(status: &str, close: bool, body: &str) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
}

/// The head of a response: up to and with its blank line.
fn head_of(response: &str) -> &str {
    let end = response
        .find("\r\n\r\n")
        .map_or(response.len(), |at| at + 4);
    &response[..end]
}

/// A 404 on a kept connection: the response the tests use where any small answer will do.
fn not_found() -> String {
    plain("404 Not Found", false, "not found\n")
}

/// The head of a streamed `/connections` response on a kept connection.
const STREAMED_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
    Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";

/// `/connections` with nothing in the query: every row.
fn all_rows() -> Content {
    Content::Connections {
        next: 0,
        left: DEFAULT_ROW_LIMIT,
        service: None,
    }
}

/// The request arrives in one read and the client takes the response as fast as it comes.
fn exchange(h: &mut Harness, request: &[u8]) -> (Connection<Fake>, Next) {
    let mut c = h.connection(Fake::with_input(&[request]));
    let next = c.on_readable(&mut h.ctx());
    (c, next)
}

/// The request is refused: its status goes out whole, FIN follows, and the connection lingers.
fn assert_refused(h: &mut Harness, request: &[u8], status: &str) -> Connection<Fake> {
    let (c, next) = exchange(h, request);
    assert_eq!(next, KEEP);
    let reason = status.split_once(' ').map_or("", |(_, reason)| reason);
    assert_eq!(received(&c), plain(status, true, &format!("{reason}\n")));
    assert_eq!(c.state().to_string(), "LINGERING");
    assert!(c.stream.fin_sent);
    c
}

// ---- fixtures: one per state -------------------------------------------------------------------

/// Nothing has arrived yet.
fn reading(h: &mut Harness) -> Connection<Fake> {
    h.connection(Fake::with_input(&[]))
}

/// Part of a head has arrived.
fn reading_started(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[b"GET /nope HT"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "READING");
    assert!(c.stream.output.is_empty());
    c
}

/// `GET /nope` was read and the client takes nothing: the whole 404 waits in `out`.
fn writing(h: &mut Harness) -> Connection<Fake> {
    let mut fake = Fake::with_input(&[b"GET /nope HTTP/1.1\r\n\r\n"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "WRITING");
    assert!(c.stream.output.is_empty());
    c
}

/// `GET /healthz` was read: the connection waits for the loop to supply the health, and has given
/// its turn back (budget 0) so that the loop does so before calling it again.
fn writing_pending(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[b"GET /healthz HTTP/1.1\r\n\r\n"]));
    let mut ctx = h.ctx();
    assert_eq!(c.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "the turn is given back");
    assert_eq!(c.state().to_string(), "WRITING");
    assert_eq!(c.wants(), Some(&Content::Health));
    c
}

/// `GET /connections` was read: the head went out, and the rows are wanted.
fn streaming(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[b"GET /connections HTTP/1.1\r\n\r\n"]));
    let mut ctx = h.ctx();
    assert_eq!(c.on_readable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "the turn is given back");
    assert_eq!(received(&c), STREAMED_HEAD);
    assert_eq!(c.wants(), Some(&all_rows()));
    c
}

/// `GET /nope` with `Connection: close` was answered in full: FIN is sent.
fn lingering(h: &mut Harness) -> Connection<Fake> {
    let (c, next) = exchange(h, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(next, KEEP);
    assert_eq!(c.state().to_string(), "LINGERING");
    assert!(c.stream.fin_sent);
    c
}

// ---- READING -----------------------------------------------------------------------------------

#[test]
fn reading_wants_readable_until_the_head_timeout_and_owes_nothing() {
    let mut h = Harness::new();
    let c = reading(&mut h);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(c.deadline(), h.now + h.settings.admin_timeout);
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.wants(), None);
}

#[test]
fn reading_root_sends_the_page_as_html_and_keeps_the_connection() {
    let mut h = Harness::new();
    let (c, next) = exchange(&mut h, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(next, KEEP);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\n\r\n",
        PAGE.len()
    );
    assert_eq!(received(&c), format!("{head}{PAGE}"));
    assert_eq!(c.state().to_string(), "READING");
    assert_eq!(c.interest(), Interest::READABLE);
    assert!(!c.stream.fin_sent);
}

#[test]
fn reading_head_gets_the_head_alone_with_the_length_a_get_would_have() {
    let mut h = Harness::new();
    let (get, _) = exchange(&mut h, b"GET / HTTP/1.1\r\n\r\n");
    let (head, next) = exchange(&mut h, b"HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!(next, KEEP);
    assert_eq!(received(&get), format!("{}{PAGE}", received(&head)));
    assert!(received(&head).contains(&format!("Content-Length: {}\r\n", PAGE.len())));
    assert_eq!(head.state().to_string(), "READING");

    let (c, _) = exchange(&mut h, b"HEAD /nope HTTP/1.1\r\n\r\n");
    assert_eq!(received(&c), head_of(&not_found()));
}

#[test]
fn reading_an_unknown_path_gets_404_and_keeps_the_connection() {
    let mut h = Harness::new();
    for target in ["/nope", "/healthz/", "/connections/x", "/index.html"] {
        let (c, next) = exchange(&mut h, format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(next, KEEP, "{target}");
        assert_eq!(received(&c), not_found(), "{target}");
        assert_eq!(c.state().to_string(), "READING", "{target}");
    }
}

#[test]
fn reading_answers_a_head_that_arrives_in_pieces_once_it_is_whole() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    for piece in [&b"TP/1.1\r\n"[..], b"Host: x\r", b"\n"] {
        c.stream.input.push_back(Input::Bytes(piece.to_vec()));
        assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
        assert!(c.stream.output.is_empty(), "nothing before the blank line");
        assert_eq!(c.state().to_string(), "READING");
    }
    c.stream.input.push_back(Input::Bytes(b"\r\n".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
}

/// A client trickling its head a byte at a time is not waited for: bytes that arrive do not move
/// the deadline, so the whole head must come within `--admin-timeout`.
#[test]
fn reading_a_trickling_head_does_not_push_its_deadline() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    let deadline = c.deadline();
    h.now += Duration::from_secs(5);
    c.stream.input.push_back(Input::Bytes(b"T".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.deadline(), deadline);
}

#[test]
fn reading_counts_the_bytes_of_both_directions_and_each_request_once() {
    let mut h = Harness::new();
    let requests = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\n\r\n";
    let (c, _) = exchange(&mut h, requests);
    assert_eq!(h.stats.get(Metric::BytesIn), requests.len() as u64);
    assert_eq!(h.stats.get(Metric::BytesOut), c.stream.output.len() as u64);
    let answered = h
        .stats
        .service_get(ServiceId::Admin, ServiceMetric::Requests);
    assert_eq!(answered, 2, "the 404 and the refused POST");
}

#[test]
fn reading_http_1_0_is_answered_then_the_connection_lingers() {
    let mut h = Harness::new();
    let (c, next) = exchange(&mut h, b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(next, KEEP);
    assert_eq!(received(&c), plain("404 Not Found", true, "not found\n"));
    assert_eq!(c.state().to_string(), "LINGERING");
    assert!(c.stream.fin_sent);
}

#[test]
fn reading_http_1_0_asking_for_keep_alive_keeps_the_connection() {
    let mut h = Harness::new();
    let (c, next) = exchange(
        &mut h,
        b"GET /nope HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(next, KEEP);
    assert_eq!(received(&c), not_found());
    assert_eq!(c.state().to_string(), "READING");
}

#[test]
fn reading_connection_close_is_answered_then_the_connection_lingers() {
    let mut h = Harness::new();
    let c = lingering(&mut h);
    assert_eq!(received(&c), plain("404 Not Found", true, "not found\n"));
}

/// Two requests in one read: the second waits in `input` while the first's response is owed, and
/// is answered as soon as that response has gone, without a new readable edge.
#[test]
fn reading_pipelined_requests_are_answered_in_order_each_after_the_last_response() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"GET /nope HTTP/1.1\r\n\r\nHEAD /nope HTTP/1.1\r\n\r\n"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "WRITING");
    assert_eq!(
        c.input, b"HEAD /nope HTTP/1.1\r\n\r\n",
        "the second request waits"
    );

    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(
        received(&c),
        format!("{}{}", not_found(), head_of(&not_found()))
    );
    assert_eq!(c.state().to_string(), "READING");
    assert!(c.input.is_empty());
}

/// A client may keep its pipe full of requests while it reads the responses as fast as they come.
/// One call answers a budget's worth and gives its turn back, as every handler does: it neither
/// holds the loop nor goes deeper into the stack with each request.
#[test]
fn reading_a_flood_of_pipelined_requests_yields_once_its_budget_is_spent() {
    let mut h = Harness::new();
    let request = b"GET /nope HTTP/1.1\r\n\r\n";
    let count = 20_000;
    let mut c = h.connection(Fake::with_input(&[&request.repeat(count)]));
    let mut calls = 0;
    while c.stream.output.len() < count * not_found().len() {
        let mut ctx = h.ctx();
        assert_eq!(c.on_readable(&mut ctx), KEEP);
        calls += 1;
        assert!(
            ctx.budget == 0 || c.stream.input.is_empty(),
            "stopped early with budget left"
        );
        assert!(calls < count, "no progress");
    }
    assert!(calls > 1, "one call answered all {count} requests");
    assert_eq!(c.stream.output, not_found().repeat(count).as_bytes());
    assert_eq!(c.state().to_string(), "READING");
}

#[test]
fn reading_a_method_other_than_get_or_head_gets_405_with_allow() {
    let mut h = Harness::new();
    let (c, next) = exchange(&mut h, b"POST /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(next, KEEP);
    let body = "Method Not Allowed\n";
    let expected = format!(
        "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Cache-Control: no-store\r\nContent-Length: {}\r\nAllow: GET, HEAD\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(received(&c), expected);
    assert_eq!(c.state().to_string(), "LINGERING");
}

/// The service reads no bodies: a request announcing one is refused rather than have its body
/// read as the next request.
#[test]
fn reading_a_request_with_a_body_gets_400_then_lingers() {
    let mut h = Harness::new();
    let request = b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET /";
    let c = assert_refused(&mut h, request, "400 Bad Request");
    assert!(c.input.is_empty(), "the body is dropped, never parsed");
    assert_refused(
        &mut h,
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "400 Bad Request",
    );
    let (c, _) = exchange(&mut h, b"GET /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(received(&c), not_found(), "an empty body is no body");
}

#[test]
fn reading_garbage_gets_400_then_lingers() {
    let mut h = Harness::new();
    assert_refused(&mut h, b"\x16\x03\x01 hello\r\n\r\n", "400 Bad Request");
}

/// 20 KiB of head arrive at once: the connection reads one byte past the limit, enough to know
/// it was passed, and leaves the rest in the kernel until it lingers.
#[test]
fn reading_a_head_over_8_kib_gets_431_holding_no_more_than_one_byte_past_the_limit() {
    let mut h = Harness::new();
    let head = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20 * 1024));
    let mut fake = Fake::with_input(&[head.as_bytes()]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.input.len(), MAX_HEAD + 1);
    assert_eq!(h.stats.get(Metric::BytesIn), MAX_HEAD as u64 + 1);
    assert!(
        matches!(c.stream.input.front(), Some(Input::Bytes(rest)) if rest.len() == head.len() - MAX_HEAD - 1)
    );

    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    let reason = "Request Header Fields Too Large";
    let expected = plain(&format!("431 {reason}"), true, &format!("{reason}\n"));
    assert_eq!(received(&c), expected);
    assert_eq!(c.state().to_string(), "LINGERING");
    assert!(c.input.is_empty(), "lingering holds no input");
    assert!(c.stream.input.is_empty(), "the rest is read and dropped");
}

#[test]
fn reading_a_head_of_exactly_8_kib_is_answered() {
    let mut h = Harness::new();
    let start = "GET /nope HTTP/1.1\r\nX: ";
    let filler = "a".repeat(MAX_HEAD - start.len() - 4);
    let head = format!("{start}{filler}\r\n\r\n");
    assert_eq!(head.len(), MAX_HEAD);
    let (c, _) = exchange(&mut h, head.as_bytes());
    assert_eq!(received(&c), not_found());

    let head = format!("{start}a{filler}\r\n\r\n");
    let reason = "Request Header Fields Too Large";
    let status = format!("431 {reason}");
    assert_refused(&mut h, head.as_bytes(), &status);
}

/// A response to `HEAD` carries no body (RFC 9110, section 9.3.2), and a refusal is no exception:
/// the head alone, with the length the body would have had.
#[test]
fn reading_a_refused_head_request_gets_the_head_alone() {
    let headers: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
    let too_many = format!("HEAD / HTTP/1.1\r\n{headers}\r\n");
    let large = "Request Header Fields Too Large";
    for (request, status, reason) in [
        (
            &b"HEAD / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            400,
            "Bad Request",
        ),
        (
            b"\r\nHEAD / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            400,
            "Bad Request",
        ),
        (
            b"HEAD /connections?limit=x HTTP/1.1\r\n\r\n",
            400,
            "Bad Request",
        ),
        (too_many.as_bytes(), 431, large),
    ] {
        let mut h = Harness::new();
        let (c, next) = exchange(&mut h, request);
        assert_eq!(next, KEEP);
        let full = plain(&format!("{status} {reason}"), true, &format!("{reason}\n"));
        assert_eq!(
            received(&c),
            head_of(&full),
            "{status} for {:?}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(c.state().to_string(), "LINGERING");
    }

    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"HEAD /healthz HTTP/1.1\r\nHo"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    let full = plain("408 Request Timeout", true, "Request Timeout\n");
    assert_eq!(received(&c), head_of(&full));
}

#[test]
fn reading_too_many_headers_gets_431_then_lingers() {
    let mut h = Harness::new();
    let headers: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\n{headers}\r\n");
    assert_refused(
        &mut h,
        request.as_bytes(),
        "431 Request Header Fields Too Large",
    );
}

// `/healthz` and `/connections` need what only the loop has. The connection names the content,
// gives its turn back (budget 0), and the loop supplies it before calling again.

#[test]
fn reading_healthz_asks_the_loop_for_the_health_and_sends_it_whole() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    assert!(c.stream.output.is_empty(), "nothing before the content");
    assert_eq!(serve(&mut c, &mut h, healthy()), KEEP);
    assert_eq!(received(&c), plain("200 OK", false, "ok\n"));
    assert_eq!(c.state().to_string(), "READING");
}

#[test]
fn reading_healthz_while_draining_sends_the_503_it_is_supplied() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    let draining = Supply::Whole {
        status: Status::Unavailable,
        content_type: TEXT,
        body: b"draining\n".to_vec(),
    };
    assert_eq!(serve(&mut c, &mut h, draining), KEEP);
    let expected = plain("503 Service Unavailable", false, "draining\n");
    assert_eq!(received(&c), expected);
}

#[test]
fn reading_head_healthz_gets_the_head_alone_with_the_bodys_length() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"HEAD /healthz HTTP/1.1\r\n\r\n"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.wants(), Some(&Content::Health));
    assert_eq!(serve(&mut c, &mut h, healthy()), KEEP);
    assert_eq!(received(&c), head_of(&plain("200 OK", false, "ok\n")));
}

#[test]
fn reading_connections_sends_the_chunked_head_first_then_asks_for_rows() {
    let mut h = Harness::new();
    let c = streaming(&mut h);
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.interest(), Interest::WRITABLE);
}

#[test]
fn reading_connections_passes_service_and_limit_on() {
    let mut h = Harness::new();
    let request = b"GET /connections?service=echo&limit=3 HTTP/1.1\r\n\r\n";
    let (c, _) = exchange(&mut h, request);
    let wanted = Content::Connections {
        next: 0,
        left: 3,
        service: Some("echo".to_string()),
    };
    assert_eq!(c.wants(), Some(&wanted));
}

#[test]
fn reading_connections_with_a_limit_that_is_no_number_gets_400() {
    let mut h = Harness::new();
    for query in ["limit=x", "limit=", "limit=-1", "service=echo&limit"] {
        let request = format!("GET /connections?{query} HTTP/1.1\r\n\r\n");
        let c = assert_refused(&mut h, request.as_bytes(), "400 Bad Request");
        assert_eq!(c.wants(), None, "{query}");
    }
}

#[test]
fn reading_head_connections_gets_the_chunked_head_and_asks_for_no_rows() {
    let mut h = Harness::new();
    let (c, next) = exchange(&mut h, b"HEAD /connections HTTP/1.1\r\n\r\n");
    assert_eq!(next, KEEP);
    assert_eq!(received(&c), STREAMED_HEAD);
    assert_eq!(c.wants(), None);
    assert_eq!(c.state().to_string(), "READING");
}

#[test]
fn reading_fin_mid_head_closes_without_an_answer() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    c.stream.input.push_back(Input::Fin);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert!(c.stream.output.is_empty());
}

#[test]
fn reading_fin_before_any_request_closes_as_peer_closed() {
    let mut h = Harness::new();
    let mut c = reading(&mut h);
    c.stream.input.push_back(Input::Fin);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
}

/// `printf 'GET / ...' | nc` sends its request and its FIN together: the request is answered
/// before the FIN is read.
#[test]
fn reading_a_request_followed_by_fin_is_answered_before_the_close() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"GET /nope HTTP/1.1\r\n\r\n"]);
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert_eq!(received(&c), not_found());
}

#[test]
fn reading_closes_on_a_reset_as_reset_and_on_other_read_errors_as_error() {
    for (kind, reason) in [
        (io::ErrorKind::ConnectionReset, CloseReason::Reset),
        (io::ErrorKind::InvalidData, CloseReason::Error),
    ] {
        let mut h = Harness::new();
        let mut c = reading_started(&mut h);
        c.stream.input.push_back(Input::Fail(kind));
        assert_eq!(c.on_readable(&mut h.ctx()), close(reason), "{kind:?}");
    }
}

#[test]
fn reading_retries_interrupted_reads() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"GET /nope HTTP/1.1\r\n\r\n"]);
    fake.interrupt = true;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
}

#[test]
fn reading_writable_writes_nothing() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
    assert_eq!(c.state().to_string(), "READING");
}

#[test]
fn reading_timeout_with_part_of_a_head_answers_408_then_lingers() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    let expected = plain("408 Request Timeout", true, "Request Timeout\n");
    assert_eq!(received(&c), expected);
    assert_eq!(c.state().to_string(), "LINGERING");
}

#[test]
fn reading_timeout_with_nothing_received_closes_quietly_as_idle() {
    let mut h = Harness::new();
    let mut c = reading(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
    assert!(c.stream.output.is_empty());
}

/// After a response the next head gets a fresh `--admin-timeout`; a keep-alive connection that
/// sends nothing more in that time ends quietly.
#[test]
fn reading_after_a_response_waits_one_head_timeout_for_the_next_request() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    h.now += Duration::from_secs(3);
    c.stream
        .input
        .push_back(Input::Bytes(b"TP/1.1\r\n\r\n".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.deadline(), h.now + h.settings.admin_timeout);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn reading_shutdown_keeps_serving_in_the_same_state() {
    let mut h = Harness::new();
    let mut c = reading_started(&mut h);
    let deadline = c.deadline();
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "READING");
    assert_eq!(c.deadline(), deadline);
    c.stream
        .input
        .push_back(Input::Bytes(b"TP/1.1\r\n\r\n".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
}

/// The loop supplies only what `wants` asked for, and nothing is wanted outside WRITING.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "content supplied outside WRITING")]
fn reading_supply_is_a_bug_of_the_loop() {
    let mut h = Harness::new();
    let mut c = reading(&mut h);
    c.supply(healthy());
}

// ---- WRITING -----------------------------------------------------------------------------------

#[test]
fn writing_wants_writable_and_holds_the_unsent_response() {
    let mut h = Harness::new();
    let c = writing(&mut h);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.buffered(), not_found().len());
    assert_eq!(c.deadline(), h.now + WRITE_TIMEOUT);
    assert_eq!(c.wants(), None, "the response is the connection's own");
}

#[test]
fn writing_a_partial_write_keeps_the_rest_owed_and_writable_interest() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    c.stream.window = 10;
    h.now += Duration::from_secs(5);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, &not_found().as_bytes()[..10]);
    assert_eq!(c.buffered(), not_found().len() - 10);
    assert_eq!(c.state().to_string(), "WRITING");
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.deadline(), h.now + WRITE_TIMEOUT, "progress moves it");

    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
    assert_eq!(c.state().to_string(), "READING");
    assert_eq!(h.stats.get(Metric::BytesOut), not_found().len() as u64);
}

#[test]
fn writing_a_full_socket_does_not_move_the_deadline() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    let deadline = c.deadline();
    h.now += Duration::from_secs(5);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.deadline(), deadline);
}

#[test]
fn writing_readable_leaves_the_next_request_in_the_kernel() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    c.stream
        .input
        .push_back(Input::Bytes(b"GET /nope HTTP/1.1\r\n\r\n".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.input.len(), 1, "nothing read");

    // Once the response has gone, the waiting request is read and answered at once.
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found().repeat(2));
}

#[test]
fn writing_retries_interrupted_writes() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    c.stream.window = usize::MAX;
    c.stream.interrupt = true;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
}

#[test]
fn writing_closes_on_a_broken_pipe_as_reset_and_on_other_write_errors_as_error() {
    for (kind, reason) in [
        (io::ErrorKind::BrokenPipe, CloseReason::Reset),
        (io::ErrorKind::InvalidData, CloseReason::Error),
    ] {
        let mut h = Harness::new();
        let mut c = writing(&mut h);
        c.stream.write_error = Some(kind);
        assert_eq!(c.on_writable(&mut h.ctx()), close(reason), "{kind:?}");
    }
}

#[test]
fn writing_times_out_as_idle_when_the_client_takes_nothing() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn writing_shutdown_keeps_sending_in_the_same_state() {
    let mut h = Harness::new();
    let mut c = writing(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "WRITING");
    assert_eq!(c.buffered(), not_found().len());
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
    assert_eq!(c.state().to_string(), "READING", "still kept alive");
}

#[test]
fn writing_a_refusal_times_out_as_idle_too() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"POST / HTTP/1.1\r\n\r\n"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "WRITING");
    assert_eq!(c.deadline(), h.now + WRITE_TIMEOUT);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

// WRITING with content pending: `wants` names it once `out` is empty, and `supply` adds it.

#[test]
fn writing_pending_waits_writable_for_the_loop_to_supply() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.deadline(), h.now + WRITE_TIMEOUT);
    // Called again before the loop supplied (a writable edge in the same batch): it asks again.
    let mut ctx = h.ctx();
    assert_eq!(c.on_writable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.wants(), Some(&Content::Health));
    assert!(c.stream.output.is_empty());
}

#[test]
fn writing_supply_whole_owes_head_and_body_until_written() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    c.supply(healthy());
    assert_eq!(c.wants(), None, "supplied");
    assert_eq!(c.buffered(), plain("200 OK", false, "ok\n").len());
    assert_eq!(c.state().to_string(), "WRITING");
}

#[test]
fn writing_supply_whole_to_a_closing_request_says_so_and_lingers() {
    let mut h = Harness::new();
    let request = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
    let (mut c, _) = exchange(&mut h, request);
    assert_eq!(serve(&mut c, &mut h, healthy()), KEEP);
    assert_eq!(received(&c), plain("200 OK", true, "ok\n"));
    assert_eq!(c.state().to_string(), "LINGERING");
}

/// The rows come a piece at a time, each asked for only once the one before has gone to the
/// socket, so the connection never holds more than one piece.
#[test]
fn writing_streamed_rows_are_asked_for_one_piece_at_a_time_once_out_is_empty() {
    let mut h = Harness::new();
    let mut c = streaming(&mut h);
    let second = Content::Connections {
        next: 7,
        left: DEFAULT_ROW_LIMIT - 2,
        service: None,
    };
    c.stream.window = 4;
    let first = Supply::Piece {
        bytes: b"[{},{}".to_vec(),
        next: Some(second.clone()),
    };
    assert_eq!(serve(&mut c, &mut h, first), KEEP);
    assert_eq!(received(&c), format!("{STREAMED_HEAD}6\r\n["));
    assert_eq!(c.wants(), None, "the first piece is still owed");
    assert_eq!(c.buffered(), "{},{}\r\n".len());

    c.stream.window = usize::MAX;
    let mut ctx = h.ctx();
    assert_eq!(c.on_writable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "the turn is given back for the next piece");
    assert_eq!(c.wants(), Some(&second));

    let last = Supply::Piece {
        bytes: b",{}]\n".to_vec(),
        next: None,
    };
    assert_eq!(serve(&mut c, &mut h, last), KEEP);
    let body = "6\r\n[{},{}\r\n5\r\n,{}]\n\r\n0\r\n\r\n";
    assert_eq!(received(&c), format!("{STREAMED_HEAD}{body}"));
    assert_eq!(c.wants(), None);
    assert_eq!(c.state().to_string(), "READING");
}

/// A piece may hold no rows (a filter matched none in its stretch of the table): nothing is framed
/// for it, since an empty chunk would end the body, and the next piece is asked for at once.
#[test]
fn writing_an_empty_piece_frames_nothing_and_asks_for_the_next() {
    let mut h = Harness::new();
    let mut c = streaming(&mut h);
    let empty = Supply::Piece {
        bytes: Vec::new(),
        next: Some(all_rows()),
    };
    c.supply(empty);
    let mut ctx = h.ctx();
    assert_eq!(resume(&mut c, &mut ctx), KEEP);
    assert_eq!(ctx.budget, 0);
    assert_eq!(received(&c), STREAMED_HEAD);
    assert_eq!(c.wants(), Some(&all_rows()));
    assert_eq!(c.state().to_string(), "WRITING");
}

/// A connection that will close does not need chunks: the close ends the body. HTTP/1.0, which
/// knows no chunks (RFC 9112 §6.1), always gets it so, even when it asks to keep the connection.
#[test]
fn writing_the_last_piece_to_a_closing_request_ends_the_body_with_the_close() {
    for request in [
        &b"GET /connections HTTP/1.0\r\n\r\n"[..],
        b"GET /connections HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /connections HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let mut h = Harness::new();
        let (mut c, _) = exchange(&mut h, request);
        let last = Supply::Piece {
            bytes: b"[]\n".to_vec(),
            next: None,
        };
        assert_eq!(serve(&mut c, &mut h, last), KEEP);
        let sent = received(&c);
        assert!(!sent.contains("Transfer-Encoding"), "{sent}");
        assert!(sent.ends_with("Connection: close\r\n\r\n[]\n"), "{sent}");
        assert_eq!(c.state().to_string(), "LINGERING");
    }
}

/// The loop resumes a connection readable first: in WRITING that reads nothing, so the request
/// behind the streamed one stays unread until the stream has ended.
#[test]
fn writing_a_request_pipelined_behind_a_stream_is_answered_after_it() {
    let mut h = Harness::new();
    let two = b"GET /connections HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n";
    let (mut c, _) = exchange(&mut h, two);
    assert_eq!(c.wants(), Some(&all_rows()));
    let last = Supply::Piece {
        bytes: b"[]\n".to_vec(),
        next: None,
    };
    assert_eq!(serve(&mut c, &mut h, last), KEEP);
    let streamed = format!("{STREAMED_HEAD}3\r\n[]\n\r\n0\r\n\r\n");
    assert_eq!(received(&c), format!("{streamed}{}", not_found()));
}

#[test]
fn writing_pending_shutdown_keeps_the_content_wanted() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.wants(), Some(&Content::Health));
}

#[test]
fn writing_pending_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = writing_pending(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

// ---- LINGERING ---------------------------------------------------------------------------------

#[test]
fn lingering_wants_readable_owes_nothing_and_wants_no_content() {
    let mut h = Harness::new();
    let c = lingering(&mut h);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.wants(), None);
}

#[test]
fn lingering_ends_at_its_deadline_as_finished() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.deadline(), h.now + h.settings.linger);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Finished));
}

/// A request sent behind a `Connection: close` one is read and dropped, never answered.
#[test]
fn lingering_discards_input_until_the_clients_fin() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    let sent = c.stream.output.len();
    c.stream
        .input
        .push_back(Input::Bytes(b"GET /nope HTTP/1.1\r\n\r\n".to_vec()));
    c.stream.interrupt = true;
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(c.stream.input.is_empty(), "read through the interruption");
    assert!(c.input.is_empty(), "dropped, not kept");
    c.stream.input.push_back(Input::Fin);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Finished));
    assert_eq!(c.stream.output.len(), sent, "nothing written after FIN");
}

#[test]
fn lingering_writable_writes_nothing() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    let sent = c.stream.output.len();
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output.len(), sent);
}

#[test]
fn lingering_closes_on_a_reset_as_reset_and_on_other_read_errors_as_error() {
    for (kind, reason) in [
        (io::ErrorKind::ConnectionReset, CloseReason::Reset),
        (io::ErrorKind::InvalidData, CloseReason::Error),
    ] {
        let mut h = Harness::new();
        let mut c = lingering(&mut h);
        c.stream.input.push_back(Input::Fail(kind));
        assert_eq!(c.on_readable(&mut h.ctx()), close(reason), "{kind:?}");
    }
}

#[test]
fn lingering_shutdown_keeps_lingering() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    let until = c.deadline();
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(c.state().to_string(), "LINGERING");
    assert_eq!(c.deadline(), until);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "content supplied outside WRITING")]
fn lingering_supply_is_a_bug_of_the_loop() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    c.supply(healthy());
}

// Entering LINGERING sends FIN, and `shutdown(2)` can fail (`ENOTCONN` once the peer is gone),
// which closes through the same `io_failure` as a read or write error. The fake's FIN never fails,
// so that arm has no test here; the read and write errors above cover the mapping to a reason.

// ---- the access log (--access-log) -------------------------------------------------------------
// The line itself goes to the logger; what the state machine owes it is what WRITING keeps for it
// (`Logged`), filled in as the response is decided and written, and given up once it is out.

/// What WRITING keeps for the access line: what was asked, the status, the bytes so far.
fn logged(c: &Connection<Fake>) -> Option<(Option<String>, Option<Status>, Moved)> {
    match c.state() {
        State::Writing { logged, .. } => logged
            .as_ref()
            .map(|logged| (logged.asked.clone(), logged.status, logged.moved)),
        State::Reading { .. } | State::Lingering { .. } => None,
    }
}

fn moved(bytes_in: usize, bytes_out: usize) -> Moved {
    Moved {
        bytes_in: bytes_in as u64,
        bytes_out: bytes_out as u64,
    }
}

#[test]
fn with_the_access_log_off_a_response_keeps_nothing_for_it() {
    let mut h = Harness::new();
    for c in [writing(&mut h), writing_pending(&mut h), streaming(&mut h)] {
        assert!(matches!(c.state(), State::Writing { logged: None, .. }));
    }
}

#[test]
fn with_the_access_log_on_a_response_keeps_its_request_status_and_bytes_until_it_is_out() {
    let mut h = Harness::new();
    h.log_access("admin");
    let head = b"GET /nope?x=1 HTTP/1.1\r\n\r\n";
    let mut fake = Fake::with_input(&[head]);
    fake.window = 10;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    let asked = Some("GET /nope?x=1".to_string());
    let expected = (asked, Some(Status::NotFound), moved(head.len(), 10));
    assert_eq!(logged(&c), Some(expected));

    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(received(&c), not_found());
    assert_eq!(
        c.state().to_string(),
        "READING",
        "the line is written, nothing kept"
    );
}

/// The loop stops (the shutdown grace is over) while a response is still going out: its line is
/// written then, closed by the shutdown, and nothing is kept for it.
#[test]
fn with_the_access_log_on_a_stop_writes_the_line_of_a_response_under_way() {
    let mut h = Harness::new();
    h.log_access("admin");
    let head = b"GET /nope HTTP/1.1\r\n\r\n";
    let mut fake = Fake::with_input(&[head]);
    fake.window = 10;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(logged(&c).is_some(), "under way: the line is owed");
    c.on_stop(&mut h.ctx());
    assert!(
        matches!(c.state(), State::Writing { logged: None, .. }),
        "the line is written: {}",
        c.state()
    );
}

#[test]
fn with_the_access_log_on_a_supplied_status_is_the_one_logged() {
    let mut h = Harness::new();
    h.log_access("admin");
    let head = b"HEAD /healthz HTTP/1.1\r\n\r\n";
    let mut c = h.connection(Fake::with_input(&[head]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    let asked = Some("HEAD /healthz".to_string());
    assert_eq!(
        logged(&c),
        Some((asked.clone(), None, moved(head.len(), 0)))
    );
    c.supply(Supply::Whole {
        status: Status::Unavailable,
        content_type: TEXT,
        body: b"draining\n".to_vec(),
    });
    assert_eq!(
        logged(&c),
        Some((asked, Some(Status::Unavailable), moved(head.len(), 0)))
    );
}

#[test]
fn with_the_access_log_on_a_refused_head_is_kept_with_its_status_and_nothing_asked() {
    let mut h = Harness::new();
    h.log_access("admin");
    let head = b"POST / HTTP/1.1\r\n\r\n";
    let mut fake = Fake::with_input(&[head]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    let expected = (None, Some(Status::MethodNotAllowed), moved(head.len(), 0));
    assert_eq!(logged(&c), Some(expected));
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn states_print_the_names_of_the_design_diagram() {
    let now = Instant::now();
    let names: Vec<String> = [
        State::Reading { deadline: now },
        State::Writing {
            out: crate::buffer::Buffer::new(),
            pending: None,
            method: super::http::Method::Get,
            keep_alive: true,
            deadline: now,
            logged: None,
        },
        State::Lingering { until: now },
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(names, ["READING", "WRITING", "LINGERING"]);
}
