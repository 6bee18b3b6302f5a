//! The download state machine, state by state, on a scripted fake socket and a real served root.
//!
//! Each state has a fixture that builds a connection already in it; every (state, input) pair has a
//! test below its state's banner, or a comment saying why it has none. Clients turned away at
//! `--max-conns` get a section of their own. The root is a temporary directory holding `a.txt`
//! (12 bytes), `big.bin` (200 bytes), `.hidden` and an empty `dir/`; the scratch buffer is 64
//! bytes, so a body takes several copy steps. The fake has no `sendfile(2)` unless a test sets
//! `zero_copy`, so most bodies go the copy path.

use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::Interest;
use tempfile::TempDir;

use super::files::Files;
use super::request::MAX_LINE;
use super::{Answer, Connection, State, TURN_AWAY_DEADLINE};
use crate::access;
use crate::config::Config;
use crate::service::fake::{self, Fake, Input, close};
use crate::service::{Handler, KEEP, resume};
use crate::stats::{CloseReason, Metric, Stats};

const A_TXT: &[u8] = b"hello, world";
const OK_BIG: &[u8] = b"OK 200\n";

/// The contents of `big.bin`.
fn big() -> Vec<u8> {
    (0..200u8).collect()
}

/// The loop's side of a download connection, with the served root its clients get.
type Harness = fake::Harness<Root>;

/// The served root: the temporary directory, opened as the server opens it.
struct Root {
    /// Kept to remove the directory when the test ends.
    dir: TempDir,
    files: Arc<Files>,
}

impl Harness {
    fn new() -> Self {
        Harness::with(|_| {})
    }

    /// A harness whose served root is opened with `adjust` applied to its configuration.
    fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        fs::write(dir.path().join("a.txt"), A_TXT).expect("a.txt");
        fs::write(dir.path().join("big.bin"), big()).expect("big.bin");
        fs::write(dir.path().join(".hidden"), b"secret").expect(".hidden");
        fs::create_dir(dir.path().join("dir")).expect("dir");
        let mut config = Config {
            root: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let stats = Arc::new(Stats::default());
        let files = Files::open(&config, Arc::clone(&stats)).expect("the served root opens");
        let files = Arc::new(files);
        Harness {
            stats,
            ..fake::Harness::of(Root { dir, files })
        }
    }

    /// A client of the served root.
    fn connection(&mut self, fake: Fake) -> Connection<Fake> {
        let answer = Answer::Files(Arc::clone(&self.kind.files));
        Connection::new(fake, self.now, &self.settings, answer)
    }

    /// A client accepted past `--max-conns`, only to be told so.
    fn turned_away(&mut self, fake: Fake) -> Connection<Fake> {
        let until = self.now + TURN_AWAY_DEADLINE;
        Connection::new(fake, self.now, &self.settings, Answer::TurnedAway { until })
    }

    /// Shortens a served file in place, as another process might while it is being sent.
    fn truncate(&self, name: &str, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(self.kind.dir.path().join(name))
            .and_then(|file| file.set_len(len))
            .expect("the file can be shortened");
    }
}

/// The close a connection in LINGERING will be counted as.
fn lingering_reason(c: &Connection<Fake>) -> Option<CloseReason> {
    match c.state() {
        State::Lingering { reason, .. } => Some(*reason),
        State::Request { .. } | State::Replying { .. } => None,
    }
}

/// The whole request arrives in one read and the client reads the reply as fast as it comes.
fn exchange(h: &mut Harness, request: &[u8]) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[request]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    c
}

// ---- fixtures: one per state -------------------------------------------------------------------

/// Nothing has arrived yet.
fn request(h: &mut Harness) -> Connection<Fake> {
    h.connection(Fake::with_input(&[]))
}

/// Part of a request has arrived: the grace period runs.
fn request_started(h: &mut Harness) -> Connection<Fake> {
    let mut c = h.connection(Fake::with_input(&[b"GET a."]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Request { grace: Some(_), .. }));
    c
}

/// `GET big.bin` was read and the client reads nothing: the whole reply, head included, waits.
fn replying(h: &mut Harness) -> Connection<Fake> {
    let mut fake = Fake::with_input(&[b"GET big.bin\n"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Replying { .. }));
    assert!(c.stream.output.is_empty());
    c
}

