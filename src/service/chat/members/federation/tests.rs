//! The federated chat's rules, without sockets or Redis: what each datagram asks of the bus, and
//! what each reply, lost command and message from another node makes of it.
//!
//! The harness plays both the members and the bus: it sends datagrams as members do, reads the
//! commands the chat asked for as the command link would (decoded back to their arguments), and
//! hands back replies as Redis would give them. Grouped by what the bus was doing: down, up, and
//! coming back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::{Chat, Limits};
use crate::config::ChatBus;
use crate::service::chat::bus::envelope::{Body, Envelope};
use crate::service::chat::bus::resp::{self, Frame};
use crate::service::chat::bus::{Expect, Inbound, Settings};
use crate::service::chat::outbox::Datagram;
use crate::stats::{Metric, Stats};

const ALICE: u16 = 1001;
const BOB: u16 = 1002;

/// This node's id, and another's.
const NODE: &str = "aaaa";
const OTHER: &str = "bbbb";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn line(text: &str) -> String {
    format!("{text}\n")
}

/// A federated chat, its counters and clock.
struct Harness {
    chat: Chat,
    stats: Stats,
    now: Instant,
    out: Vec<Datagram>,
}

impl Harness {
    /// A chat on the bus, which is still down.
    fn down() -> Harness {
        let now = Instant::now();
        let limits = Limits {
            max_msg: 256,
            max_members: 8,
            max_rooms: 4,
            rate: 0,
            burst: 10,
            idle: Duration::from_secs(60),
            verify: false,
            access_log: false,
        };
        let mut chat = Chat::new(limits, now);
        chat.federate(Settings {
            redis: ChatBus {
                addr: "127.0.0.1:6379".parse().unwrap(),
                db: 0,
            },
            prefix: "t:".into(),
            queue: 64,
            node: NODE.into(),
            ttl: Duration::from_secs(65),
            refresh: Duration::from_secs(5),
        });
        Harness {
            chat,
            stats: Stats::default(),
            now,
            out: Vec::new(),
        }
    }

    /// A chat on the bus, which is up; nothing asked yet.
    fn up() -> Harness {
        let mut h = Harness::down();
        h.bus(Inbound::Up);
        h.commands();
        h.subscriptions();
        h
    }

    /// Alice and Bob in the lobby, the bus up, everything they asked already taken.
    fn two_members() -> Harness {
        let mut h = Harness::up();
        h.send(ALICE, "/echo on");
        h.send(BOB, "/echo on");
        h.commands();
        h
    }

    /// Sends `text` from `port`; the lines the chat sent, sorted by recipient.
    fn send(&mut self, port: u16, text: &str) -> Vec<(u16, String)> {
        let mut out = std::mem::take(&mut self.out);
        (self.chat).on_datagram(addr(port), text.as_bytes(), self.now, &self.stats, &mut out);
        self.out = out;
        self.drain()
    }

    /// Hands the chat something from the bus; the lines it sent.
    fn bus(&mut self, inbound: Inbound) -> Vec<(u16, String)> {
        let mut out = std::mem::take(&mut self.out);
        self.chat.on_bus(inbound, self.now, &self.stats, &mut out);
        self.out = out;
        self.drain()
    }

    fn reply(&mut self, expect: Expect, reply: Frame) -> Vec<(u16, String)> {
        self.bus(Inbound::Reply { expect, reply })
    }

    fn drain(&mut self) -> Vec<(u16, String)> {
        let mut sent: Vec<(u16, String)> = (self.out)
            .drain(..)
            .map(|d| (d.to.port(), String::from_utf8(d.payload.to_vec()).unwrap()))
            .collect();
        sent.sort();
        sent
    }

    /// The commands asked for since last time, with what their replies mean.
    fn asked(&mut self) -> Vec<(Vec<String>, Expect)> {
        let requests = self.chat.bus_requests().expect("federated");
        requests
            .commands
            .drain(..)
            .map(|command| {
                let (frame, _) = resp::decode(&command.bytes).unwrap().unwrap();
                let Frame::Array(args) = frame else {
                    panic!("a command is an array")
                };
                let args = args.iter().map(|a| resp::text(a).unwrap().to_string());
                (args.collect(), command.expect)
            })
            .collect()
    }

