//! The chat bus: chat rooms shared by several readyloop processes through Redis pub/sub
//! (`--chat-bus redis://HOST:PORT[/DB]`), in the same loop as everything else.
//!
//! One process is one core. To serve a chat larger than one core, or one spread over hosts, each
//! process keeps its own members and relays what they say to the others through Redis, the way
//! Socket.IO's Redis adapter, Centrifugo and Phoenix PubSub do. A process has two connections to
//! Redis, each an endpoint of the table like any client ([`link::Link`]): one for commands
//! (`PUBLISH`, the nickname claims, `/who`), one in subscribe mode, which Redis allows to do
//! nothing else. Every process has a random node id ([`node_id`]); a member's message goes to the
//! local members of its room at once and is published on `<prefix>room:<room>`, which every
//! process with members in that room subscribes to, and each delivers it to its own members only.
//! [`envelope`] is what a message looks like on the bus; `docs/DESIGN.md` has the picture and the
//! guarantees (at most once, never twice, never back to its origin).
//!
//! The relay and its links are separate endpoints, and a handler may borrow no endpoint but its
//! own. So what passes between them waits in the [`Exchange`], which the loop keeps and lends to
//! every handler through [`Context::bus`](crate::service::Context::bus): the relay leaves commands
//! there for the command link and subscription changes for the subscriber link, the links leave
//! replies and messages for the relay, and each side names the endpoint it left work for; the
//! loop calls that endpoint before it polls again. Everything in the exchange is bounded.
//!
//! What the chat asks of Redis and makes of the answers is in `members/federation.rs`, beside
//! the rules it extends; this module only carries it. Not here: `AUTH`, TLS, Sentinel and Cluster
//! (`docs/DESIGN.md` says what a cluster would change).

pub mod backoff;
pub mod envelope;
pub mod link;
pub mod resp;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use mio::Token;

use self::resp::Frame;
use crate::config::{ChatBus, Config};
use crate::stats::{Metric, Stats};

/// How often, at most, a member's nickname claim and presence are refreshed in Redis while it is
/// active: often enough that `/who` on another node is right within seconds, rarely enough that a
/// chatty member costs one command every few seconds, not one per message.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Replies and messages waiting for the relay, past which the subscriber link stops reading
/// (TCP then pushes back on Redis): a few passes of the loop's worth of room traffic.
const INBOX_LIMIT: usize = 4096;

/// What the chat bus needs of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where Redis listens, and which database holds the keys.
    pub redis: ChatBus,
    /// Put before every key and channel (`--chat-bus-prefix`).
    pub prefix: String,
    /// Commands waiting for Redis before the oldest are dropped (`--chat-bus-queue`); also the
    /// most commands sent and not yet answered.
    pub queue: usize,
    /// This process's id on the bus.
    pub node: String,
    /// How long a nickname claim or a presence entry lives in Redis unless refreshed:
    /// `--chat-idle` plus the refresh interval, so it outlives its member, whose last refresh
    /// came at most one interval before its last sign of life.
    pub ttl: Duration,
    /// How often an active member is refreshed: [`REFRESH_EVERY`], or less than half
    /// `--chat-idle` when that is short.
    pub refresh: Duration,
}

impl Settings {
    /// The bus settings of a configuration with `--chat-bus` set, for the node `node`.
    pub fn from_config(config: &Config, redis: ChatBus, node: String) -> Self {
        let refresh = REFRESH_EVERY.min(config.chat_idle / 2);
        Settings {
            redis,
            prefix: config.chat_bus_prefix.clone(),
            queue: config.chat_bus_queue.max(1),
            node,
            ttl: config.chat_idle + refresh,
            refresh,
        }
    }

    /// The channel of a room: `<prefix>room:<room>`.
    pub fn room_channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// The channel of a node, for direct messages to its members: `<prefix>node:<id>`.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    /// The key that says which node holds a nickname: `<prefix>nick:<name>`.
    pub fn nick_key(&self, nick: &str) -> String {
        format!("{}nick:{nick}", self.prefix)
    }

