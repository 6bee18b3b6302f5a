//! The chat's rules, datagram by datagram, without sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Chat, LOBBY, Limits};
use crate::service::chat::outbox::Datagram;
use crate::stats::{Metric, Stats};

/// A chat, a clock, and what the last datagram produced.
struct Harness {
    chat: Chat,
    stats: Stats,
    now: Instant,
    out: Vec<Datagram>,
}

fn limits() -> Limits {
    Limits {
        max_msg: 64,
        max_members: 4,
        max_rooms: 3,
        rate: 0,
        burst: 10,
        idle: Duration::from_secs(60),
        verify: false,
        access_log: false,
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const ALICE: u16 = 1001;
const BOB: u16 = 1002;
const CAROL: u16 = 1003;

impl Harness {
    fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Harness {
            chat: Chat::new(limits, now),
            stats: Stats::default(),
            now,
            out: Vec::new(),
        }
    }

    /// Sends `data` from `port` and returns what the server sent, as `(port, line)` pairs.
    fn send(&mut self, port: u16, data: &[u8]) -> Vec<(u16, String)> {
        self.out.clear();
        self.chat
            .on_datagram(addr(port), data, self.now, &self.stats, &mut self.out);
        self.drain()
    }

    fn drain(&mut self) -> Vec<(u16, String)> {
        let mut sent: Vec<(u16, String)> = self
            .out
            .drain(..)
            .map(|d| (d.to.port(), String::from_utf8(d.payload.to_vec()).unwrap()))
            .collect();
        sent.sort();
        sent
    }

    /// Only the lines sent to `port`.
    fn to(&mut self, port: u16, from: u16, data: &[u8]) -> Vec<String> {
        self.send(from, data)
            .into_iter()
            .filter(|(to, _)| *to == port)
            .map(|(_, line)| line)
            .collect()
    }

    /// Alice, Bob and Carol, named, all in the lobby.
    fn three_members() -> Self {
        let mut h = Harness::new(limits());
        for (port, nick) in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")] {
            h.send(port, format!("/nick {nick}").as_bytes());
        }
        h
    }
}

fn line(text: &str) -> String {
    format!("{text}\n")
}

// ---- membership and relaying -------------------------------------------------------------------

#[test]
fn a_first_datagram_makes_a_lobby_member_whose_text_comes_back() {
    let mut h = Harness::new(limits());
    let sent = h.send(ALICE, b"hello\n");
    assert_eq!(sent, vec![(ALICE, line("127.0.0.1:1001: hello"))]);
    assert_eq!(h.chat.members(), 1);
    assert_eq!(h.stats.get(Metric::ChatMembers), 1);
    assert_eq!(h.stats.get(Metric::ChatRooms), 1);
}

#[test]
fn others_in_the_lobby_are_told_of_a_newcomer() {
    let mut h = Harness::new(limits());
    h.send(ALICE, b"hi");
    let sent = h.send(BOB, b"hey");
    assert!(sent.contains(&(ALICE, line("* 127.0.0.1:1002 joined lobby"))));
    assert!(sent.contains(&(ALICE, line("127.0.0.1:1002: hey"))));
    assert!(sent.contains(&(BOB, line("127.0.0.1:1002: hey"))));
}

#[test]
fn text_goes_to_every_member_of_the_room_sender_included() {
    let mut h = Harness::three_members();
    let sent = h.send(ALICE, b"hi all\r\n");
    assert_eq!(
        sent,
        vec![
            (ALICE, line("alice: hi all")),
            (BOB, line("alice: hi all")),
            (CAROL, line("alice: hi all")),
        ]
    );
    assert_eq!(h.stats.get(Metric::ChatRelayed), 3);
}