/// `GET a.txt` was answered in full: FIN is sent and the connection waits for the client's.
fn lingering(h: &mut Harness) -> Connection<Fake> {
    let c = exchange(h, b"GET a.txt\n");
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
    assert!(c.stream.fin_sent);
    c
}

// ---- REQUEST -----------------------------------------------------------------------------------

#[test]
fn request_wants_readable_until_its_idle_deadline() {
    let mut h = Harness::new();
    let c = request(&mut h);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(c.deadline(), h.now + h.settings.idle_timeout);
    assert!(!c.is_turned_away());
}

#[test]
fn request_get_is_answered_with_its_head_and_body_then_fin() {
    let mut h = Harness::new();
    let c = lingering(&mut h);
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
    assert_eq!(h.stats.get(Metric::BytesIn), 10);
    assert_eq!(h.stats.get(Metric::BytesOut), 6 + 12);
    assert_eq!(h.stats.get(Metric::DownloadsStarted), 1);
    assert_eq!(h.stats.get(Metric::DownloadsCompleted), 1);
    assert_eq!(
        h.stats.get(Metric::OpenFiles),
        0,
        "the file is closed once sent"
    );
}

#[test]
fn request_get_with_an_offset_sends_the_rest_of_the_file() {
    let mut h = Harness::new();
    let c = exchange(&mut h, b"GET a.txt 7\r\n");
    assert_eq!(c.stream.output, b"OK 5\nworld");
}

#[test]
fn request_bare_name_with_a_newline_gets_the_bytes_alone() {
    let mut h = Harness::new();
    let c = exchange(&mut h, b"a.txt\n");
    assert_eq!(c.stream.output, A_TXT);
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
}

#[test]
fn request_list_gets_the_listing_with_its_header() {
    let mut h = Harness::new();
    let c = exchange(&mut h, b"LIST\n");
    assert_eq!(c.stream.output, b"OK 2\n12 a.txt\n200 big.bin\n");
    assert_eq!(h.stats.get(Metric::Listings), 1);
    assert_eq!(h.stats.get(Metric::DownloadsStarted), 0);
}

#[test]
fn request_line_split_across_reads_is_joined() {
    let mut h = Harness::new();
    let mut c = request_started(&mut h);
    c.stream.input.push_back(Input::Bytes(b"txt\n".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
}

#[test]
fn request_writable_writes_nothing_before_the_request_is_known() {
    let mut h = Harness::new();
    let mut c = request_started(&mut h);
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
    assert!(matches!(c.state(), State::Request { .. }));
}

#[test]
fn request_waits_at_would_block_with_the_grace_running_from_the_latest_byte() {
    let mut h = Harness::new();
    let mut c = request_started(&mut h);
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);
    h.now += Duration::from_millis(30);
    c.stream.input.push_back(Input::Bytes(b"t".to_vec()));
    assert_eq!(
        c.on_readable(&mut h.ctx()),
        KEEP,
        "WouldBlock: wait for more"
    );
    assert_eq!(c.deadline(), h.now + h.settings.request_grace);
    assert!(c.stream.output.is_empty());
}

/// The tutorial's downloader sends a bare name with no newline and waits: the pause ends it.
#[test]
fn request_bare_name_without_a_newline_is_answered_when_the_grace_expires() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"a.txt"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, A_TXT);
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
}

#[test]
fn request_grace_never_outlasts_the_idle_deadline() {
    let mut h = Harness::new();
    h.settings.request_grace = h.settings.idle_timeout * 2;
    let mut c = request_started(&mut h);
    assert_eq!(c.deadline(), h.now + h.settings.idle_timeout);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
    assert!(c.stream.output.is_empty(), "not taken as a request");
}

#[test]
fn request_with_nothing_received_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = request(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
}

#[test]
fn request_fin_mid_request_completes_the_request() {
    let mut h = Harness::new();
    h.hangup = true;
    let mut c = request_started(&mut h);
    c.stream.input.push_back(Input::Bytes(b"txt".to_vec()));
    c.stream.input.push_back(Input::Fin);
    // Answered, and closed at once: the lingering drain finds the FIN already in.
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Finished));
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
    assert!(c.stream.fin_sent);
}

#[test]
fn request_fin_before_any_byte_closes_without_a_reply() {
    let mut h = Harness::new();
    let mut fake = Fake::default();
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::PeerClosed));
    assert!(c.stream.output.is_empty());
    assert!(!c.stream.fin_sent);
}