    /// The sorted set of a room's members on every node, scored by expiry: `<prefix>who:<room>`.
    pub fn who_key(&self, room: &str) -> String {
        format!("{}who:{room}", self.prefix)
    }

    /// The sorted set of rooms with members anywhere, scored by expiry: `<prefix>rooms`.
    pub fn rooms_key(&self) -> String {
        format!("{}rooms", self.prefix)
    }
}

/// A fresh node id: 16 hexadecimal digits, random per process start.
///
/// Drawn from the standard library's per-instance random hash keys, mixed with the time and the
/// process id, so two processes started at once on one host still differ. It names a process on
/// the bus, nothing more: it is no secret.
pub fn node_id() -> String {
    let mut hasher = RandomState::new().build_hasher();
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(since_epoch.as_nanos());
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// What the chat does with Redis's reply to one command. The command link keeps these in the
/// order it sent the commands: Redis answers on one connection in order, so the reply at the
/// head of the input answers the expectation at the head of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Only that it worked (presence, releases); a failure is logged and otherwise ignored.
    Nothing,
    /// A `PUBLISH` to a room: counted as published once Redis has taken it.
    Published,
    /// `/nick`: `SET NX` answers `OK`, or nil when another node holds the name.
    Claim {
        /// Who asked.
        member: SocketAddr,
        /// The name asked for.
        nick: String,
    },
    /// A held nickname refreshed (or claimed again after a reconnect): 1, or 0 when another
    /// node took it meanwhile.
    Renew {
        /// Who holds it here.
        member: SocketAddr,
        /// The name.
        nick: String,
    },
    /// `/join`: how many are in the room on every node, for `* you joined ROOM (N others here)`.
    Joined {
        /// Who joined.
        member: SocketAddr,
        /// The room joined.
        room: String,
    },
    /// `/who`: the members of the room on every node.
    Who {
        /// Who asked.
        member: SocketAddr,
        /// The room asked about.
        room: String,
    },
    /// `/rooms`: the rooms on every node, with their sizes.
    Rooms {
        /// Who asked.
        member: SocketAddr,
    },
    /// `/msg` to a name no local member has: which node holds it.
    Lookup {
        /// Who sends.
        member: SocketAddr,
        /// The sender's name as the recipient will see it.
        name: String,
        /// The recipient's nickname.
        to: String,
        /// The message.
        text: String,
    },
    /// `/msg` published to the recipient's node: how many processes heard it (0: that node is
    /// gone).
    Direct {
        /// Who sent it.
        member: SocketAddr,
        /// The recipient's nickname.
        to: String,
    },
}

impl Expect {
    /// Whether the relay must hear how the command ended: a member is waiting for an answer, or
    /// a nickname may have to be given up.
    pub fn wants_answer(&self) -> bool {
        !matches!(self, Expect::Nothing | Expect::Published)
    }
}

/// One command for Redis, already in RESP, and what its reply means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The encoded command.
    pub bytes: Vec<u8>,
    /// What to do with the reply.
    pub expect: Expect,
}

impl Command {
    /// The command `args` (its name first), encoded.
    pub fn new(expect: Expect, args: &[&[u8]]) -> Self {
        let mut bytes = Vec::new();
        resp::encode(args, &mut bytes);
        Command { bytes, expect }
    }
}

/// What the links leave for the relay.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The command link is ready: the chat answers through Redis again, and claims its
    /// nicknames anew.
    Up,
    /// The command link is gone: the chat answers from what this node knows until it is back.
    Down,
    /// Redis answered a command.
    Reply {
        /// What the command was for.
        expect: Expect,
        /// Redis's reply.
        reply: Frame,
    },
    /// A command that will never be answered: dropped from a full queue, or lost with its
    /// connection. The member is answered from what this node knows.
    Unanswered(Expect),
    /// A message published on a channel this node subscribes to.
    Message {
        /// The channel.
        channel: Vec<u8>,
        /// The message, an [`envelope::Envelope`] unless someone else publishes there.
        payload: Vec<u8>,
    },
}

