//! The chat bus end to end: two readyloop servers and one real Redis (`redis-server`, started by
//! each test on a free port). Room messages cross both ways exactly once; a nickname held on one
//! node is refused on the other; `/msg`, `/who` and notices cross nodes; with Redis killed, each
//! node's local chat goes on and the bus shows down; with Redis back, messages cross again within
//! the back-off's ceiling, without duplicates, and nicknames are held again.
//!
//! The servers run in-process ([`TestServer`]), each with its own loop on its own thread, as
//! separate processes would; Redis is a real child process. What crosses nodes takes two hops
//! through Redis on two connections, so the tests synchronise on lines they wait for (a marker
//! sent last arrives last) and never on time.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use readyloop::Metric;
use readyloop::bench::{Load, Mode, Scenario, run};
use readyloop::config::ChatBus;
use readyloop::service::chat::bus::backoff;

use common::chat_peer::{ChatPeer, connect_rooms};
use common::redis::Redis;
use common::{AT_ONCE, TestServer, WAIT, connect, http, join_within, round_trip, wait_until};

/// A server whose chat is a node of the bus at `redis`, returned once both its links are up.
fn node(redis: &Redis) -> TestServer {
    let server = TestServer::start(|config| {
        config.chat_bus = Some(redis.bus());
        config.chat_rate = 0;
    });
    wait_bus_up(&server);
    server
}

#[track_caller]
fn wait_bus_up(server: &TestServer) {
    server.wait_for(WAIT, "both bus links up", |s| {
        s.get(Metric::ChatBusLinksUp) == 2
    });
}

/// `from` says `text` and then a marker; `to`, on another node, hears the two exactly, once
/// each and nothing between, and `from` hears its own copies once each (not again through Redis).
#[track_caller]
fn crosses_exactly_once(from: &ChatPeer, name: &str, to: &ChatPeer, text: &str) {
    from.send(text);
    from.send("marker");
    let expected = [format!("{name}: {text}"), format!("{name}: marker")];
    let marker = |line: &str| line.ends_with(": marker");
    assert_eq!(to.lines_until(marker), expected, "on the other node");
    assert_eq!(
        from.lines_until(marker),
        expected,
        "the sender's own copies"
    );
}

/// Two nodes, Alice on the first and Bob on the second, their lobbies connected through Redis.
struct Federation {
    // Dropped last: the servers' links are torn down with them, not by Redis vanishing.
    redis: Redis,
    a: TestServer,
    b: TestServer,
    alice: ChatPeer,
    bob: ChatPeer,
}

impl Federation {
    fn start() -> Federation {
        let redis = Redis::start();
        let (a, b) = (node(&redis), node(&redis));
        let alice = ChatPeer::named(a.chat, "alice");
        let bob = ChatPeer::named(b.chat, "bob");
        connect_rooms(&alice, &bob);
        connect_rooms(&bob, &alice);
        Federation {
            redis,
            a,
            b,
            alice,
            bob,
        }
    }
}

#[test]
fn room_messages_cross_both_ways_exactly_once() {
    let f = Federation::start();
    crosses_exactly_once(&f.alice, "alice", &f.bob, "hello from a");
    crosses_exactly_once(&f.bob, "bob", &f.alice, "hello from b");
    // Anything late (a second copy through a second subscription) would have come by now: a
    // whole round trip through Redis happened since, in each direction.
    assert_eq!(f.alice.drain(), Vec::<String>::new());
    assert_eq!(f.bob.drain(), Vec::<String>::new());
    assert!(f.a.get(Metric::ChatBusPublished) >= 2);
    assert!(f.b.get(Metric::ChatBusReceived) >= 2);
    assert_eq!(f.a.get(Metric::ChatBusDroppedInvalid), 0);
}

