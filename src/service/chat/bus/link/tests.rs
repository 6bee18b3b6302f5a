//! A bus link, state by state, against a scripted Redis on loopback.
//!
//! The link owns a mio `TcpStream`, so its peer here is a real socket: a `std` listener on
//! `127.0.0.1:0` that the test accepts from, reads commands from and answers as a script says.
//! The loop is the test itself: it calls the link's handlers directly, as the loop would on an
//! event, and moves the clock by hand for the deadlines. Loopback delivers in microseconds, but
//! not within the call that sent, so the test calls the handler again until what it waits for has
//! happened, within a bound ([`pump`]). Each state has a fixture and a banner; every (state,
//! input) pair has a test below it, or a comment saying why not. Every handler returns `KEEP`: a
//! link never asks the loop to close it, whatever Redis does.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::{CONNECT_TIMEOUT, Kind, Link, MAX_INPUT, PING_EVERY, REPLY_TIMEOUT};
use crate::buffer::Watermarks;
use crate::config::ChatBus;
use crate::service::chat::bus::backoff::FIRST;
use crate::service::chat::bus::resp::{self, Frame};
use crate::service::chat::bus::{Command, Exchange, Expect, Inbound, Settings, Tokens};
use crate::service::{Context, FAIR_SHARE, Handler, KEEP, Settings as ServiceSettings};
use crate::stats::{Metric, Stats};

/// The bound on every wait for loopback: far above a healthy one, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(5);

const TOKENS: Tokens = Tokens {
    relay: Token(1),
    commands: Token(2),
    subscriber: Token(3),
};

/// A Redis that says only what the test tells it to.
struct FakeRedis {
    listener: TcpListener,
    conn: Option<StdStream>,
    /// Bytes received and not yet decoded.
    input: Vec<u8>,
}

