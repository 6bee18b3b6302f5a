//! The access lines as text: every key in its place, and values quoted so a line always splits
//! into its pairs, whatever a client sent.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn peer() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

fn moved(bytes_in: u64, bytes_out: u64) -> Moved {
    Moved {
        bytes_in,
        bytes_out,
    }
}

/// Splits a line into its pairs as a reader of the log would: at spaces outside quotes.
fn pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (i, '"') => break i + 1,
                        (_, '\\') => value.push(chars.next().expect("escaped character").1),
                        (_, c) => value.push(c),
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
    pairs
}

#[test]
fn a_download_line_names_every_figure_in_order() {
    let mut notes = Notes::new("files", peer());
    notes.asked = Some("GET a.txt 0".into());
    notes.answer = Some(Answer::Ok(1234));
    let close = Close::Reason(CloseReason::Finished);
    let line = notes.line(moved(10, 1244), Duration::from_millis(4), close);
    assert_eq!(
        line.to_string(),
        "peer=127.0.0.1:5000 service=files asked=\"GET a.txt 0\" answer=\"OK 1234\" in=10 \
         out=1244 duration=0.004s close=finished"
    );
}

#[test]
fn what_is_not_known_is_a_dash() {
    let line = Line {
        peer: None,
        service: "echo",
        asked: Some("echo"),
        answer: None,
        moved: moved(0, 0),
        duration: Duration::ZERO,
        close: Close::Reason(CloseReason::Limit),
    };
    assert_eq!(
        line.to_string(),
        "peer=- service=echo asked=echo answer=- in=0 out=0 duration=0.000s close=limit"
    );
}

#[test]
fn answers_and_close_reasons_have_one_spelling_each() {
    assert_eq!(Answer::Ok(3).to_string(), "OK 3");
    assert_eq!(Answer::Err(404).to_string(), "ERR 404");
    assert_eq!(Answer::Status(200).to_string(), "200");
    let names: Vec<String> = CloseReason::ALL
        .into_iter()
        .map(|reason| Close::Reason(reason).to_string())
        .chain([Close::KeepAlive.to_string()])
        .collect();
    assert_eq!(
        names,
        [
            "peer",
            "finished",
            "reset",
            "idle",
            "limit",
            "error",
            "shutdown",
            "keep-alive"
        ]
    );
}

#[test]
fn an_admin_request_that_kept_the_connection_says_keep_alive() {
    let mut notes = Notes::new("admin", peer());
    notes.asked = Some("GET /connections?service=echo".into());
    notes.answer = Some(Answer::Status(200));
    let line = notes.line(
        moved(80, 512),
        Duration::from_millis(1500),
        Close::KeepAlive,
    );
    assert_eq!(
        line.to_string(),
        "peer=127.0.0.1:5000 service=admin asked=\"GET /connections?service=echo\" answer=200 \
         in=80 out=512 duration=1.500s close=keep-alive"
    );
}

#[test]
fn values_a_client_chose_cannot_break_the_line_apart() {
    let nasty = "a \"b\" c\\d=e\nclose=finished\t\u{1b}";
    let line = Line {
        peer: Some(peer()),
        service: "files",
        asked: Some(nasty),
        answer: Some(Answer::Err(404)),
        moved: moved(1, 2),
        duration: Duration::ZERO,
        close: Close::Reason(CloseReason::Finished),
    }
    .to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains(r#"asked="a \"b\" c\\d=e\nclose=finished\t\u{1b}""#),
        "{line}"
    );
    let keys: Vec<String> = pairs(&line).into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        [
            "peer", "service", "asked", "answer", "in", "out", "duration", "close"
        ]
    );
}

#[test]
fn a_real_dash_or_empty_value_is_quoted_to_tell_it_from_none() {
    let line = ChatLine {
        peer: peer(),
        event: ChatEvent::Nick { was: Some("") },
        nick: Some("-"),
        room: "lobby",
    };
    assert_eq!(
        line.to_string(),
        "peer=127.0.0.1:5000 service=chat event=nick nick=\"-\" room=lobby was=\"\""
    );
}

#[test]
fn chat_lines_name_the_event_the_nick_and_the_room() {
    let line = |event, nick| {
        ChatLine {
            peer: peer(),
            event,
            nick,
            room: "games",
        }
        .to_string()
    };
    let at = "peer=127.0.0.1:5000 service=chat";
    assert_eq!(
        line(ChatEvent::Join { from: None }, None),
        format!("{at} event=join nick=- room=games from=-")
    );
    assert_eq!(
        line(
            ChatEvent::Join {
                from: Some("lobby")
            },
            Some("alice")
        ),
        format!("{at} event=join nick=alice room=games from=lobby")
    );
    assert_eq!(
        line(ChatEvent::Nick { was: None }, Some("alice")),
        format!("{at} event=nick nick=alice room=games was=-")
    );
    assert_eq!(
        line(ChatEvent::Leave, Some("alice")),
        format!("{at} event=leave nick=alice room=games")
    );
    assert_eq!(
        line(ChatEvent::Expire, None),
        format!("{at} event=expire nick=- room=games")
    );
}

#[test]
fn clip_keeps_short_text_and_cuts_long_text_at_a_character() {
    assert_eq!(clip("GET a.txt 0"), "GET a.txt 0");
    let long = "é".repeat(MAX_ASKED + 5);
    let clipped = clip(&long);
    assert_eq!(clipped.chars().count(), MAX_ASKED + 1);
    assert!(clipped.ends_with("é…"));
    assert_eq!(clip(&"x".repeat(MAX_ASKED)), "x".repeat(MAX_ASKED));
}