#[test]
fn request_stops_at_a_short_read_without_asking_for_would_block() {
    let mut h = Harness::new();
    let mut c = h.connection(Fake::with_input(&[b"GET a."]));
    c.stream.input.push_back(Input::Fail(io::ErrorKind::Other)); // never reached
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Request { .. }));
}

/// After an event that reported a hang-up, the FIN may wait behind the data with its edge spent:
/// a short read proves nothing then, and reading goes on to the zero-length read.
#[test]
fn request_reads_past_a_short_read_when_the_event_reported_a_hang_up() {
    let mut h = Harness::new();
    h.hangup = true;
    let mut fake = Fake::with_input(&[b"a.txt"]);
    fake.input.push_back(Input::Fin);
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Finished));
    assert_eq!(
        c.stream.output, A_TXT,
        "answered at the FIN, not at the grace"
    );
}

#[test]
fn request_retries_an_interrupted_read() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"GET a.txt\n"]);
    fake.interrupt = true;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
}

#[test]
fn request_closes_on_a_reset_as_reset_and_on_other_read_errors_as_error() {
    for (kind, reason) in [
        (io::ErrorKind::ConnectionReset, CloseReason::Reset),
        (io::ErrorKind::InvalidData, CloseReason::Error),
    ] {
        let mut h = Harness::new();
        let mut c = request_started(&mut h);
        c.stream.input.push_back(Input::Fail(kind));
        assert_eq!(c.on_readable(&mut h.ctx()), close(reason), "{kind:?}");
    }
}

#[test]
fn request_typed_refusals_are_answered_with_their_err_line() {
    for (line, reply) in [
        (&b"GET missing\n"[..], &b"ERR 404 not found\n"[..]),
        (b"GET dir\n", b"ERR 403 is a directory\n"),
        (b"GET ../a.txt\n", b"ERR 403 '..' in name\n"),
        (b"GET .hidden\n", b"ERR 403 hidden file\n"),
        (b"GET a.txt 13\n", b"ERR 416 offset past end of file\n"),
        (b"get a.txt\n", b"ERR 400 methods are upper case: GET\n"),
        (b"LIST x\n", b"ERR 400 LIST takes no argument\n"),
    ] {
        let mut h = Harness::new();
        let c = exchange(&mut h, line);
        let shown = String::from_utf8_lossy(line);
        assert_eq!(c.stream.output, reply, "{shown:?}");
        assert!(c.stream.fin_sent, "{shown:?}");
        assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
        assert_eq!(h.stats.get(Metric::DownloadsRefused), 1);
        assert_eq!(h.stats.get(Metric::DownloadsStarted), 0);
    }
}

#[test]
fn request_bare_refusals_close_without_a_word() {
    for line in [&b"missing\n"[..], b"dir\n", b"../a.txt\n", b".hidden\n"] {
        let mut h = Harness::new();
        let c = exchange(&mut h, line);
        let shown = String::from_utf8_lossy(line);
        assert!(c.stream.output.is_empty(), "{shown:?}");
        assert!(c.stream.fin_sent, "{shown:?}");
        assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
        assert_eq!(h.stats.get(Metric::DownloadsRefused), 1);
    }
}

#[test]
fn request_line_over_the_limit_is_refused_414_as_soon_as_it_is_passed() {
    let mut h = Harness::new();
    let mut line = b"GET ".to_vec();
    line.resize(MAX_LINE + 1000, b'a');
    line.push(b'\n');
    let c = exchange(&mut h, &line);
    assert_eq!(c.stream.output, b"ERR 414 request line too long\n");
    // The rest is drained unread while lingering: only the request reader counts bytes in.
    let read = h.stats.get(Metric::BytesIn) as usize;
    assert!(
        read <= MAX_LINE + 1 + h.scratch.len(),
        "read {read} bytes as request: no more than one read past the limit"
    );
}

#[test]
fn request_bare_line_over_the_limit_closes_without_a_word() {
    let mut h = Harness::new();
    let c = exchange(&mut h, &[b'a'; MAX_LINE + 2]);
    assert!(c.stream.output.is_empty());
    assert!(c.stream.fin_sent);
    assert_eq!(h.stats.get(Metric::DownloadsRefused), 1);
}