#[test]
fn echo_off_stops_the_copy_to_the_sender() {
    let mut h = Harness::three_members();
    assert_eq!(
        h.send(ALICE, b"/echo off"),
        vec![(ALICE, line("* echo off"))]
    );
    let sent = h.send(ALICE, b"quiet");
    assert!(sent.iter().all(|(to, _)| *to != ALICE));
    assert_eq!(sent.len(), 2);
    h.send(ALICE, b"/echo on");
    assert_eq!(h.send(ALICE, b"loud").len(), 3);
}

#[test]
fn rooms_isolate_their_members() {
    let mut h = Harness::three_members();
    h.send(BOB, b"/join dev");
    let sent = h.send(ALICE, b"lobby only");
    assert!(sent.iter().all(|(to, _)| *to != BOB), "{sent:?}");
    let sent = h.send(BOB, b"dev only");
    assert_eq!(sent, vec![(BOB, line("bob: dev only"))]);
}

#[test]
fn joining_tells_the_room_left_and_the_room_joined() {
    let mut h = Harness::three_members();
    h.send(CAROL, b"/join dev");
    let sent = h.send(BOB, b"/join dev");
    assert!(sent.contains(&(ALICE, line("* bob left lobby"))));
    assert!(sent.contains(&(CAROL, line("* bob joined dev"))));
    assert!(sent.contains(&(BOB, line("* you joined dev (1 other here)"))));
    assert_eq!(
        h.to(BOB, BOB, b"/join dev"),
        vec![line("* you are already in dev")]
    );
}

#[test]
fn the_join_reply_counts_the_others_in_the_singular_for_one() {
    let mut h = Harness::new(limits());
    for port in [ALICE, BOB, CAROL, 4000] {
        h.send(port, b"hi");
    }
    assert_eq!(
        h.to(ALICE, ALICE, b"/join dev"),
        vec![line("* you joined dev (0 others here)")]
    );
    assert_eq!(
        h.to(BOB, BOB, b"/join dev"),
        vec![line("* you joined dev (1 other here)")]
    );
    assert_eq!(
        h.to(CAROL, CAROL, b"/join dev"),
        vec![line("* you joined dev (2 others here)")]
    );
}

#[test]
fn an_emptied_room_disappears() {
    let mut h = Harness::three_members();
    h.send(ALICE, b"/join dev");
    assert_eq!(h.chat.rooms(), 2);
    h.send(ALICE, b"/join lobby");
    assert_eq!(h.chat.rooms(), 1);
    assert_eq!(h.stats.get(Metric::ChatRooms), 1);
}

#[test]
fn rooms_past_the_limit_are_refused() {
    let mut h = Harness::three_members();
    h.send(ALICE, b"/join a");
    h.send(BOB, b"/join b");
    assert_eq!(h.chat.rooms(), 3);
    assert_eq!(
        h.to(CAROL, CAROL, b"/join c"),
        vec![line("* too many rooms (the limit is 3)")]
    );
    assert_eq!(
        h.to(CAROL, CAROL, b"/join a"),
        vec![line("* you joined a (1 other here)")]
    );
}

// ---- nicknames and direct messages -------------------------------------------------------------

#[test]
fn a_taken_nick_is_refused_and_a_new_one_announced() {
    let mut h = Harness::three_members();
    assert_eq!(
        h.to(BOB, BOB, b"/nick alice"),
        vec![line("* nick alice is taken")]
    );
    let sent = h.send(BOB, b"/nick robert");
    assert!(sent.contains(&(BOB, line("* you are now robert"))));
    assert!(sent.contains(&(ALICE, line("* bob is now robert"))));
    // The old nick is free again.
    assert_eq!(
        h.to(CAROL, CAROL, b"/nick bob"),
        vec![line("* you are now bob")]
    );
}