impl FakeRedis {
    fn new() -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        FakeRedis {
            listener,
            conn: None,
            input: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Takes the link's connection.
    fn accept(&mut self) {
        let (conn, _) = self.listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        self.conn = Some(conn);
        self.input.clear();
    }

    fn conn(&mut self) -> &mut StdStream {
        self.conn.as_mut().expect("accepted")
    }

    /// The next `n` commands, each as its arguments in text.
    fn commands(&mut self, n: usize) -> Vec<Vec<String>> {
        let mut commands = Vec::new();
        while commands.len() < n {
            match resp::decode(&self.input).unwrap() {
                Some((Frame::Array(args), used)) => {
                    self.input.drain(..used);
                    let text = |arg: &Frame| resp::text(arg).unwrap_or("?").to_string();
                    commands.push(args.iter().map(text).collect());
                }
                Some((other, _)) => panic!("a command is an array, not {other:?}"),
                None => {
                    let mut buf = [0; 4096];
                    let read = self.conn().read(&mut buf).expect("a command within WAIT");
                    assert!(read > 0, "the link closed while a command was awaited");
                    self.input.extend_from_slice(&buf[..read]);
                }
            }
        }
        commands
    }

    /// Nothing was sent beyond what was read. On loopback a write is in the peer's buffer once
    /// `write` returns, so "nothing yet" right after the link's handler means "nothing".
    fn heard_nothing_more(&mut self) -> bool {
        let conn = self.conn.as_mut().expect("accepted");
        conn.set_nonblocking(true).unwrap();
        let mut buf = [0; 1];
        let nothing =
            matches!(conn.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        conn.set_nonblocking(false).unwrap();
        self.input.is_empty() && nothing
    }

    fn say(&mut self, bytes: &[u8]) {
        self.conn().write_all(bytes).unwrap();
    }

    /// Closes the connection, as a Redis that shuts down does.
    fn hang_up(&mut self) {
        self.conn = None;
    }
}

/// The loop's side of a link: the clock, the counters, the scratch buffer and the exchange.
struct Harness {
    bus: Settings,
    settings: ServiceSettings,
    stats: Stats,
    scratch: Vec<u8>,
    now: Instant,
    exchange: Exchange,
    budget: usize,
}

impl Harness {
    fn new(redis: SocketAddr) -> Harness {
        let bus = Settings {
            redis: ChatBus { addr: redis, db: 3 },
            prefix: "t:".into(),
            queue: 4,
            node: "n1".into(),
            ttl: Duration::from_secs(65),
            refresh: Duration::from_secs(5),
        };
        Harness {
            exchange: Exchange::new(TOKENS, bus.queue),
            bus,
            settings: ServiceSettings {
                marks: Watermarks { high: 16, low: 8 },
                idle_timeout: Duration::from_secs(10),
                linger: Duration::from_secs(1),
                request_grace: Duration::from_millis(50),
                admin_timeout: Duration::from_secs(10),
                access_log: false,
            },
            stats: Stats::default(),
            scratch: vec![0; 64 * 1024],
            now: Instant::now(),
            budget: FAIR_SHARE,
        }
    }

    fn ctx(&mut self) -> Context<'_> {
        Context {
            now: self.now,
            token: Token(2),
            settings: &self.settings,
            stats: &self.stats,
            scratch: &mut self.scratch,
            budget: self.budget,
            short_read_drains: false,
            access: None,
            bus: Some(&mut self.exchange),
        }
    }

    fn link(&self, kind: Kind) -> Link {
        Link::new(kind, &self.bus, self.now)
    }

    /// Everything left for the relay, in order.
    fn inbox(&mut self) -> Vec<Inbound> {
        std::iter::from_fn(|| self.exchange.take_inbound()).collect()
    }

    fn get(&self, metric: Metric) -> u64 {
        self.stats.get(metric)
    }
}

/// Calls the link's handlers, as readiness would, until `done` holds; fails after [`WAIT`].
#[track_caller]
fn pump(link: &mut Link, h: &mut Harness, what: &str, done: impl Fn(&Link) -> bool) {
    pump_with(link, h, what, |link, _| done(link));
}

/// As [`pump`], with the harness at hand: its counters, its exchange.
#[track_caller]
fn pump_with(
    link: &mut Link,
    h: &mut Harness,
    what: &str,
    mut done: impl FnMut(&Link, &mut Harness) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(link, h) {
        assert!(
            Instant::now() < deadline,
            "link in {}: no {what}",
            link.state
        );
        assert_eq!(link.on_readable(&mut h.ctx()), KEEP);
        assert_eq!(link.on_writable(&mut h.ctx()), KEEP);
        thread::sleep(Duration::from_millis(1));
    }
}

fn state(link: &Link) -> String {
    link.state().to_string()
}

/// A command the relay might leave: a `/who` for the member on `port`.
fn who(port: u16) -> Command {
    let member = SocketAddr::from(([127, 0, 0, 1], port));
    let expect = Expect::Who {
        member,
        room: "lobby".into(),
    };
    Command::new(
        expect,
        &[b"ZCOUNT", b"t:who:lobby", format!("{port}").as_bytes()],
    )
}

// ---- fixtures: one per state -------------------------------------------------------------------

/// Connecting to `redis`, which has accepted.
fn connecting(h: &mut Harness, redis: &mut FakeRedis, kind: Kind) -> Link {
    let mut link = h.link(kind);
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "CONNECTING");
    redis.accept();
    link
}

/// Connected; the opening commands sent and not yet answered.
fn handshake(h: &mut Harness, redis: &mut FakeRedis, kind: Kind) -> Link {
    let mut link = connecting(h, redis, kind);
    pump(&mut link, h, "handshake", |link| state(link) == "HANDSHAKE");
    link
}