#[test]
fn request_line_of_exactly_the_limit_with_crlf_is_served() {
    let mut h = Harness::new();
    let mut line = b"GET ".to_vec();
    while line.len() < MAX_LINE - "/a.txt".len() {
        line.extend_from_slice(b"./");
    }
    line.extend_from_slice(b"/a.txt");
    assert_eq!(line.len(), MAX_LINE);
    line.extend_from_slice(b"\r\n");
    let c = exchange(&mut h, &line);
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
}

#[test]
fn request_at_the_open_file_limit_is_refused_503() {
    let mut h = Harness::with(|config| config.max_open_files = 1);
    let first = replying(&mut h);
    assert_eq!(h.stats.get(Metric::OpenFiles), 1);
    let second = exchange(&mut h, b"GET a.txt\n");
    assert_eq!(
        second.stream.output,
        b"ERR 503 busy: too many open files, try again later\n"
    );
    drop(first);
    let third = exchange(&mut h, b"GET a.txt\n");
    assert_eq!(third.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
}

/// Only the first line is a request: the rest of its read is dropped, and later input is
/// discarded while lingering.
#[test]
fn request_input_after_the_line_is_never_answered() {
    let mut h = Harness::new();
    let c = exchange(&mut h, b"GET a.txt\nGET big.bin\n");
    assert_eq!(c.stream.output, [&b"OK 12\n"[..], A_TXT].concat());
    assert_eq!(h.stats.get(Metric::DownloadsStarted), 1);
}

#[test]
fn request_shutdown_with_nothing_received_sends_fin_at_once() {
    let mut h = Harness::new();
    let mut c = request(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert!(c.stream.fin_sent);
    assert_eq!(lingering_reason(&c), Some(CloseReason::Shutdown));
}

#[test]
fn request_shutdown_lets_an_arriving_request_finish() {
    let mut h = Harness::new();
    let mut c = request_started(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Request { .. }));
    assert!(!c.stream.fin_sent);
}

// ---- REPLYING ----------------------------------------------------------------------------------

#[test]
fn replying_wants_only_writable_and_reads_nothing() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    assert_eq!(c.interest(), Interest::WRITABLE);
    assert_eq!(c.deadline(), h.now + h.settings.idle_timeout);
    c.stream.input.push_back(Input::Bytes(b"more".to_vec()));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(!c.stream.input.is_empty(), "left for the lingering drain");
}

#[test]
fn replying_writes_head_and_body_across_partial_writes() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    c.stream.window = 3;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"OK ");
    c.stream.window = 5; // the rest of the head and one byte of the body
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &[0]].concat());
    assert!(matches!(c.state(), State::Replying { .. }));
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &big()].concat());
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
    assert_eq!(h.stats.get(Metric::BytesOut), 7 + 200);
    assert_eq!(h.stats.get(Metric::DownloadsCompleted), 1);
}

#[test]
fn replying_writes_a_refusal_across_partial_writes() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"GET missing\n"]);
    fake.window = 4;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"ERR ");
    assert!(!c.stream.fin_sent);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"ERR 404 not found\n");
    assert!(c.stream.fin_sent);
}

#[test]
fn replying_writes_the_listing_across_partial_writes() {
    let mut h = Harness::new();
    let mut fake = Fake::with_input(&[b"LIST\n"]);
    fake.window = 0;
    let mut c = h.connection(fake);
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    c.stream.window = 4;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"OK 2");
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, b"OK 2\n12 a.txt\n200 big.bin\n");
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
}

#[test]
fn replying_yields_when_its_budget_is_spent_and_resumes_where_it_stopped() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    c.stream.window = usize::MAX;
    let mut ctx = h.ctx();
    ctx.budget = 50;
    assert_eq!(c.on_writable(&mut ctx), KEEP);
    assert_eq!(ctx.budget, 0, "spent: the loop will resume this connection");
    assert_eq!(c.stream.output, [OK_BIG, &big()[..50]].concat());
    assert!(matches!(c.state(), State::Replying { .. }));

    // The loop comes back after the rest of the batch, with no new edge.
    let mut ctx = h.ctx();
    assert_eq!(resume(&mut c, &mut ctx), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &big()].concat());
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
}

#[test]
fn replying_sends_the_body_with_send_file_when_the_stream_has_it() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    c.stream.zero_copy = true;
    c.stream.window = 7 + 100;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP, "blocked halfway");
    assert_eq!(c.stream.output, [OK_BIG, &big()[..100]].concat());
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &big()].concat());
    assert_eq!(h.stats.get(Metric::BodyBytesSendfile), 200);
    assert_eq!(h.stats.get(Metric::BodyBytesCopied), 0);
}