#[test]
fn msg_reaches_one_member_by_nick_or_address() {
    let mut h = Harness::three_members();
    let sent = h.send(ALICE, b"/msg bob psst");
    assert_eq!(
        sent,
        vec![
            (ALICE, line("* sent to bob")),
            (BOB, line("[dm] alice: psst"))
        ]
    );
    h.send(CAROL, b"/join dev");
    let sent = h.send(ALICE, b"/msg carol across rooms");
    assert!(sent.contains(&(CAROL, line("[dm] alice: across rooms"))));
    h.send(4000, b"anonymous");
    let sent = h.send(ALICE, b"/msg 127.0.0.1:4000 hi there");
    assert!(sent.contains(&(4000, line("[dm] alice: hi there"))));
    assert_eq!(
        h.to(ALICE, ALICE, b"/msg nobody hi"),
        vec![line("* no such nick: nobody")]
    );
}

#[test]
fn who_and_rooms_list_in_order() {
    let mut h = Harness::three_members();
    h.send(CAROL, b"/join dev");
    assert_eq!(
        h.to(BOB, BOB, b"/who"),
        vec![line("* in lobby: alice, bob")]
    );
    assert_eq!(
        h.to(BOB, BOB, b"/rooms"),
        vec![line("* rooms: dev (1), lobby (2)")]
    );
}

#[test]
fn long_lists_are_cut_with_a_count() {
    let names: Vec<String> = (0..200).map(|i| format!("member-number-{i:03}")).collect();
    let list = super::bounded_list("* in lobby: ", names);
    assert!(list.len() <= super::MAX_LIST_REPLY, "{} bytes", list.len());
    assert!(list.ends_with(" more"), "{list}");
    assert!(list.starts_with("* in lobby: member-number-000, member-number-001"));
}

#[test]
fn leave_ends_membership_until_the_next_datagram() {
    let mut h = Harness::three_members();
    let sent = h.send(BOB, b"/leave");
    assert!(sent.contains(&(ALICE, line("* bob left lobby"))));
    assert!(sent.contains(&(BOB, line("* you left the chat; send anything to come back"))));
    assert_eq!(h.chat.members(), 2);
    assert!(h.send(ALICE, b"bye").iter().all(|(to, _)| *to != BOB));
    h.send(BOB, b"back");
    assert_eq!(h.chat.members(), 3);
}

// ---- commands and bad input --------------------------------------------------------------------

#[test]
fn unknown_commands_and_bad_arguments_get_an_error_line() {
    let mut h = Harness::three_members();
    assert_eq!(
        h.to(ALICE, ALICE, b"/dance"),
        vec![line("* unknown command /dance; try /help")]
    );
    assert_eq!(
        h.to(ALICE, ALICE, b"/msg bob"),
        vec![line("* usage: /msg NICK TEXT")]
    );
    assert!(h.to(ALICE, ALICE, b"/help")[0].starts_with("* commands: "));
}

#[test]
fn oversize_and_invalid_utf8_datagrams_are_refused_not_relayed() {
    let mut h = Harness::three_members();
    assert_eq!(
        h.send(ALICE, &[b'x'; 65]),
        vec![(ALICE, line("* message too long: 65 bytes, the limit is 64"))]
    );
    assert_eq!(
        h.send(ALICE, b"caf\xe9"),
        vec![(ALICE, line("* not relayed: messages must be UTF-8 text"))]
    );
    assert_eq!(h.stats.get(Metric::ChatRefused), 2);
    assert_eq!(h.stats.get(Metric::ChatRelayed), 0);
}

/// Nothing to say is not relayed, but the sender is answered, so a client that waits for a reply
/// to each line (the tutorial's first program) is not left waiting.
#[test]
fn an_empty_or_blank_datagram_is_answered_and_not_relayed() {
    let mut h = Harness::three_members();
    let blanks: [&[u8]; 8] = [
        b"",
        b"\n",
        b"\r\n",
        b"   \n",
        b"\t",
        b" \t \r\n",
        b"\n\n",
        "\u{3000}".as_bytes(), // an ideographic space, as a Chinese keyboard types it
    ];
    for data in blanks {
        assert_eq!(
            h.send(ALICE, data),
            vec![(ALICE, line("* not relayed: the message is empty"))],
            "{data:?}"
        );
    }
    assert_eq!(h.stats.get(Metric::ChatRefused), blanks.len() as u64);
    assert_eq!(h.stats.get(Metric::ChatRelayed), 0);
    // Spaces around real text are kept: only an all-blank line is refused.
    assert_eq!(h.to(BOB, ALICE, b" x \n"), vec![line("alice:  x ")]);
}