/// Ready: the opening commands answered; for the subscriber, its node's channel subscribed.
fn ready(h: &mut Harness, redis: &mut FakeRedis, kind: Kind) -> Link {
    let mut link = handshake(h, redis, kind);
    let hello = redis.commands(if kind == Kind::Commands { 2 } else { 1 });
    redis.say(&b"+OK\r\n".repeat(hello.len()));
    pump(&mut link, h, "READY", Link::is_ready);
    if kind == Kind::Subscriber {
        assert_eq!(redis.commands(1), [["SUBSCRIBE", "t:node:n1"]]);
        redis.say(b"*3\r\n$9\r\nsubscribe\r\n$9\r\nt:node:n1\r\n:1\r\n");
    }
    h.inbox();
    link
}

/// Backing off after Redis refused the connection.
fn refused(h: &mut Harness) -> Link {
    // A port nothing listens on: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    h.bus.redis.addr = addr;
    let mut link = h.link(Kind::Commands);
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    pump(&mut link, h, "refusal", |link| state(link) == "BACKING-OFF");
    link
}

// ---- BACKING-OFF: no socket, a deadline -------------------------------------------------------

#[test]
fn a_new_link_backs_off_until_now_with_no_socket_and_no_interest() {
    let redis = FakeRedis::new();
    let h = Harness::new(redis.addr());
    let mut link = h.link(Kind::Commands);
    assert_eq!(state(&link), "BACKING-OFF");
    assert_eq!(link.interest(), None);
    assert!(link.source().is_none());
    assert_eq!(link.deadline(), Some(h.now));
}

#[test]
fn backing_off_timeout_connects_and_waits_for_writable() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let link = connecting(&mut h, &mut redis, Kind::Commands);
    assert_eq!(link.interest(), Some(Interest::WRITABLE));
    assert_eq!(link.deadline(), Some(h.now + CONNECT_TIMEOUT));
}

#[test]
fn a_refused_connect_is_counted_and_the_first_retry_comes_within_a_first_wait() {
    let mut h = Harness::new("127.0.0.1:9".parse().unwrap());
    let link = refused(&mut h);
    assert_eq!(h.get(Metric::ChatBusClosedGone), 1);
    let wait = link.deadline().unwrap() - h.now;
    assert!(wait >= FIRST / 2 && wait <= FIRST, "{wait:?}");
    assert_eq!(h.get(Metric::ChatBusLinksUp), 0);
}

#[test]
fn each_failure_in_a_row_waits_longer() {
    let mut h = Harness::new("127.0.0.1:9".parse().unwrap());
    let mut link = refused(&mut h);
    let mut waits = vec![link.deadline().unwrap() - h.now];
    for _ in 0..3 {
        h.now = link.deadline().unwrap();
        assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
        pump(&mut link, &mut h, "refusal", |link| {
            state(link) == "BACKING-OFF"
        });
        waits.push(link.deadline().unwrap() - h.now);
    }
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    assert_eq!(h.get(Metric::ChatBusClosedGone), 4);
}

/// The relay left commands believing the bus up: a publish is dropped and counted, a member
/// waiting on an answer is answered by the relay.
#[test]
fn backing_off_gives_up_the_commands_the_relay_left() {
    let redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = h.link(Kind::Commands);
    let publish = Command::new(Expect::Published, &[b"PUBLISH", b"c", b"m"]);
    h.exchange.send(publish, &h.stats);
    h.exchange.send(who(1), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(h.get(Metric::ChatBusDroppedDown), 1);
    assert_eq!(h.inbox(), [Inbound::Unanswered(who(1).expect)]);
}

// Readable and writable events while backing off can only be stale ones of the socket just
// closed: the handlers ignore them (there is no socket to read), as the next two tests show.

#[test]
fn backing_off_ignores_readiness() {
    let redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = h.link(Kind::Subscriber);
    assert_eq!(link.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(link.on_writable(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "BACKING-OFF");
}

// ---- CONNECTING: writable reports the connect's end -------------------------------------------

#[test]
fn connecting_writable_opens_with_setname_and_select() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let link = handshake(&mut h, &mut redis, Kind::Commands);
    assert_eq!(
        redis.commands(2),
        [
            vec!["CLIENT", "SETNAME", "readyloop-n1-commands"],
            vec!["SELECT", "3"]
        ]
    );
    assert_eq!(link.interest(), Some(Interest::READABLE));
    assert_eq!(link.deadline(), Some(h.now + REPLY_TIMEOUT));
}

#[test]
fn the_subscriber_opens_with_its_name_only() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    handshake(&mut h, &mut redis, Kind::Subscriber);
    assert_eq!(
        redis.commands(1),
        [["CLIENT", "SETNAME", "readyloop-n1-subscriber"]]
    );
}

#[test]
fn connecting_timeout_gives_up_as_slow() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = connecting(&mut h, &mut redis, Kind::Commands);
    h.now += CONNECT_TIMEOUT;
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "BACKING-OFF");
    assert_eq!(h.get(Metric::ChatBusClosedSlow), 1);
}

