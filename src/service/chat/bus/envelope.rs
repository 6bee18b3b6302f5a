//! What one chat message looks like on the bus: a small JSON object.
//!
//! ```json
//! {"node":"9f3c0a5e2b7d4411","kind":"say","from":"alice","text":"hello"}
//! {"node":"9f3c0a5e2b7d4411","kind":"notice","text":"* alice joined dev"}
//! {"node":"9f3c0a5e2b7d4411","kind":"direct","from":"alice","to":"bob","text":"psst"}
//! ```
//!
//! `node` is the origin, so a process drops its own messages when Redis hands them back. A `say`
//! and a `notice` travel on the room's channel (the room is the channel's name), a `direct` on
//! the recipient's node's channel. JSON, because `redis-cli SUBSCRIBE` then shows an operator
//! readable traffic, and `serde` already writes the admin service's documents.
//!
//! A message from the bus is checked as carefully as a datagram from a member: the same rules
//! keep a line break or a control character out of every text, whoever published it.

use serde::{Deserialize, Serialize};

/// Largest message accepted from the bus, in bytes: a few times the largest datagram a member may
/// send (JSON escaping can double it), and far from the link's input bound.
pub const MAX_BYTES: usize = 256 * 1024;

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that published it.
    pub node: String,
    /// What it is.
    #[serde(flatten)]
    pub body: Body,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    /// A member's text, for the room: shown as `<from>: <text>`.
    Say {
        /// The sender's nickname, or its address.
        from: String,
        /// What it said.
        text: String,
    },
    /// A line of the server's own (`* bob joined dev`), for the room as it is.
    Notice {
        /// The line, without its newline.
        text: String,
    },
    /// `/msg` to a member of the receiving node: shown to `to` alone as `[dm] <from>: <text>`.
    Direct {
        /// The sender's nickname, or its address.
        from: String,
        /// The recipient's nickname.
        to: String,
        /// The message.
        text: String,
    },
}

impl Envelope {
    /// The message as it goes on the bus.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain strings in a derived struct: serialising into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A message from the bus, or `None` if it is not one, too long, or carries a line break or
    /// a control character in any of its texts.
    pub fn parse(payload: &[u8]) -> Option<Envelope> {
        if payload.len() > MAX_BYTES {
            return None;
        }
        let envelope: Envelope = serde_json::from_slice(payload).ok()?;
        let texts: &[&str] = match &envelope.body {
            Body::Say { from, text } => &[from, text],
            Body::Notice { text } => &[text],
            Body::Direct { from, to, text } => &[from, to, text],
        };
        let clean = |s: &&str| !s.is_empty() && !s.chars().any(|c| c.is_control() && c != '\t');
        (!envelope.node.is_empty() && texts.iter().all(clean)).then_some(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(text: &str) -> Envelope {
        Envelope {
            node: "9f3c0a5e2b7d4411".into(),
            body: Body::Say {
                from: "alice".into(),
                text: text.into(),
            },
        }
    }

    #[test]
    fn a_message_is_the_json_the_docs_show_and_parses_back() {
        let bytes = say("hello").to_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"node":"9f3c0a5e2b7d4411","kind":"say","from":"alice","text":"hello"}"#
        );
        assert_eq!(Envelope::parse(&bytes), Some(say("hello")));
        let direct = Envelope {
            node: "n".into(),
            body: Body::Direct {
                from: "a".into(),
                to: "b".into(),
                text: "psst".into(),
            },
        };
        assert_eq!(Envelope::parse(&direct.to_bytes()), Some(direct));
    }

    #[test]
    fn what_a_member_could_not_send_is_not_taken_from_the_bus_either() {
        assert_eq!(Envelope::parse(&say("two\nlines").to_bytes()), None);
        assert_eq!(Envelope::parse(&say("bell\u{7}").to_bytes()), None);
        assert_eq!(Envelope::parse(&say("").to_bytes()), None);
        assert!(Envelope::parse(&say("tab\tis fine").to_bytes()).is_some());
        assert_eq!(Envelope::parse(b"not json"), None);
        assert_eq!(
            Envelope::parse(br#"{"node":"n","kind":"shout","text":"x"}"#),
            None
        );
        assert_eq!(
            Envelope::parse(br#"{"node":"","kind":"notice","text":"x"}"#),
            None
        );
        let huge = say(&"x".repeat(MAX_BYTES)).to_bytes();
        assert_eq!(Envelope::parse(&huge), None);
    }
}