#[test]
fn an_empty_first_datagram_still_makes_a_member() {
    let mut h = Harness::new(limits());
    h.send(ALICE, b"hi");
    let sent = h.send(BOB, b"\n");
    assert_eq!(
        sent,
        vec![
            (ALICE, line("* 127.0.0.1:1002 joined lobby")),
            (BOB, line("* not relayed: the message is empty")),
        ]
    );
    assert_eq!(h.chat.members(), 2);
}

#[test]
fn text_with_a_line_break_or_control_character_is_refused() {
    let mut h = Harness::three_members();
    for text in [
        &b"hi\n* bob left lobby"[..],
        b"/msg bob x\ny",
        b"bell\x07",
        b"esc\x1b[2J",
    ] {
        assert_eq!(
            h.send(ALICE, text),
            vec![(
                ALICE,
                line("* not relayed: line breaks and control characters are not allowed")
            )],
            "{text:?}"
        );
    }
    assert_eq!(h.send(ALICE, b"tab\tis fine\r\n").len(), 3);
}

#[test]
fn sizes_and_rates_of_one_are_told_in_the_singular() {
    let mut h = Harness::new(Limits {
        max_msg: 0,
        rate: 1,
        burst: 1,
        ..limits()
    });
    assert_eq!(
        h.send(ALICE, b"x"),
        vec![(ALICE, line("* message too long: 1 byte, the limit is 0"))]
    );
    assert_eq!(
        h.send(ALICE, b"x"),
        vec![(ALICE, line("* slow down: at most 1 message a second"))]
    );
}

#[test]
fn past_the_member_cap_a_new_address_is_told_and_not_added() {
    let mut h = Harness::three_members();
    h.send(4000, b"fourth");
    assert_eq!(h.chat.members(), 4);
    assert_eq!(h.send(5000, b"fifth"), vec![(5000, line("* server full"))]);
    assert_eq!(h.chat.members(), 4);
}

// ---- rate limit --------------------------------------------------------------------------------

#[test]
fn the_rate_limit_drops_excess_and_says_so_once_a_second() {
    let mut h = Harness::new(Limits {
        rate: 2,
        burst: 3,
        ..limits()
    });
    for _ in 0..3 {
        assert_eq!(h.send(ALICE, b"ok").len(), 1);
    }
    assert_eq!(
        h.send(ALICE, b"too fast"),
        vec![(ALICE, line("* slow down: at most 2 messages a second"))]
    );
    assert_eq!(
        h.send(ALICE, b"still too fast"),
        vec![],
        "told once a second at most"
    );
    assert_eq!(h.stats.get(Metric::ChatDroppedRate), 2);
    h.now += Duration::from_millis(500);
    assert_eq!(
        h.send(ALICE, b"refilled"),
        vec![(ALICE, line("127.0.0.1:1001: refilled"))]
    );
}

// ---- expiry ------------------------------------------------------------------------------------