#[test]
fn replying_copies_the_body_when_send_file_is_unsupported() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &big()].concat());
    assert_eq!(h.stats.get(Metric::BodyBytesCopied), 200);
    assert_eq!(h.stats.get(Metric::BodyBytesSendfile), 0);
}

#[test]
fn replying_with_no_sendfile_never_asks_for_send_file() {
    let mut h = Harness::with(|config| config.no_sendfile = true);
    let mut c = replying(&mut h);
    c.stream.zero_copy = true;
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.stream.output, [OK_BIG, &big()].concat());
    assert_eq!(h.stats.get(Metric::BodyBytesSendfile), 0);
}

#[test]
fn replying_retries_interrupted_body_writes_on_either_path() {
    for zero_copy in [false, true] {
        let mut h = Harness::new();
        let mut c = replying(&mut h);
        c.stream.zero_copy = zero_copy;
        c.stream.window = OK_BIG.len();
        assert_eq!(c.on_writable(&mut h.ctx()), KEEP, "the head alone");
        c.stream.interrupt = true;
        c.stream.window = usize::MAX;
        assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
        assert_eq!(
            c.stream.output,
            [OK_BIG, &big()].concat(),
            "zero_copy: {zero_copy}"
        );
    }
}

#[test]
fn replying_closes_on_a_reset_as_reset_and_on_other_write_errors_as_error() {
    for zero_copy in [false, true] {
        for (kind, reason) in [
            (io::ErrorKind::ConnectionReset, CloseReason::Reset),
            (io::ErrorKind::BrokenPipe, CloseReason::Reset),
            (io::ErrorKind::Other, CloseReason::Error),
        ] {
            let mut h = Harness::new();
            let mut c = replying(&mut h);
            c.stream.zero_copy = zero_copy;
            c.stream.window = OK_BIG.len();
            assert_eq!(c.on_writable(&mut h.ctx()), KEEP, "the head alone");
            c.stream.write_error = Some(kind);
            assert_eq!(c.on_writable(&mut h.ctx()), close(reason), "{kind:?}");
            drop(c);
            assert_eq!(h.stats.get(Metric::DownloadsAborted), 1);
            assert_eq!(h.stats.get(Metric::OpenFiles), 0);
        }
    }
}

/// What could be sent is sent; then the close is a reset, so the client's next read fails
/// instead of ending as if the file were that short (issue 11).
#[test]
fn replying_a_file_that_shrank_is_abandoned_with_a_reset() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    h.truncate("big.bin", 100);
    c.stream.window = usize::MAX;
    assert_eq!(c.on_writable(&mut h.ctx()), close(CloseReason::Error));
    assert_eq!(c.stream.output, [OK_BIG, &big()[..100]].concat());
    assert!(c.stream.reset, "the close is a reset");
    assert!(!c.stream.fin_sent, "no FIN: that would read as a clean end");
    assert_eq!(h.stats.get(Metric::DownloadsTruncated), 1);
    assert_eq!(h.stats.get(Metric::DownloadsReset), 1);
    assert_eq!(h.stats.get(Metric::DownloadsCompleted), 0);
    drop(c);
    assert_eq!(
        h.stats.get(Metric::DownloadsAborted),
        0,
        "counted as truncated"
    );
    assert_eq!(h.stats.get(Metric::OpenFiles), 0);
}

#[test]
fn replying_progress_pushes_the_idle_deadline() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    h.now += Duration::from_secs(3);
    c.stream.window = 10;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(c.deadline(), h.now + h.settings.idle_timeout);
}

#[test]
fn replying_to_a_client_that_stopped_reading_times_out_as_idle() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Idle));
    drop(c);
    assert_eq!(h.stats.get(Metric::DownloadsAborted), 1);
}

#[test]
fn replying_shutdown_lets_the_reply_finish() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert!(matches!(c.state(), State::Replying { .. }));
    assert!(!c.stream.fin_sent);
}

// ---- LINGERING ---------------------------------------------------------------------------------

#[test]
fn lingering_wants_readable_until_the_end_of_linger() {
    let mut h = Harness::new();
    let c = lingering(&mut h);
    assert_eq!(c.interest(), Interest::READABLE);
    assert_eq!(c.deadline(), h.now + h.settings.linger);
}