    /// The commands asked for, by their first arguments only: `["PUBLISH", channel]`,
    /// `["EVAL", <script>]`'s name is too long to compare, so scripts show as `EVAL` and their
    /// first key.
    fn commands(&mut self) -> Vec<String> {
        self.asked()
            .into_iter()
            .map(|(args, _)| match args[0].as_str() {
                "EVAL" => format!("EVAL {}", args[3]),
                "PUBLISH" => format!("PUBLISH {} {}", args[1], args[2]),
                _ => args.join(" "),
            })
            .collect()
    }

    fn subscriptions(&mut self) -> Vec<(String, bool)> {
        let requests = self.chat.bus_requests().expect("federated");
        requests.subscriptions.drain(..).collect()
    }

    fn get(&self, metric: Metric) -> u64 {
        self.stats.get(metric)
    }
}

/// What another node publishes when its member `from` says `text` in `room`.
fn say_from(node: &str, from: &str, text: &str) -> Vec<u8> {
    let body = Body::Say {
        from: from.into(),
        text: text.into(),
    };
    let node = node.into();
    Envelope { node, body }.to_bytes()
}

fn message(channel: &str, payload: Vec<u8>) -> Inbound {
    Inbound::Message {
        channel: channel.as_bytes().to_vec(),
        payload,
    }
}

fn bulk(text: &str) -> Frame {
    Frame::BulkString(text.as_bytes().to_vec())
}

// ---- the bus down: the chat decides alone ------------------------------------------------------

#[test]
fn rooms_are_subscribed_as_they_open_and_left_as_they_close_even_while_down() {
    let mut h = Harness::down();
    h.send(ALICE, "hi");
    assert_eq!(h.subscriptions(), [("t:room:lobby".into(), true)]);
    h.send(ALICE, "/join dev");
    assert_eq!(
        h.subscriptions(),
        [("t:room:lobby".into(), false), ("t:room:dev".into(), true)]
    );
}

#[test]
fn while_down_nicknames_who_and_messages_stay_local_and_lost_publishes_are_counted() {
    let mut h = Harness::down();
    h.send(ALICE, "/nick alice");
    h.send(BOB, "hi");
    assert_eq!(
        h.send(BOB, "/nick alice"),
        [(BOB, line("* nick alice is taken"))]
    );
    assert_eq!(
        h.send(BOB, "/who"),
        [(BOB, line("* in lobby: 127.0.0.1:1002, alice"))]
    );
    assert_eq!(
        h.send(BOB, "/msg carol hi"),
        [(BOB, line("* no such nick: carol"))]
    );
    assert_eq!(
        h.commands(),
        Vec::<String>::new(),
        "nothing is asked of a bus that is down"
    );
    assert!(h.get(Metric::ChatBusDroppedDown) > 0);
}

// ---- the bus up: publishing ---------------------------------------------------------------------

#[test]
fn a_message_is_delivered_here_at_once_and_published_once_for_the_others() {
    let mut h = Harness::two_members();
    let sent = h.send(ALICE, "hello");
    assert_eq!(sent.len(), 2, "alice and bob here: {sent:?}");
    let asked = h.asked();
    let publishes: Vec<_> = asked
        .iter()
        .filter(|(args, _)| args[0] == "PUBLISH")
        .collect();
    assert_eq!(publishes.len(), 1);
    let (args, expect) = publishes[0];
    assert_eq!(args[1], "t:room:lobby");
    assert_eq!(*expect, Expect::Published);
    assert_eq!(
        Envelope::parse(args[2].as_bytes()),
        Some(Envelope {
            node: NODE.into(),
            body: Body::Say {
                from: addr(ALICE).to_string(),
                text: "hello".into()
            }
        })
    );
}

#[test]
fn a_newcomer_is_noted_in_its_room_and_announced_to_every_node() {
    let mut h = Harness::up();
    h.send(ALICE, "hi");
    let commands = h.commands();
    assert_eq!(
        commands[0], "EVAL t:who:lobby",
        "presence first: {commands:?}"
    );
    let notice = Envelope {
        node: NODE.into(),
        body: Body::Notice {
            text: "* 127.0.0.1:1001 joined lobby".into(),
        },
    };
    let notice = String::from_utf8(notice.to_bytes()).unwrap();
    assert!(commands.contains(&format!("PUBLISH t:room:lobby {notice}")));
}