#[test]
fn a_nickname_held_on_one_node_is_refused_on_the_other() {
    let f = Federation::start();
    let carol = ChatPeer::new(f.b.chat);
    carol.send("/nick alice");
    carol.lines_until(|line| line == "* nick alice is taken");
    carol.send("/nick carol");
    carol.lines_until(|line| line == "* you are now carol");
    // Given up on one node, the name is free for the other: as soon as node a's release reaches
    // Redis, which its member's answer does not wait for.
    f.alice.send("/leave");
    f.alice
        .lines_until(|line| line.starts_with("* you left the chat"));
    wait_until(WAIT, "alice to be free on node b", || {
        carol.send("/nick alice");
        let granted = |line: &str| line == "* you are now alice";
        let answer = carol.lines_until(|line| granted(line) || line == "* nick alice is taken");
        granted(answer.last().unwrap())
    });
}

#[test]
fn msg_reaches_a_member_of_another_node() {
    let f = Federation::start();
    f.alice.send("/msg bob psst");
    f.alice.lines_until(|line| line == "* sent to bob");
    f.bob.lines_until(|line| line == "[dm] alice: psst");
    f.bob.send("/msg nobody hi");
    f.bob.lines_until(|line| line == "* no such nick: nobody");
}

/// Each node notes its members in Redis on its own connection, so the other node's view may lag
/// by a command or two: `/who` is asked again until it shows both, within a bound.
#[test]
fn who_and_rooms_list_the_members_of_both_nodes() {
    let f = Federation::start();
    let mut last = String::new();
    wait_until(WAIT, "/who listing both nodes' members", || {
        f.alice.send("/who");
        last = f
            .alice
            .lines_until(|line| line.starts_with("* in lobby: "))
            .pop()
            .unwrap();
        last == "* in lobby: alice, bob"
    });
    f.bob.send("/rooms");
    let rooms = f.bob.lines_until(|line| line.starts_with("* rooms: "));
    assert_eq!(rooms.last().unwrap(), "* rooms: lobby (2)");
}

#[test]
fn join_and_leave_notices_cross_nodes() {
    let f = Federation::start();
    let carol = ChatPeer::named(f.b.chat, "carol");
    f.alice
        .lines_until(|line| line == format!("* {} joined lobby", carol.addr));
    f.alice
        .lines_until(|line| line == format!("* {} is now carol", carol.addr));
    carol.send("/leave");
    f.alice.lines_until(|line| line == "* carol left lobby");
    f.bob.send("/join dev");
    f.alice.lines_until(|line| line == "* bob left lobby");
}

/// Redis dies mid-run: each node's own members keep talking, the bus shows down in the metrics
/// and the connection list. Redis comes back (empty): the links reconnect within the back-off's
/// ceiling, rooms are subscribed and nicknames claimed again, and messages cross once each.
#[test]
fn a_lost_redis_leaves_local_chat_running_and_its_return_reconnects_everything() {
    let mut f = Federation::start();
    let carol = ChatPeer::named(f.a.chat, "carol");
    f.alice
        .lines_until(|line| line == "* carol joined lobby" || line.ends_with("is now carol"));

    f.redis.kill();
    for server in [&f.a, &f.b] {
        server.wait_for(WAIT, "both bus links down", |s| {
            s.get(Metric::ChatBusLinksUp) == 0
        });
    }
    let rows = http::get(f.a.admin, "/connections?service=chat").json();
    let links: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["kind"].as_str().unwrap().starts_with("redis-"))
        .collect();
    assert_eq!(links.len(), 2, "{rows}");
    for link in links {
        assert_ne!(link["state"], "READY", "{link}");
    }
    assert!(f.a.get(Metric::ChatBusClosedGone) >= 2);

    // Local chat goes on: Alice and Carol share node a.
    f.alice.send("still here");
    carol.lines_until(|line| line == "alice: still here");
    f.alice.lines_until(|line| line == "alice: still here");
    f.alice.send("/who");
    f.alice
        .lines_until(|line| line == "* in lobby: alice, carol");

    let restarted = Instant::now();
    f.redis.restart();
    connect_rooms(&f.alice, &f.bob);
    let took = restarted.elapsed();
    // The longest back-off, a connect and a round trip; plus slack for a busy machine.
    assert!(
        took < backoff::LAST + AT_ONCE,
        "messages crossed again after {took:?}"
    );
    connect_rooms(&f.bob, &f.alice);
    crosses_exactly_once(&f.alice, "alice", &f.bob, "after the outage");
    crosses_exactly_once(&f.bob, "bob", &f.alice, "back to you");
    assert_eq!(f.alice.drain(), Vec::<String>::new());
    assert_eq!(f.bob.drain(), Vec::<String>::new());

    // Redis came back empty; node a claimed Alice's nickname again.
    wait_bus_up(&f.a);
    let dave = ChatPeer::new(f.b.chat);
    dave.send("/nick alice");
    dave.lines_until(|line| line == "* nick alice is taken");
}