/// The endpoints of one bus: whom the exchange wakes for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// The chat relay.
    pub relay: Token,
    /// The command link.
    pub commands: Token,
    /// The subscriber link.
    pub subscriber: Token,
}

/// Work the relay and the two links leave one another, in the loop's keeping.
#[derive(Debug)]
pub struct Exchange {
    tokens: Tokens,
    /// Commands for the command link, oldest first, at most `limit`.
    commands: VecDeque<Command>,
    limit: usize,
    /// Subscription changes for the subscriber link: the latest wish for each channel.
    subscriptions: BTreeMap<String, bool>,
    /// Replies and messages for the relay, oldest first.
    inbox: VecDeque<Inbound>,
    /// The subscriber link stopped reading for want of room in the inbox, and waits to be
    /// woken once the relay has emptied it.
    paused: bool,
    /// Endpoints with work waiting here, each once, for the loop to call.
    due: Vec<Token>,
}

impl Exchange {
    /// An empty exchange between the endpoints of `tokens`, holding at most `limit` commands.
    pub fn new(tokens: Tokens, limit: usize) -> Self {
        Exchange {
            tokens,
            commands: VecDeque::new(),
            limit: limit.max(1),
            subscriptions: BTreeMap::new(),
            inbox: VecDeque::new(),
            paused: false,
            due: Vec::new(),
        }
    }

    /// The relay hands a command to the command link. When the queue is full the oldest command
    /// is dropped and counted; if a member waits on it, the relay hears it went unanswered.
    pub fn send(&mut self, command: Command, stats: &Stats) {
        if self.commands.len() >= self.limit {
            if let Some(dropped) = self.commands.pop_front() {
                stats.add(Metric::ChatBusDroppedQueue, 1);
                if dropped.expect.wants_answer() {
                    self.deliver(Inbound::Unanswered(dropped.expect));
                }
            }
        }
        self.commands.push_back(command);
        self.wake(self.tokens.commands);
    }

    /// The relay asks the subscriber link to subscribe to `channel`, or (`on` false) to stop.
    pub fn subscribe(&mut self, channel: String, on: bool) {
        self.subscriptions.insert(channel, on);
        self.wake(self.tokens.subscriber);
    }

    /// The command link takes the oldest waiting command.
    pub fn next_command(&mut self) -> Option<Command> {
        let command = self.commands.pop_front();
        if self.commands.is_empty() {
            // A burst's worth of capacity is not kept for the quiet hours.
            self.commands.shrink_to(0);
        }
        command
    }

    /// The subscriber link takes every subscription change asked for since it last looked.
    pub fn take_subscriptions(&mut self) -> BTreeMap<String, bool> {
        std::mem::take(&mut self.subscriptions)
    }

    /// A link leaves something for the relay.
    pub fn deliver(&mut self, inbound: Inbound) {
        self.inbox.push_back(inbound);
        self.wake(self.tokens.relay);
    }

    /// Whether the relay has so much waiting that the subscriber link must stop reading; if so,
    /// the link is woken once the relay has emptied its inbox.
    pub fn inbox_full(&mut self) -> bool {
        let full = self.inbox.len() >= INBOX_LIMIT;
        self.paused |= full;
        full
    }

    /// The relay takes the oldest thing left for it.
    pub fn take_inbound(&mut self) -> Option<Inbound> {
        let inbound = self.inbox.pop_front();
        if self.inbox.is_empty() {
            self.inbox.shrink_to(0);
            if std::mem::take(&mut self.paused) {
                self.wake(self.tokens.subscriber);
            }
        }
        inbound
    }