#[test]
fn silent_members_expire_and_their_room_is_told() {
    let mut h = Harness::three_members();
    h.now += Duration::from_secs(30);
    h.send(ALICE, b"still here");
    h.send(BOB, b"me too");
    h.now += Duration::from_secs(31);
    // Carol's expiry is due; Alice's and Bob's first entries are too, but they spoke since.
    assert!(h.chat.next_expiry().unwrap() <= h.now);
    h.chat.expire(h.now, &h.stats, &mut h.out);
    let sent = h.drain();
    assert_eq!(
        sent,
        vec![
            (ALICE, line("* carol left lobby (silent for 60s)")),
            (BOB, line("* carol left lobby (silent for 60s)")),
        ]
    );
    assert_eq!(h.chat.members(), 2);
    assert!(
        h.chat.next_expiry().unwrap() > h.now,
        "the others were re-armed"
    );
    h.now += Duration::from_secs(60);
    h.chat.expire(h.now, &h.stats, &mut h.out);
    assert_eq!(h.chat.members(), 0);
    assert_eq!(h.chat.rooms(), 0);
    assert_eq!(h.chat.next_expiry(), None);
}

/// An empty datagram is not relayed, but it shows the member is still there, as any datagram
/// does.
#[test]
fn an_empty_datagram_keeps_a_member_from_expiring() {
    let mut h = Harness::three_members();
    h.now += Duration::from_secs(30);
    h.send(ALICE, b"\n");
    h.now += Duration::from_secs(31);
    h.chat.expire(h.now, &h.stats, &mut h.out);
    let sent = h.drain();
    assert!(
        sent.contains(&(ALICE, line("* bob left lobby (silent for 60s)"))),
        "{sent:?}"
    );
    assert_eq!(h.chat.members(), 1, "alice stays");
    assert_eq!(h.to(ALICE, ALICE, b"/who"), vec![line("* in lobby: alice")]);
}

// ---- verification ------------------------------------------------------------------------------

fn verifying() -> Harness {
    Harness::new(Limits {
        verify: true,
        ..limits()
    })
}

fn cookie_in(reply: &str) -> &str {
    reply.trim_end().rsplit(' ').next().unwrap()
}

#[test]
fn an_unverified_address_gets_one_short_cookie_and_no_membership() {
    let mut h = verifying();
    let sent = h.send(ALICE, b"hello, let me in");
    assert_eq!(sent.len(), 1);
    let (to, reply) = &sent[0];
    assert_eq!(*to, ALICE);
    assert!(reply.starts_with("* verify with: /verify "), "{reply}");
    assert!(reply.len() <= 64, "{} bytes", reply.len());
    assert_eq!(h.chat.members(), 0);
}

#[test]
fn a_cookie_reply_is_never_more_than_three_times_the_request() {
    let mut h = verifying();
    assert_eq!(h.send(ALICE, b"hi"), vec![], "too small to answer");
    assert_eq!(h.stats.get(Metric::ChatRefused), 1);
    let request = b"hello chat, me";
    let sent = h.send(ALICE, request);
    assert!(sent[0].1.len() <= 3 * request.len());
}

#[test]
fn the_right_cookie_from_the_right_address_admits() {
    let mut h = verifying();
    let sent = h.send(ALICE, b"hello, let me in");
    let cookie = cookie_in(&sent[0].1).to_string();
    // A forger who guesses or replays it from elsewhere gets nowhere.
    let forged = h.send(BOB, format!("/verify {cookie}").as_bytes());
    assert!(forged[0].1.starts_with("* verify with:"));
    assert_eq!(h.chat.members(), 0);

    let sent = h.send(ALICE, format!("/verify {cookie}").as_bytes());
    assert_eq!(
        sent,
        vec![(ALICE, line("* verified: you are 127.0.0.1:1001, in lobby"))]
    );
    assert_eq!(h.chat.members(), 1);
    assert_eq!(
        h.to(ALICE, ALICE, b"now I talk"),
        vec![line("127.0.0.1:1001: now I talk")]
    );
}

#[test]
fn the_lobby_constant_names_the_first_room() {
    let mut h = Harness::new(limits());
    h.send(ALICE, b"x");
    assert_eq!(
        h.to(ALICE, ALICE, b"/rooms"),
        vec![line(&format!("* rooms: {LOBBY} (1)"))]
    );
}
