//! The access log (`--access-log`) as an operator reads it: the real binary's stderr, after real
//! clients of every service.
//!
//! Each test spawns `readyloop` on `127.0.0.1` with every port 0 and a temporary served root, talks
//! to it over loopback, and waits (bounded) for the lines on the `readyloop::access` target. A
//! connection's line is written when the server closes it, so each client finishes its exchange
//! and closes first.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::Running;
use common::{IO_TIMEOUT, WAIT, read_to_eof_within, round_trip};
use tempfile::TempDir;

/// What env_logger writes before the message of an access line.
const TARGET: &str = " readyloop::access] ";

/// A served root holding `a.txt` (12 bytes).
fn root() -> TempDir {
    let root = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(root.path().join("a.txt"), b"hello, world").expect("a.txt");
    root
}

/// Starts the server on `root` with `flags` (and, in the environment, `env`).
fn start(
    root: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (Running, HashMap<String, SocketAddr>) {
    let root = root.to_str().expect("a UTF-8 temporary path");
    let args: Vec<&str> = common::binary::LOCAL
        .iter()
        .copied()
        .chain(["--root", root])
        .chain(flags.iter().copied())
        .collect();
    let mut running = Running::spawn(&args, env);
    let addresses = running.startup_addresses();
    (running, addresses)
}

/// The access lines written so far, without env_logger's prefix.
fn access_lines(running: &Running) -> Vec<String> {
    running
        .stderr()
        .lines()
        .filter_map(|line| line.split_once(TARGET).map(|(_, rest)| rest.to_string()))
        .collect()
}

/// Waits for the access line that starts with `peer=<peer> ` and returns its pairs.
#[track_caller]
fn line_of(running: &Running, peer: SocketAddr) -> HashMap<String, String> {
    let start = format!("peer={peer} ");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = access_lines(running)
            .into_iter()
            .find(|l| l.starts_with(&start))
        {
            return pairs(&line);
        }
        if Instant::now() >= deadline {
            panic!(
                "no access line for {peer} within {WAIT:?}; stderr:\n{}",
                running.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every access line whose peer is `peer`, once `count` of them are there.
#[track_caller]
fn lines_of(running: &Running, peer: SocketAddr, count: usize) -> Vec<HashMap<String, String>> {
    let start = format!("peer={peer} ");
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<String> = access_lines(running)
            .into_iter()
            .filter(|line| line.starts_with(&start))
            .collect();
        if lines.len() >= count {
            return lines.iter().map(|line| pairs(line)).collect();
        }
        if Instant::now() >= deadline {
            panic!(
                "fewer than {count} access lines for {peer}; stderr:\n{}",
                running.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A line's `key=value` pairs, quoted values unquoted, checking the documented shape: keys are
/// words, values are bare words or quoted strings, one space between pairs.
#[track_caller]
fn pairs(line: &str) -> HashMap<String, String> {
    let mut pairs = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("no key=value at {rest:?} in {line:?}"));
        assert!(
            key.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line}"
        );
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i + 1,
                        Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated quote in {line:?}"),
                    }
                };
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        pairs.push((key.to_string(), value));
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| key.as_str()).collect();
    let connection = [
        "peer", "service", "asked", "answer", "in", "out", "duration", "close",
    ];
    let chat = ["peer", "service", "event", "nick", "room"];
    assert!(
        keys == connection || keys.starts_with(&chat),
        "unexpected keys {keys:?} in {line:?}"
    );
    pairs.into_iter().collect()
}

/// Checks `expected` pairs of a line and that its duration reads as seconds.
#[track_caller]
fn assert_pairs(line: &HashMap<String, String>, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            line.get(*key).map(String::as_str),
            Some(*value),
            "{key} in {line:?}"
        );
    }
    if let Some(duration) = line.get("duration") {
        let seconds = duration
            .strip_suffix('s')
            .and_then(|s| s.parse::<f64>().ok());
        assert!(seconds.is_some_and(|s| s < 60.0), "duration in {line:?}");
    }
}

/// Sends `request` on a new download connection, reads the reply to EOF, then closes; returns the
/// client's address and the reply.
fn download(files: SocketAddr, request: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut client = common::connect(files);
    client.write_all(request).expect("send the request");
    let reply = read_to_eof_within(&mut client, IO_TIMEOUT).expect("the whole reply");
    (client.local_addr().unwrap(), reply)
}