#[test]
fn moving_rooms_moves_the_presence_and_the_count_waits_for_redis() {
    let mut h = Harness::two_members();
    let sent = h.send(ALICE, "/join dev");
    assert_eq!(sent, [(BOB, line("* 127.0.0.1:1001 left lobby"))]);
    let asked = h.asked();
    let commands: Vec<&str> = asked.iter().map(|(args, _)| args[0].as_str()).collect();
    assert_eq!(
        commands,
        ["PUBLISH", "PUBLISH", "ZREM", "EVAL", "ZCOUNT"],
        "left, joined, out of lobby, into dev, and the count"
    );
    assert_eq!(asked[2].0[1..], ["t:who:lobby", "aaaa 127.0.0.1:1001"]);
    let (_, joined) = asked.last().unwrap().clone();
    assert_eq!(
        h.reply(joined, Frame::Integer(3)),
        [(ALICE, line("* you joined dev (2 others here)"))]
    );
}

// ---- the bus up: nicknames ----------------------------------------------------------------------

#[test]
fn nick_is_claimed_with_set_nx_px_and_answered_when_redis_is() {
    let mut h = Harness::two_members();
    assert_eq!(
        h.send(ALICE, "/nick alice"),
        [],
        "the answer waits for Redis"
    );
    let asked = h.asked();
    assert_eq!(
        asked[0].0,
        ["SET", "t:nick:alice", NODE, "NX", "PX", "65000"]
    );
    let sent = h.reply(asked[0].1.clone(), Frame::SimpleString(b"OK".to_vec()));
    assert_eq!(
        sent,
        [
            (ALICE, line("* you are now alice")),
            (BOB, line("* 127.0.0.1:1001 is now alice"))
        ]
    );
    let commands = h.commands();
    assert!(commands.contains(&"ZREM t:who:lobby aaaa 127.0.0.1:1001".to_string()));
    assert!(commands.contains(&"EVAL t:who:lobby".to_string()));
}

#[test]
fn a_nick_held_on_another_node_is_refused_like_a_local_clash() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick bob");
    let (_, claim) = h.asked().remove(0);
    assert_eq!(
        h.reply(claim, Frame::Null),
        [(ALICE, line("* nick bob is taken"))]
    );
}

#[test]
fn a_claim_granted_after_its_member_left_is_given_back() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick alice");
    let (_, claim) = h.asked().remove(0);
    h.send(ALICE, "/leave");
    h.commands();
    assert_eq!(h.reply(claim, Frame::SimpleString(b"OK".to_vec())), []);
    assert_eq!(h.commands(), ["EVAL t:nick:alice"], "released");
}

#[test]
fn a_claim_that_goes_unanswered_is_granted_here_and_settled_at_the_next_refresh() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick alice");
    let (_, claim) = h.asked().remove(0);
    let sent = h.bus(Inbound::Unanswered(claim));
    assert!(sent.contains(&(ALICE, line("* you are now alice"))));
}

#[test]
fn leaving_releases_the_nick_and_the_presence() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick alice");
    let (_, claim) = h.asked().remove(0);
    h.reply(claim, Frame::SimpleString(b"OK".to_vec()));
    h.commands();
    h.send(ALICE, "/leave");
    let commands = h.commands();
    assert_eq!(commands[0], "EVAL t:nick:alice");
    assert_eq!(commands[1], "ZREM t:who:lobby aaaa alice");
}