#[test]
fn lingering_discards_input_until_the_clients_fin() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    let sent = c.stream.output.len();
    c.stream.input.push_back(Input::Bytes(b"unread".to_vec()));
    c.stream.interrupt = true;
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert!(c.stream.input.is_empty(), "read through the interruption");
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
fn lingering_ends_at_its_deadline_with_the_exchanges_reason() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Finished));
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
fn lingering_ignores_shutdown() {
    let mut h = Harness::new();
    let mut c = lingering(&mut h);
    assert_eq!(c.on_shutdown(&mut h.ctx()), KEEP);
    assert_eq!(lingering_reason(&c), Some(CloseReason::Finished));
}

// Entering LINGERING sends FIN, and `shutdown(2)` can fail (`ENOTCONN` once the peer is gone),
// which closes through the same `io_failure` as a read or write error. The fake's FIN never fails,
// so that arm has no test here; the read and write errors above cover the mapping to a reason.

// ---- turned away at --max-conns ----------------------------------------------------------------

// A client turned away goes through the same three states; only its answer differs. `interest`,
// `on_writable` and `on_shutdown` do not look at the answer, so the tests above cover them; what
// follows is what the answer changes: the reply, the reason counted, and the hard deadline.

#[test]
fn turned_away_typed_request_hears_err_503_and_closes_as_limit() {
    let mut h = Harness::new();
    let mut c = h.turned_away(Fake::with_input(&[b"GET a.txt\n"]));
    assert!(c.is_turned_away());
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(
        c.stream.output,
        b"ERR 503 busy: too many connections, try again later\n"
    );
    assert_eq!(lingering_reason(&c), Some(CloseReason::Limit));
    assert_eq!(h.stats.get(Metric::OpenFiles), 0, "no file is opened");
    c.stream.input.push_back(Input::Fin);
    assert_eq!(c.on_readable(&mut h.ctx()), close(CloseReason::Limit));
}