// Resumed while connecting (the relay left commands), a link gives them up as it does while
// backing off (`backing_off_gives_up_the_commands_the_relay_left`): only READY sends them.

#[test]
fn connecting_readable_waits_for_writable() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = connecting(&mut h, &mut redis, Kind::Commands);
    assert_eq!(link.on_readable(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "CONNECTING");
}

// ---- HANDSHAKE: the opening commands answered in turn ------------------------------------------

#[test]
fn handshake_answered_makes_the_link_ready_and_tells_the_relay() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = handshake(&mut h, &mut redis, Kind::Commands);
    redis.commands(2);
    redis.say(b"+OK\r\n");
    assert_eq!(link.on_readable(&mut h.ctx()), KEEP);
    redis.say(b"+OK\r\n");
    pump(&mut link, &mut h, "READY", Link::is_ready);
    assert_eq!(h.inbox(), [Inbound::Up]);
    assert_eq!(h.get(Metric::ChatBusLinksUp), 1);
    assert_eq!(h.get(Metric::ChatBusConnects), 1);
}

#[test]
fn handshake_a_refused_opening_command_is_a_protocol_failure() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = handshake(&mut h, &mut redis, Kind::Commands);
    redis.commands(2);
    redis.say(b"+OK\r\n-ERR DB index is out of range\r\n");
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
    assert_eq!(h.inbox(), [], "the relay never heard it was up");
}

#[test]
fn handshake_with_something_that_is_not_redis_is_a_protocol_failure() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = handshake(&mut h, &mut redis, Kind::Subscriber);
    redis.say(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
}

#[test]
fn handshake_timeout_gives_up_as_slow() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = handshake(&mut h, &mut redis, Kind::Commands);
    h.now += REPLY_TIMEOUT;
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "BACKING-OFF");
    assert_eq!(h.get(Metric::ChatBusClosedSlow), 1);
}

#[test]
fn handshake_peer_closing_is_counted_as_gone() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = handshake(&mut h, &mut redis, Kind::Commands);
    redis.hang_up();
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedGone), 1);
}

// ---- READY, the command link: commands out, replies back in order ------------------------------

#[test]
fn ready_sends_what_the_relay_left_and_hands_the_replies_back_in_order() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.exchange.send(who(1), &h.stats);
    h.exchange.send(who(2), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(
        redis.commands(2),
        [
            ["ZCOUNT", "t:who:lobby", "1"],
            ["ZCOUNT", "t:who:lobby", "2"]
        ]
    );
    redis.say(b":10\r\n:20\r\n");
    let mut inbox = Vec::new();
    pump_with(&mut link, &mut h, "replies", |_, h| {
        inbox.extend(h.inbox());
        inbox.len() == 2
    });
    assert_eq!(
        inbox,
        [
            Inbound::Reply {
                expect: who(1).expect,
                reply: Frame::Integer(10)
            },
            Inbound::Reply {
                expect: who(2).expect,
                reply: Frame::Integer(20)
            },
        ]
    );
    assert_eq!(
        link.deadline(),
        Some(h.now + PING_EVERY),
        "nothing in flight"
    );
}