    /// The endpoints that have work waiting, each once; the loop calls them next.
    pub fn take_due(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.due)
    }

    fn wake(&mut self, token: Token) {
        if !self.due.contains(&token) {
            self.due.push(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: Tokens = Tokens {
        relay: Token(1),
        commands: Token(2),
        subscriber: Token(3),
    };

    fn who(port: u16) -> Command {
        let member = SocketAddr::from(([127, 0, 0, 1], port));
        let room = "lobby".to_string();
        Command::new(Expect::Who { member, room }, &[b"PING"])
    }

    #[test]
    fn node_ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (node_id(), node_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn keys_and_channels_carry_the_prefix() {
        let config = Config {
            chat_bus_prefix: "p:".into(),
            chat_idle: Duration::from_secs(60),
            ..Config::default()
        };
        let redis = ChatBus {
            addr: "127.0.0.1:6379".parse().unwrap(),
            db: 0,
        };
        let settings = Settings::from_config(&config, redis, "n1".into());
        assert_eq!(settings.room_channel("dev"), "p:room:dev");
        assert_eq!(settings.node_channel("n1"), "p:node:n1");
        assert_eq!(settings.nick_key("alice"), "p:nick:alice");
        assert_eq!(settings.who_key("dev"), "p:who:dev");
        assert_eq!(settings.rooms_key(), "p:rooms");
        assert_eq!(
            settings.ttl,
            Duration::from_secs(65),
            "idle plus one refresh"
        );
    }

    #[test]
    fn sending_wakes_the_command_link_once() {
        let mut exchange = Exchange::new(TOKENS, 8);
        let stats = Stats::default();
        exchange.send(who(1), &stats);
        exchange.send(who(2), &stats);
        assert_eq!(exchange.take_due(), vec![TOKENS.commands]);
        assert_eq!(exchange.next_command(), Some(who(1)));
        assert_eq!(exchange.take_due(), vec![]);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_tells_the_relay_who_waited() {
        let mut exchange = Exchange::new(TOKENS, 2);
        let stats = Stats::default();
        let publish = Command::new(Expect::Published, &[b"PUBLISH", b"c", b"m"]);
        exchange.send(publish, &stats);
        exchange.send(who(1), &stats);
        exchange.send(who(2), &stats);
        exchange.send(who(3), &stats);
        assert_eq!(stats.get(Metric::ChatBusDroppedQueue), 2);
        assert_eq!(exchange.take_due(), vec![TOKENS.commands, TOKENS.relay]);
        // The publish went silently (counted); the member behind `who(1)` hears of it.
        assert_eq!(
            exchange.take_inbound(),
            Some(Inbound::Unanswered(who(1).expect))
        );
        assert_eq!(exchange.next_command(), Some(who(2)));
        assert_eq!(exchange.next_command(), Some(who(3)));
    }

    #[test]
    fn subscription_changes_keep_the_latest_wish_per_channel() {
        let mut exchange = Exchange::new(TOKENS, 8);
        exchange.subscribe("a".into(), true);
        exchange.subscribe("b".into(), true);
        exchange.subscribe("a".into(), false);
        assert_eq!(exchange.take_due(), vec![TOKENS.subscriber]);
        let changes: Vec<_> = exchange.take_subscriptions().into_iter().collect();
        assert_eq!(changes, [("a".into(), false), ("b".into(), true)]);
    }

    #[test]
    fn an_emptied_inbox_wakes_the_subscriber_only_if_it_paused() {
        let mut exchange = Exchange::new(TOKENS, 8);
        exchange.deliver(Inbound::Up);
        assert_eq!(exchange.take_due(), vec![TOKENS.relay]);
        assert!(!exchange.inbox_full());
        assert_eq!(exchange.take_inbound(), Some(Inbound::Up));
        assert_eq!(exchange.take_due(), vec![], "it never stopped reading");
        for _ in 0..INBOX_LIMIT {
            exchange.deliver(Inbound::Down);
        }
        assert!(exchange.inbox_full(), "the subscriber is told to stop");
        while exchange.take_inbound().is_some() {}
        assert_eq!(exchange.take_due(), vec![TOKENS.relay, TOKENS.subscriber]);
    }
}