/// After a reconnect, another node turned out to hold the name: the member here gives it up.
#[test]
fn a_nick_lost_to_another_node_falls_back_to_the_address_and_the_room_is_told() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick alice");
    let (_, claim) = h.asked().remove(0);
    h.reply(claim, Frame::SimpleString(b"OK".to_vec()));
    h.bus(Inbound::Down);
    h.bus(Inbound::Up);
    let asked = h.asked();
    let (args, renew) = asked
        .iter()
        .find(|(args, _)| args.get(3).map(String::as_str) == Some("t:nick:alice"))
        .expect("the nick claimed again");
    assert_eq!(args[0], "EVAL");
    let sent = h.reply(renew.clone(), Frame::Integer(0));
    assert_eq!(
        sent,
        [
            (
                ALICE,
                line("* your nick alice is held on another server now; you are 127.0.0.1:1001")
            ),
            (BOB, line("* alice is now 127.0.0.1:1001")),
        ]
    );
    assert_eq!(
        h.send(BOB, "/msg alice hi"),
        [],
        "alice is no name here now"
    );
}

#[test]
fn coming_back_up_claims_every_nick_again_and_notes_every_member() {
    let mut h = Harness::down();
    h.send(ALICE, "/nick alice");
    h.send(BOB, "hi");
    h.bus(Inbound::Up);
    let mut commands = h.commands();
    commands.sort();
    assert_eq!(
        commands,
        ["EVAL t:nick:alice", "EVAL t:who:lobby", "EVAL t:who:lobby"]
    );
}

#[test]
fn activity_refreshes_a_member_at_most_once_per_interval() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/nick alice");
    let (_, claim) = h.asked().remove(0);
    h.reply(claim, Frame::SimpleString(b"OK".to_vec()));
    h.commands();
    h.now += Duration::from_secs(1);
    h.send(ALICE, "one");
    assert!(!h.commands().iter().any(|c| c.starts_with("EVAL")));
    h.now += Duration::from_secs(5);
    h.send(ALICE, "two");
    let commands = h.commands();
    assert!(
        commands.contains(&"EVAL t:nick:alice".to_string()),
        "{commands:?}"
    );
    assert!(commands.contains(&"EVAL t:who:lobby".to_string()));
}

// ---- the bus up: /who, /rooms, /msg --------------------------------------------------------------

#[test]
fn who_lists_the_names_of_every_node_sorted_with_a_bound() {
    let mut h = Harness::two_members();
    assert_eq!(h.send(ALICE, "/who"), []);
    let (_, who) = h.asked().remove(0);
    let reply = Frame::Array(vec![
        Frame::Integer(3),
        bulk("bbbb zoe"),
        bulk("aaaa 127.0.0.1:1001"),
        bulk("bbbb amy"),
    ]);
    assert_eq!(
        h.reply(who.clone(), reply),
        [(ALICE, line("* in lobby: 127.0.0.1:1001, amy, zoe"))]
    );
    let reply = Frame::Array(vec![Frame::Integer(500), bulk("bbbb amy")]);
    assert_eq!(
        h.reply(who, reply),
        [(ALICE, line("* in lobby: amy, and 499 more"))]
    );
}

#[test]
fn rooms_lists_every_node_s_rooms_with_their_sizes() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/rooms");
    let (_, rooms) = h.asked().remove(0);
    let reply = Frame::Array(vec![
        bulk("lobby"),
        Frame::Integer(5),
        bulk("dev"),
        Frame::Integer(2),
    ]);
    assert_eq!(
        h.reply(rooms, reply),
        [(ALICE, line("* rooms: dev (2), lobby (5)"))]
    );
}

#[test]
fn a_who_that_goes_unanswered_or_is_refused_is_answered_from_here() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/who");
    let (_, who) = h.asked().remove(0);
    let here = [(ALICE, line("* in lobby: 127.0.0.1:1001, 127.0.0.1:1002"))];
    assert_eq!(h.bus(Inbound::Unanswered(who.clone())), here);
    let refusal = Frame::Error("NOSCRIPT".into());
    assert_eq!(h.reply(who, refusal), here);
}