#[test]
fn turned_away_list_hears_err_503() {
    let mut h = Harness::new();
    let mut c = h.turned_away(Fake::with_input(&[b"LIST\n"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(
        c.stream.output,
        b"ERR 503 busy: too many connections, try again later\n"
    );
    assert_eq!(h.stats.get(Metric::Listings), 0);
}

/// A bare name has no status line to carry a reason: silence, as for any refused bare name.
#[test]
fn turned_away_bare_name_is_closed_without_a_word_once_its_grace_expires() {
    let mut h = Harness::new();
    let mut c = h.turned_away(Fake::with_input(&[b"a.txt"]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    h.now = c.deadline();
    assert_eq!(c.on_timeout(&mut h.ctx()), KEEP);
    assert!(c.stream.output.is_empty());
    assert!(c.stream.fin_sent);
    assert_eq!(lingering_reason(&c), Some(CloseReason::Limit));
}

#[test]
fn turned_away_deadline_is_hard_in_every_state() {
    let mut h = Harness::new();
    let until = h.now + TURN_AWAY_DEADLINE;

    let mut silent = h.turned_away(Fake::with_input(&[]));
    assert_eq!(silent.deadline(), until, "before the idle deadline");

    let mut fake = Fake::with_input(&[b"GET a.txt\n"]);
    fake.window = 0;
    let mut unread = h.turned_away(fake);
    assert_eq!(unread.on_readable(&mut h.ctx()), KEEP);
    assert!(matches!(unread.state(), State::Replying { .. }));
    assert_eq!(unread.deadline(), until);

    let mut answered = h.turned_away(Fake::with_input(&[b"GET a.txt\n"]));
    assert_eq!(answered.on_readable(&mut h.ctx()), KEEP);
    assert!(matches!(answered.state(), State::Lingering { .. }));
    assert_eq!(answered.deadline(), until, "before the end of --linger");

    h.now = until;
    for c in [&mut silent, &mut unread, &mut answered] {
        assert_eq!(c.on_timeout(&mut h.ctx()), close(CloseReason::Limit));
    }
}

// ---- access log notes (--access-log) ------------------------------------------------------------

/// What a connection of `make`'s kind, sent `request` in one read, notes for the access log.
fn noted(
    h: &mut Harness,
    make: fn(&mut Harness, Fake) -> Connection<Fake>,
    request: &[u8],
) -> (Option<String>, Option<access::Answer>) {
    h.log_access("files");
    let mut c = make(h, Fake::with_input(&[request]));
    assert_eq!(c.on_readable(&mut h.ctx()), KEEP);
    let notes = h.notes.take().expect("the notes log_access made");
    (notes.asked.map(String::from), notes.answer)
}

#[test]
fn a_served_request_is_noted_as_parsed_with_its_offset_and_verdict() {
    let mut h = Harness::new();
    let get = noted(&mut h, Harness::connection, b"GET a.txt\n");
    assert_eq!(
        get,
        (Some("GET a.txt 0".into()), Some(access::Answer::Ok(12)))
    );
    let from = noted(&mut h, Harness::connection, b"GET big.bin 150\r\n");
    assert_eq!(
        from,
        (Some("GET big.bin 150".into()), Some(access::Answer::Ok(50)))
    );
    let list = noted(&mut h, Harness::connection, b"LIST\n");
    assert_eq!(list, (Some("LIST".into()), Some(access::Answer::Ok(2))));
    // The bare form sends no status line; the log still says what was decided.
    let bare = noted(&mut h, Harness::connection, b"a.txt\n");
    assert_eq!(bare, (Some("a.txt".into()), Some(access::Answer::Ok(12))));
}

#[test]
fn a_refused_request_is_noted_with_its_code_and_the_line_as_it_came_if_unparsed() {
    let mut h = Harness::new();
    let missing = noted(&mut h, Harness::connection, b"GET nope.txt\n");
    assert_eq!(
        missing,
        (
            Some("GET nope.txt 0".into()),
            Some(access::Answer::Err(404))
        )
    );
    let near_miss = noted(&mut h, Harness::connection, b"get a.txt\n");
    assert_eq!(
        near_miss,
        (Some("get a.txt".into()), Some(access::Answer::Err(400)))
    );
    let bare = noted(&mut h, Harness::connection, b"../etc/passwd\n");
    assert_eq!(
        bare,
        (Some("../etc/passwd".into()), Some(access::Answer::Err(403)))
    );
    let busy = noted(&mut h, Harness::turned_away, b"GET a.txt\n");
    assert_eq!(
        busy,
        (Some("GET a.txt".into()), Some(access::Answer::Err(503)))
    );
}

#[test]
fn a_request_line_over_the_limit_is_noted_cut_short() {
    let mut h = Harness::new();
    let line = [b"GET ".as_slice(), &[b'x'; MAX_LINE + 10]].concat();
    let (asked, answer) = noted(&mut h, Harness::connection, &line);
    assert_eq!(answer, Some(access::Answer::Err(414)));
    let asked = asked.unwrap();
    assert_eq!(asked.chars().count(), access::MAX_ASKED + 1);
    assert!(
        asked.starts_with("GET xxx") && asked.ends_with("x…"),
        "{asked}"
    );
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn states_print_the_names_of_the_design_diagram() {
    let mut h = Harness::new();
    let names: Vec<String> = [request(&mut h), replying(&mut h), lingering(&mut h)]
        .iter()
        .map(|c| c.state().to_string())
        .collect();
    assert_eq!(names, ["REQUEST", "REPLYING", "LINGERING"]);
}

// ---- the loop stops (grace over, second signal) --------------------------------------------

#[test]
fn a_file_still_being_sent_when_the_loop_stops_is_abandoned_with_a_reset() {
    let mut h = Harness::new();
    let mut c = replying(&mut h);
    c.stream.window = OK_BIG.len() + 10;
    assert_eq!(c.on_writable(&mut h.ctx()), KEEP);
    c.on_stop(&mut h.ctx());
    assert!(c.stream.reset, "the close is a reset");
    assert_eq!(h.stats.get(Metric::DownloadsReset), 1);
}

/// Nothing was promised that a plain close would misrepresent: no request yet, a refusal, a
/// listing, a finished reply.
#[test]
fn the_loop_stopping_resets_nothing_but_a_file_under_way() {
    let mut h = Harness::new();
    let mut waiting = h.connection(Fake::with_input(&[]));
    waiting.on_stop(&mut h.ctx());
    assert!(!waiting.stream.reset);
    let mut done = lingering(&mut h);
    done.on_stop(&mut h.ctx());
    assert!(!done.stream.reset);
    assert_eq!(h.stats.get(Metric::DownloadsReset), 0);
}
