//! The chat's slash commands: parsing a datagram that starts with `/`, and the name rules shared
//! by nicknames and rooms.

/// A parsed command. Arguments borrow from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `/nick NAME`
    Nick(&'a str),
    /// `/join ROOM`
    Join(&'a str),
    /// `/leave`
    Leave,
    /// `/who`
    Who,
    /// `/rooms`
    Rooms,
    /// `/msg NICK TEXT`
    Msg {
        /// The recipient's nickname (or `ip:port`).
        to: &'a str,
        /// The message.
        text: &'a str,
    },
    /// `/echo on` or `/echo off`
    Echo(bool),
    /// `/help`
    Help,
    /// `/verify COOKIE` (with `--chat-verify`)
    Verify(&'a str),
    /// A known command with wrong arguments: the usage line to show.
    Usage(&'static str),
    /// Not a command this server knows.
    Unknown(&'a str),
}

/// The `/help` text.
pub const HELP: &str = "* commands: /nick NAME, /join ROOM, /leave, /who, /rooms, /msg NICK TEXT, \
/echo on|off, /help; anything else is said to your room";

/// Parses `line`, which starts with `/`.
pub fn parse(line: &str) -> Command<'_> {
    let line = line.trim_end();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match word {
        "/nick" if is_name(rest) => Command::Nick(rest),
        "/nick" => Command::Usage("/nick NAME (1-32 printable characters, no spaces or ':')"),
        "/join" if is_name(rest) => Command::Join(rest),
        "/join" => Command::Usage("/join ROOM (1-32 printable characters, no spaces or ':')"),
        "/leave" => Command::Leave,
        "/who" => Command::Who,
        "/rooms" => Command::Rooms,
        "/msg" => match rest.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => Command::Msg {
                to,
                text: text.trim(),
            },
            _ => Command::Usage("/msg NICK TEXT"),
        },
        "/echo" => match rest {
            "on" => Command::Echo(true),
            "off" => Command::Echo(false),
            _ => Command::Usage("/echo on|off"),
        },
        "/help" => Command::Help,
        "/verify" if !rest.is_empty() => Command::Verify(rest),
        "/verify" => Command::Usage("/verify COOKIE"),
        other => Command::Unknown(other),
    }
}

/// Nicknames and room names: 1 to 32 printable characters, no whitespace, and no `:`, which
/// keeps them apart from the default nicknames (`ip:port`).
pub fn is_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=32).contains(&count)
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("/nick alice\n"), Command::Nick("alice"));
        assert_eq!(parse("/join dev"), Command::Join("dev"));
        assert_eq!(parse("/leave"), Command::Leave);
        assert_eq!(parse("/who"), Command::Who);
        assert_eq!(parse("/rooms"), Command::Rooms);
        assert_eq!(
            parse("/msg bob hello there"),
            Command::Msg {
                to: "bob",
                text: "hello there"
            }
        );
        assert_eq!(parse("/echo off"), Command::Echo(false));
        assert_eq!(parse("/echo on"), Command::Echo(true));
        assert_eq!(parse("/help"), Command::Help);
        assert_eq!(parse("/verify 00ff"), Command::Verify("00ff"));
    }

    #[test]
    fn bad_arguments_give_the_usage_and_unknown_commands_are_named() {
        assert!(matches!(parse("/nick"), Command::Usage(_)));
        assert!(matches!(parse("/nick two words"), Command::Usage(_)));
        assert!(matches!(parse("/nick a:b"), Command::Usage(_)));
        assert!(matches!(parse("/msg bob"), Command::Usage(_)));
        assert!(matches!(parse("/echo maybe"), Command::Usage(_)));
        assert_eq!(parse("/dance now"), Command::Unknown("/dance"));
    }

    #[test]
    fn names_are_short_printable_words() {
        assert!(is_name("alice"));
        assert!(is_name("李雷"));
        assert!(is_name(&"x".repeat(32)));
        assert!(!is_name(&"x".repeat(33)));
        assert!(!is_name(""));
        assert!(!is_name("a b"));
        assert!(!is_name("tab\there"));
        assert!(!is_name("127.0.0.1:80"));
    }
}

/// Properties over generated datagrams: `parse` never panics, and a command re-renders to a line
/// that parses to the same command.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// The line a client would type for `command`; `None` for a usage reply or an unknown
    /// command, which keep no record of the whole line that earned them.
    fn render(command: Command<'_>) -> Option<String> {
        Some(match command {
            Command::Nick(name) => format!("/nick {name}"),
            Command::Join(room) => format!("/join {room}"),
            Command::Leave => "/leave".into(),
            Command::Who => "/who".into(),
            Command::Rooms => "/rooms".into(),
            Command::Msg { to, text } => format!("/msg {to} {text}"),
            Command::Echo(true) => "/echo on".into(),
            Command::Echo(false) => "/echo off".into(),
            Command::Help => "/help".into(),
            Command::Verify(cookie) => format!("/verify {cookie}"),
            Command::Usage(_) | Command::Unknown(_) => return None,
        })
    }

    /// Datagrams that start like commands, with arguments built from the pieces the parser
    /// cares about: spaces of every kind, `:`, over-long names, line breaks.
    fn command_lines() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            Just("/nick"),
            Just("/join"),
            Just("/leave"),
            Just("/who"),
            Just("/rooms"),
            Just("/msg"),
            Just("/echo"),
            Just("/help"),
            Just("/verify"),
            Just("/dance"),
            Just("/"),
        ];
        let piece = prop_oneof![
            Just(" "),
            Just("  "),
            Just("\t"),
            Just("\n"),
            Just("\u{3000}"),
            Just("alice"),
            Just("李雷"),
            Just("a:b"),
            Just("on"),
            Just("off"),
            Just("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ];
        (word, prop::collection::vec(piece, 0..6))
            .prop_map(|(word, pieces)| format!("{word}{}", pieces.concat()))
    }

    fn any_datagram() -> impl Strategy<Value = String> {
        prop_oneof![
            command_lines(),
            any::<String>().prop_map(|text| format!("/{text}")),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_command_re_renders_to_a_line_that_parses_the_same(line in any_datagram()) {
            let command = parse(&line);
            match command {
                Command::Nick(name) | Command::Join(name) => prop_assert!(is_name(name)),
                Command::Msg { to, text } => {
                    prop_assert!(!to.is_empty() && !to.contains(' '));
                    prop_assert!(!text.is_empty() && text.trim() == text);
                }
                // What the reply names as unknown is the first word the client sent.
                Command::Unknown(word) => {
                    prop_assert!(line.starts_with(word) && !word.contains(' '));
                }
                _ => {}
            }
            if let Some(rendered) = render(command) {
                prop_assert_eq!(parse(&rendered), command, "rendered as {:?}", rendered);
            }
        }
    }
}