/// One echo exchange that the client ends with FIN; returns the client's address.
fn echo_exchange(echo: SocketAddr) -> SocketAddr {
    let mut client = common::connect(echo);
    round_trip(&mut client, b"hello\n");
    client.shutdown(Shutdown::Write).expect("FIN");
    read_to_eof_within(&mut client, IO_TIMEOUT).expect("EOF after the echo");
    client.local_addr().unwrap()
}

/// A chat peer that waits (bounded) for each reply, so every datagram has been handled before the
/// next is sent.
struct ChatPeer(UdpSocket);

impl ChatPeer {
    fn new(chat: SocketAddr) -> ChatPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a chat peer");
        socket.connect(chat).expect("connect to the relay");
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        ChatPeer(socket)
    }

    /// Sends `text` and returns the first reply.
    fn say(&self, text: &str) -> String {
        self.0.send(text.as_bytes()).expect("send a datagram");
        let mut buf = [0; 2048];
        let n = self.0.recv(&mut buf).expect("a reply within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
}

#[test]
fn every_service_writes_its_exchanges_to_the_access_log() {
    let root = root();
    let (running, addresses) = start(root.path(), &["--access-log"], &[]);

    let echo = echo_exchange(addresses["echo"]);
    assert_pairs(
        &line_of(&running, echo),
        &[
            ("service", "echo"),
            ("asked", "echo"),
            ("answer", "-"),
            ("in", "6"),
            ("out", "6"),
            ("close", "peer"),
        ],
    );

    let (got, reply) = download(addresses["files"], b"GET a.txt\n");
    assert_eq!(reply, b"OK 12\nhello, world");
    assert_pairs(
        &line_of(&running, got),
        &[
            ("service", "files"),
            ("asked", "GET a.txt 0"),
            ("answer", "OK 12"),
            ("in", "10"),
            ("out", "18"),
            ("close", "finished"),
        ],
    );

    let (refused, reply) = download(addresses["files"], b"GET missing.txt 3\n");
    assert_eq!(reply, b"ERR 404 not found\n");
    assert_pairs(
        &line_of(&running, refused),
        &[
            ("asked", "GET missing.txt 3"),
            ("answer", "ERR 404"),
            ("in", "18"),
            ("out", "18"),
            ("close", "finished"),
        ],
    );

    let (listed, reply) = download(addresses["files"], b"LIST\n");
    assert_eq!(reply, b"OK 1\n12 a.txt\n");
    assert_pairs(
        &line_of(&running, listed),
        &[
            ("asked", "LIST"),
            ("answer", "OK 1"),
            ("in", "5"),
            ("out", "14"),
        ],
    );

    let mut admin = common::connect(addresses["admin"]);
    let request = "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    admin
        .write_all(request.as_bytes())
        .expect("send the request");
    let response = read_to_eof_within(&mut admin, IO_TIMEOUT).expect("the response");
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let admin = admin.local_addr().unwrap();
    assert_pairs(
        &line_of(&running, admin),
        &[
            ("service", "admin"),
            ("asked", "GET /healthz"),
            ("answer", "200"),
            ("in", &request.len().to_string()),
            ("out", &response.len().to_string()),
            ("close", "finished"),
        ],
    );
}

#[test]
fn admin_requests_on_one_connection_get_a_line_each() {
    let root = root();
    let (running, addresses) = start(root.path(), &["--access-log"], &[]);
    let mut client = common::connect(addresses["admin"]);
    let mut response = [0; 4096];
    client
        .write_all(b"GET /nowhere?x=1 HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send the first request");
    let n = client.read(&mut response).expect("the first response");
    assert!(response[..n].starts_with(b"HTTP/1.1 404 "));
    client
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send the second request");
    read_to_eof_within(&mut client, IO_TIMEOUT).expect("the second response");

    let lines = lines_of(&running, client.local_addr().unwrap(), 2);
    assert_pairs(
        &lines[0],
        &[
            ("asked", "GET /nowhere?x=1"),
            ("answer", "404"),
            ("close", "keep-alive"),
        ],
    );
    assert_pairs(
        &lines[1],
        &[
            ("asked", "HEAD /healthz"),
            ("answer", "200"),
            ("close", "finished"),
        ],
    );
}

#[test]
fn chat_membership_is_logged_but_never_what_members_say() {
    let root = root();
    let (running, addresses) = start(root.path(), &["--access-log"], &[]);
    let alice = ChatPeer::new(addresses["chat"]);
    let relayed = format!("{}: the secret plan\n", alice.addr());
    assert_eq!(alice.say("the secret plan"), relayed);
    assert_eq!(alice.say("/nick alice"), "* you are now alice\n");
    assert!(alice.say("/join games").starts_with("* you joined games"));
    assert!(alice.say("/leave").starts_with("* you left the chat"));

    let lines = lines_of(&running, alice.addr(), 4);
    let at = [("service", "chat")];
    assert_pairs(
        &lines[0],
        &[
            at[0],
            ("event", "join"),
            ("nick", "-"),
            ("room", "lobby"),
            ("from", "-"),
        ],
    );
    assert_pairs(
        &lines[1],
        &[
            at[0],
            ("event", "nick"),
            ("nick", "alice"),
            ("room", "lobby"),
            ("was", "-"),
        ],
    );
    assert_pairs(
        &lines[2],
        &[
            at[0],
            ("event", "join"),
            ("nick", "alice"),
            ("room", "games"),
            ("from", "lobby"),
        ],
    );
    assert_pairs(
        &lines[3],
        &[
            at[0],
            ("event", "leave"),
            ("nick", "alice"),
            ("room", "games"),
        ],
    );
    assert!(!running.stderr().contains("secret"), "{}", running.stderr());
}

#[test]
fn chat_members_that_fall_silent_expire_in_the_log() {
    let root = root();
    let (running, addresses) = start(root.path(), &["--access-log", "--chat-idle", "100ms"], &[]);
    let bob = ChatPeer::new(addresses["chat"]);
    assert_eq!(bob.say("/nick bob"), "* you are now bob\n");
    let lines = lines_of(&running, bob.addr(), 3);
    assert_pairs(
        &lines[2],
        &[("event", "expire"), ("nick", "bob"), ("room", "lobby")],
    );
}

/// `-v` logs every close at debug level: that line proves the connection is closed, so an access
/// line would be there by then.
#[test]
fn without_the_flag_there_are_no_access_lines() {
    let root = root();
    let (running, addresses) = start(root.path(), &["-v"], &[]);
    echo_exchange(addresses["echo"]);
    download(addresses["files"], b"GET a.txt\n");
    running.wait_stderr_contains("echo closed: PeerClosed", WAIT);
    running.wait_stderr_contains("download closed: Finished", WAIT);
    assert!(access_lines(&running).is_empty(), "{}", running.stderr());
    assert!(!running.stderr().contains("readyloop::access"));
}

#[test]
fn quiet_still_shows_the_access_log_it_was_asked_for() {
    let root = root();
    let (running, addresses) = start(root.path(), &["-q", "--access-log"], &[]);
    let echo = echo_exchange(addresses["echo"]);
    assert_pairs(
        &line_of(&running, echo),
        &[("service", "echo"), ("close", "peer")],
    );
}

#[test]
fn rust_log_can_turn_the_access_target_off() {
    let root = root();
    let env = [
        ("RUST_LOG", "readyloop=debug,readyloop::access=off"),
        ("READYLOOP_ACCESS_LOG", "1"),
    ];
    let (running, addresses) = start(root.path(), &[], &env);
    echo_exchange(addresses["echo"]);
    running.wait_stderr_contains("echo closed: PeerClosed", WAIT);
    assert!(access_lines(&running).is_empty(), "{}", running.stderr());
}

#[test]
fn a_client_closed_at_once_past_the_limit_is_logged_as_limit() {
    let root = root();
    let (running, addresses) = start(root.path(), &["--access-log", "--max-conns", "1"], &[]);
    let mut first = common::connect(addresses["echo"]);
    round_trip(&mut first, b"x");
    let second = TcpStream::connect_timeout(&addresses["echo"], IO_TIMEOUT).expect("connect");
    assert_pairs(
        &line_of(&running, second.local_addr().unwrap()),
        &[
            ("service", "echo"),
            ("in", "0"),
            ("out", "0"),
            ("close", "limit"),
        ],
    );
}