#[test]
fn ready_counts_a_publish_once_redis_has_taken_it() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    let publish = Command::new(Expect::Published, &[b"PUBLISH", b"t:room:lobby", b"{}"]);
    h.exchange.send(publish, &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(redis.commands(1), [["PUBLISH", "t:room:lobby", "{}"]]);
    assert_eq!(
        h.get(Metric::ChatBusPublished),
        0,
        "not before Redis took it"
    );
    redis.say(b":1\r\n");
    pump_with(&mut link, &mut h, "the reply", |_, h| {
        h.get(Metric::ChatBusPublished) == 1
    });
    assert_eq!(h.inbox(), [], "nobody waits on a publish");
}

#[test]
fn ready_sends_no_more_commands_than_the_queue_allows_in_flight() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    for port in 1..=5 {
        h.exchange.send(who(port), &h.stats);
    }
    // The queue holds 4: the first was dropped, and its member answered by the relay.
    assert_eq!(h.get(Metric::ChatBusDroppedQueue), 1);
    assert_eq!(h.inbox(), [Inbound::Unanswered(who(1).expect)]);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    let sent = redis.commands(4);
    assert_eq!(sent[0], ["ZCOUNT", "t:who:lobby", "2"]);
    // Four in flight: the fifth waits in the exchange.
    h.exchange.send(who(6), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert!(redis.heard_nothing_more());
    redis.say(b":0\r\n");
    pump_with(&mut link, &mut h, "the reply", |_, h| !h.inbox().is_empty());
    // The reply made room for one more.
    assert_eq!(redis.commands(1), [["ZCOUNT", "t:who:lobby", "6"]]);
}

#[test]
fn ready_an_idle_link_pings_and_a_late_reply_is_slow() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.now = link.deadline().unwrap();
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(redis.commands(1), [["PING"]]);
    assert_eq!(link.deadline(), Some(h.now + REPLY_TIMEOUT));
    h.now += REPLY_TIMEOUT;
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    assert_eq!(state(&link), "BACKING-OFF");
    assert_eq!(h.get(Metric::ChatBusClosedSlow), 1);
    assert_eq!(h.inbox(), [Inbound::Down]);
}

#[test]
fn ready_a_pong_resets_the_wait_for_the_next_ping() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.now = link.deadline().unwrap();
    assert_eq!(link.on_timeout(&mut h.ctx()), KEEP);
    redis.commands(1);
    redis.say(b"+PONG\r\n");
    let pinged = h.now;
    pump(&mut link, &mut h, "the pong", |link| {
        link.deadline() == Some(pinged + PING_EVERY)
    });
    assert!(link.is_ready());
}

/// Redis shut down with a `/who` in flight: the relay hears the bus is down, and answers the
/// member itself.
#[test]
fn ready_redis_going_away_is_gone_and_whoever_waited_is_answered() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.exchange.send(who(1), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    redis.commands(1);
    redis.hang_up();
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedGone), 1);
    assert_eq!(h.get(Metric::ChatBusLinksUp), 0);
    assert_eq!(
        h.inbox(),
        [Inbound::Unanswered(who(1).expect), Inbound::Down]
    );
    assert_eq!(link.interest(), None, "no socket while backing off");
}

#[test]
fn ready_a_reply_to_no_command_is_a_protocol_failure() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    redis.say(b"+OK\r\n");
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
}