/// What a node leaves in Redis for a nickname: its node id, with a time to live just past
/// `--chat-idle`, so a node that dies without a word frees its names by itself.
#[test]
fn a_nickname_claim_in_redis_holds_the_node_id_and_expires() {
    let f = Federation::start();
    let holder = f.redis.command(&["GET", "readyloop:nick:bob"]);
    let node = holder.lines().nth(1).unwrap_or_default();
    assert!(
        node.len() == 16 && node.chars().all(|c| c.is_ascii_hexdigit()),
        "GET {holder:?}"
    );
    let reply = f.redis.command(&["PTTL", "readyloop:nick:bob"]);
    let ttl: u64 = reply.trim_start_matches(':').trim().parse().unwrap();
    let most = f.b.config.chat_idle + Duration::from_secs(5);
    assert!(ttl > 0 && ttl <= most.as_millis() as u64, "PTTL {reply:?}");
}

/// `readyloop bench chat --members-at`: the members listen on node b; the sender talks to node a
/// but hears the room on node b, its own copy on node a turned off. Every delivery has crossed
/// Redis, and the sender's window is paced by the bus.
#[test]
fn bench_chat_measures_deliveries_across_nodes() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let load = Load {
        scenario: Scenario::Chat {
            senders: 1,
            members: 3,
            size: 64,
            members_at: vec![b.chat],
        },
        target: a.chat,
        connections: 0,
        threads: 1,
        duration: Duration::from_millis(600),
        warmup: Duration::ZERO,
        requests: None,
        mode: Mode::Closed,
        pin: false,
        progress: false,
    };
    let report = run(&load).unwrap_or_else(|e| panic!("bench chat failed: {e}"));
    assert!(report.operations > 0, "{report}");
    assert_eq!(
        a.get(Metric::ChatRelayed),
        0,
        "nothing was delivered on node a"
    );
    assert!(b.get(Metric::ChatRelayed) >= report.operations, "{report}");
    let ratio = report
        .delivery_ratio
        .expect("chat reports a delivery ratio");
    // Paced by the bus, nothing is lost to overrun buffers.
    assert!(ratio > 0.9, "delivery ratio {ratio}: {report}");
    for server in [&a, &b] {
        server.wait_for(WAIT, "the sockets to leave", |s| {
            s.get(Metric::ChatMembers) == 0
        });
    }
}

/// Something that is not Redis answers on the bus's port: every connection is a counted close
/// and a longer wait, and meanwhile the server serves echo and its own chat members as ever.
#[test]
fn a_peer_that_is_not_redis_costs_counted_closes_never_the_server() {
    let impostor = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = impostor.local_addr().unwrap();
    impostor.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answering = thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            while !stop.load(Ordering::Relaxed) {
                match impostor.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    });
    let server = TestServer::start(|config| {
        config.chat_bus = Some(ChatBus { addr, db: 0 });
    });
    server.wait_for(WAIT, "three protocol failures", |s| {
        s.get(Metric::ChatBusClosedProtocol) >= 3
    });
    assert_eq!(server.get(Metric::ChatBusLinksUp), 0);
    round_trip(&mut connect(server.echo), b"still serving\n");
    let alice = ChatPeer::named(server.chat, "alice");
    alice.send("local chat");
    alice.lines_until(|line| line == "alice: local chat");
    stop.store(true, Ordering::Relaxed);
    join_within(answering, WAIT, "the impostor's thread");
}