#[test]
fn msg_to_a_nick_on_another_node_is_looked_up_then_published_on_its_node() {
    let mut h = Harness::two_members();
    assert_eq!(h.send(ALICE, "/msg zoe psst"), []);
    let (args, lookup) = h.asked().remove(0);
    assert_eq!(args, ["GET", "t:nick:zoe"]);
    assert_eq!(h.reply(lookup, bulk(OTHER)), []);
    let (args, direct) = h.asked().remove(0);
    assert_eq!(args[..2], ["PUBLISH", "t:node:bbbb"]);
    assert_eq!(
        Envelope::parse(args[2].as_bytes()).map(|e| e.body),
        Some(Body::Direct {
            from: addr(ALICE).to_string(),
            to: "zoe".into(),
            text: "psst".into()
        })
    );
    assert_eq!(
        h.reply(direct.clone(), Frame::Integer(1)),
        [(ALICE, line("* sent to zoe"))]
    );
    assert_eq!(
        h.reply(direct, Frame::Integer(0)),
        [(ALICE, line("* no such nick: zoe"))],
        "nobody listens on that node's channel: it is gone"
    );
}

#[test]
fn msg_to_a_nick_nobody_holds_or_while_the_bus_fails_says_so() {
    let mut h = Harness::two_members();
    h.send(ALICE, "/msg zoe psst");
    let (_, lookup) = h.asked().remove(0);
    assert_eq!(
        h.reply(lookup.clone(), Frame::Null),
        [(ALICE, line("* no such nick: zoe"))]
    );
    assert_eq!(
        h.reply(lookup.clone(), bulk(NODE)),
        [(ALICE, line("* no such nick: zoe"))],
        "held by this node for a member gone since"
    );
    assert_eq!(
        h.bus(Inbound::Unanswered(lookup)),
        [(ALICE, line("* not sent to zoe: the chat bus is down"))]
    );
    assert_eq!(
        h.send(ALICE, "/msg 127.0.0.1:9 hi"),
        [(ALICE, line("* no such nick: 127.0.0.1:9"))],
        "an address is looked for here only"
    );
}

// ---- messages from the bus ----------------------------------------------------------------------

#[test]
fn another_node_s_message_reaches_the_members_here_once() {
    let mut h = Harness::two_members();
    let sent = h.bus(message("t:room:lobby", say_from(OTHER, "zoe", "hi")));
    assert_eq!(sent, [(ALICE, line("zoe: hi")), (BOB, line("zoe: hi"))]);
    assert_eq!(h.get(Metric::ChatRelayed), 2);
    assert_eq!(h.get(Metric::ChatBusReceived), 1);
    assert_eq!(
        h.commands(),
        Vec::<String>::new(),
        "nothing is published back"
    );
}

#[test]
fn this_node_s_own_message_handed_back_is_dropped() {
    let mut h = Harness::two_members();
    assert_eq!(
        h.bus(message("t:room:lobby", say_from(NODE, "x", "hi"))),
        []
    );
    assert_eq!(h.get(Metric::ChatBusReceived), 0);
}

#[test]
fn a_message_for_a_room_with_no_members_here_reaches_nobody() {
    let mut h = Harness::two_members();
    assert_eq!(
        h.bus(message("t:room:dev", say_from(OTHER, "zoe", "hi"))),
        []
    );
}

#[test]
fn a_direct_message_reaches_the_nick_here_alone() {
    let mut h = Harness::two_members();
    h.send(BOB, "/nick bob");
    let (_, claim) = h.asked().remove(0);
    h.reply(claim, Frame::SimpleString(b"OK".to_vec()));
    let direct = Envelope {
        node: OTHER.into(),
        body: Body::Direct {
            from: "zoe".into(),
            to: "bob".into(),
            text: "psst".into(),
        },
    };
    assert_eq!(
        h.bus(message("t:node:aaaa", direct.to_bytes())),
        [(BOB, line("[dm] zoe: psst"))]
    );
}

#[test]
fn garbage_and_misplaced_messages_are_dropped_and_counted() {
    let mut h = Harness::two_members();
    assert_eq!(h.bus(message("t:room:lobby", b"not json".to_vec())), []);
    let forged = say_from(OTHER, "zoe", "two\nlines");
    assert_eq!(h.bus(message("t:room:lobby", forged)), []);
    let say_on_node_channel = say_from(OTHER, "zoe", "hi");
    assert_eq!(h.bus(message("t:node:aaaa", say_on_node_channel)), []);
    assert_eq!(h.get(Metric::ChatBusDroppedInvalid), 3);
}