#[test]
fn ready_a_reply_larger_than_the_input_bound_is_refused() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.exchange.send(who(1), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    redis.commands(1);
    let huge = MAX_INPUT + 1;
    redis.say(format!("${huge}\r\n").as_bytes());
    // Redis would send it all; a link that refuses it stops reading long before.
    let filler = thread::spawn({
        let mut conn = redis.conn().try_clone().unwrap();
        move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(huge / chunk.len() + 1) {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
    assert_eq!(
        h.inbox(),
        [Inbound::Unanswered(who(1).expect), Inbound::Down]
    );
    redis.hang_up();
    filler.join().unwrap();
}

/// The decoder of `redis-protocol` recurses per level of nesting; without the guard in `resp.rs`
/// this would overflow the loop's stack.
#[test]
fn ready_arrays_nested_without_end_are_refused_not_a_stack_overflow() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Commands);
    h.exchange.send(who(1), &h.stats);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    redis.commands(1);
    redis.say("*1\r\n".repeat(50_000).as_bytes());
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
}

// ---- READY, the subscriber link: channels in, messages out ------------------------------------

#[test]
fn ready_subscribes_to_the_rooms_asked_for_while_it_was_away() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    h.exchange.subscribe("t:room:dev".into(), true);
    let mut link = handshake(&mut h, &mut redis, Kind::Subscriber);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    redis.commands(1);
    redis.say(b"+OK\r\n");
    pump(&mut link, &mut h, "READY", Link::is_ready);
    assert_eq!(
        redis.commands(2),
        [["SUBSCRIBE", "t:node:n1"], ["SUBSCRIBE", "t:room:dev"]]
    );
}

#[test]
fn ready_hands_every_message_to_the_relay_and_checks_every_confirmation() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Subscriber);
    h.exchange.subscribe("t:room:dev".into(), true);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(redis.commands(1), [["SUBSCRIBE", "t:room:dev"]]);
    redis.say(b"*3\r\n$9\r\nsubscribe\r\n$10\r\nt:room:dev\r\n:2\r\n");
    redis.say(b"*3\r\n$7\r\nmessage\r\n$10\r\nt:room:dev\r\n$2\r\nhi\r\n");
    let mut inbox = Vec::new();
    pump_with(&mut link, &mut h, "the message", |_, h| {
        inbox.extend(h.inbox());
        !inbox.is_empty()
    });
    assert_eq!(
        inbox,
        [Inbound::Message {
            channel: b"t:room:dev".to_vec(),
            payload: b"hi".to_vec()
        }]
    );
    h.exchange.subscribe("t:room:dev".into(), false);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(redis.commands(1), [["UNSUBSCRIBE", "t:room:dev"]]);
    // A confirmation of the wrong kind is not Redis keeping its word.
    redis.say(b"*3\r\n$9\r\nsubscribe\r\n$10\r\nt:room:dev\r\n:1\r\n");
    pump(&mut link, &mut h, "failure", |link| {
        state(link) == "BACKING-OFF"
    });
    assert_eq!(h.get(Metric::ChatBusClosedProtocol), 1);
    assert_eq!(h.inbox(), [], "only the command link reports the bus down");
}

#[test]
fn ready_asking_for_a_channel_twice_subscribes_once() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Subscriber);
    h.exchange.subscribe("t:node:n1".into(), true);
    h.exchange.subscribe("t:room:a".into(), true);
    assert_eq!(link.on_resume(&mut h.ctx()), KEEP);
    assert_eq!(redis.commands(1), [["SUBSCRIBE", "t:room:a"]]);
}

/// The relay has a full inbox: the subscriber stops handing messages over and gives its turn
/// back, so the relay catches up before more arrive; nothing is lost meanwhile.
#[test]
fn ready_the_subscriber_stops_reading_while_the_relay_is_behind() {
    let mut redis = FakeRedis::new();
    let mut h = Harness::new(redis.addr());
    let mut link = ready(&mut h, &mut redis, Kind::Subscriber);
    let message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n";
    let count = 5000;
    redis.say(&message.repeat(count));
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < count {
        assert!(Instant::now() < deadline, "{got} of {count} messages");
        h.budget = FAIR_SHARE;
        let mut ctx = h.ctx();
        assert_eq!(link.on_resume(&mut ctx), KEEP);
        let gave_back = ctx.budget == 0;
        let before = got;
        while h.exchange.take_inbound().is_some() {
            got += 1;
        }
        assert!(got - before <= 4096, "the inbox stays bounded");
        if got - before == 4096 {
            assert!(gave_back, "a full inbox gives the turn back");
        }
    }
    assert_eq!(got, count);
    assert!(link.is_ready());
}
