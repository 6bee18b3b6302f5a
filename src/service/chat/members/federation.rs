//! The chat across processes (`--chat-bus`): what a federated [`Chat`] asks of Redis, and what it
//! makes of the answers and of the other nodes' messages. Still no sockets: requests are
//! collected in [`Requests`] for the relay to hand to the bus, and answers come back as
//! [`Inbound`]s.
//!
//! What lives in Redis, under the prefix (`readyloop:` by default):
//!
//! | key or channel | what | written by |
//! |---|---|---|
//! | `room:<room>` (channel) | the room's messages and notices | every node with members there |
//! | `node:<id>` (channel) | direct messages for the node's members | the sender's node |
//! | `nick:<name>` | the node holding the nickname, expiring after `--chat-idle` and a bit | `SET NX PX`, refreshed while its member is active |
//! | `who:<room>` | sorted set of `<node> <name>`, scored by expiry (Unix ms) | each node for its members, at most every few seconds per member |
//! | `rooms` | sorted set of rooms, scored by their latest member's expiry | as `who:` |
//!
//! A member's message is delivered here at once and published; a message from another node is
//! delivered to the members here only, and a node drops its own when Redis hands them back. A
//! request that needs Redis (`/nick`, `/who`, `/rooms`, `/join`'s count, `/msg` to a name not
//! here) is answered when the reply comes, in order. While the bus is down, or when a request
//! goes unanswered, the node answers from what it knows, as a lone server would: local chat never
//! stops. When the bus comes back, every nickname held here is claimed again; one taken meanwhile
//! by another node is given up, and its holder told.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use log::debug;

use super::{Chat, bounded_list, bounded_list_of, reply};
use crate::service::chat::bus::envelope::{Body, Envelope};
use crate::service::chat::bus::resp::{self, Frame};
use crate::service::chat::bus::{Command, Expect, Inbound, Settings};
use crate::service::chat::outbox::Datagram;
use crate::stats::{Metric, Stats};
use crate::text::counted;

/// Most names a `/who` fetches from Redis; the reply shows as many as fit in one datagram and
/// counts the rest.
const WHO_FETCH: usize = 200;

/// Most rooms a `/rooms` fetches from Redis.
const ROOMS_FETCH: usize = 200;

/// Claims a nickname for this node, or refreshes this node's claim; 0 when another node holds it.
/// KEYS: the nick key. ARGV: the node, the time to live in ms.
const CLAIM: &str = "local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Gives a nickname up, if this node still holds it. KEYS: the nick key. ARGV: the node.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Notes a member in its room until it expires, and the room in the list of rooms; drops
/// entries already expired. KEYS: the who key, the rooms key. ARGV: expiry (Unix ms), the entry,
/// the room, the time to live in ms, now (Unix ms).
const PRESENT: &str = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], 'GT', ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1";

/// A room's members on every node: their count, then at most ARGV[2] of them. KEYS: the who key.
/// ARGV: now (Unix ms), the most to list.
const WHO: &str =
    "local names = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
table.insert(names, 1, redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf'))
return names";

/// The rooms with members on any node, each followed by its count. KEYS: the rooms key. ARGV:
/// now (Unix ms), the most to list, the prefix of the who keys. (The who keys are read by name,
/// which a Redis Cluster would not allow; see `docs/DESIGN.md`.)
const ROOMS: &str = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local rooms = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
local counts = {}
for _, room in ipairs(rooms) do
  local n = redis.call('ZCOUNT', ARGV[3] .. room, ARGV[1], '+inf')
  if n > 0 then
    counts[#counts + 1] = room
    counts[#counts + 1] = n
  end
end
return counts";

/// A chat's membership of the bus.
#[derive(Debug)]
pub struct Federation {
    settings: Settings,
    /// The command link's state as the chat last heard it (`Inbound::Up`, `Inbound::Down`):
    /// whether to ask Redis or answer from what this node knows.
    up: bool,
    requests: Requests,
}

/// What the chat asked of the bus since the relay last took it.
#[derive(Debug, Default)]
pub struct Requests {
    /// Commands for the command link, in order.
    pub commands: Vec<Command>,
    /// Rooms' channels to subscribe to (`true`) or leave.
    pub subscriptions: Vec<(String, bool)>,
}

impl Requests {
    /// Forgets everything asked.
    pub fn clear(&mut self) {
        self.commands.clear();
        self.subscriptions.clear();
    }
}

/// Milliseconds since the Unix epoch: the clock every node shares (within NTP's skew), for the
/// expiry scores in Redis. A clock before 1970 counts as the epoch.
fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

impl Chat {
    /// Makes this chat a node of the bus. Its rooms' channels are subscribed to as rooms open,
    /// and nothing is asked of Redis until the command link says it is up.
    pub fn federate(&mut self, settings: Settings) {
        let mut federation = Federation {
            settings,
            up: false,
            requests: Requests::default(),
        };
        for room in self.rooms.keys() {
            let channel = federation.settings.room_channel(room);
            federation.requests.subscriptions.push((channel, true));
        }
        self.bus = Some(federation);
    }

    /// What the chat asked of the bus since last time, for the relay to hand over; `None` for a
    /// chat that is not federated.
    pub fn bus_requests(&mut self) -> Option<&mut Requests> {
        self.bus.as_mut().map(|bus| &mut bus.requests)
    }

    /// Handles one thing the bus brought; appends what it causes to `out`.
    pub fn on_bus(
        &mut self,
        inbound: Inbound,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        match inbound {
            Inbound::Up => self.bus_is_up(now),
            Inbound::Down => {
                if let Some(bus) = &mut self.bus {
                    bus.up = false;
                }
            }
            Inbound::Reply {
                expect,
                reply: Frame::Error(refusal),
            } => {
                debug!("chat bus: redis refused a command: {refusal}");
                self.unanswered(expect, now, stats, out);
            }
            Inbound::Reply { expect, reply } => self.on_reply(expect, reply, now, stats, out),
            Inbound::Unanswered(expect) => self.unanswered(expect, now, stats, out),
            Inbound::Message { channel, payload } => {
                self.on_message(&channel, &payload, stats, out)
            }
        }
    }

    /// The command link is up: claim every nickname held here again and note every member, as
    /// Redis may have lost them (restarted empty) or expired them while the bus was down.
    fn bus_is_up(&mut self, now: Instant) {
        let Some(bus) = &mut self.bus else {
            return;
        };
        bus.up = true;
        let addrs: Vec<SocketAddr> = self.members.keys().copied().collect();
        for addr in addrs {
            self.refresh(addr, now);
        }
    }

    /// A member showed a sign of life: refreshes its claim and presence in Redis if the last
    /// refresh is older than the refresh interval, so a chatty member costs a command every few
    /// seconds, not one per message.
    pub(super) fn refresh_if_due(&mut self, addr: SocketAddr, now: Instant) {
        let Some(bus) = &self.bus else {
            return;
        };
        let every = bus.settings.refresh;
        if self
            .members
            .get(&addr)
            .is_some_and(|m| now >= m.refreshed + every)
        {
            self.refresh(addr, now);
        }
    }

    /// Claims a member's nickname again (if it has one) and notes it in its room.
    fn refresh(&mut self, addr: SocketAddr, now: Instant) {
        let nick = self.members.get(&addr).and_then(|m| m.nick.clone());
        if let Some(nick) = nick {
            self.ask(|bus| {
                let key = bus.settings.nick_key(&nick);
                let ttl = bus.settings.ttl.as_millis().to_string();
                let expect = Expect::Renew { member: addr, nick };
                let node = bus.settings.node.as_bytes();
                let args: [&[u8]; 6] = [
                    b"EVAL",
                    CLAIM.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    node,
                    ttl.as_bytes(),
                ];
                Command::new(expect, &args)
            });
        }
        self.present(addr, now);
    }

    /// Notes a member in its room's who set, under its current name.
    pub(super) fn present(&mut self, addr: SocketAddr, now: Instant) {
        let Some(member) = self.members.get_mut(&addr).filter(|_| self.bus.is_some()) else {
            return;
        };
        member.refreshed = now;
        let (name, room) = (member.name(addr), member.room.clone());
        self.ask(|bus| {
            let now_ms = unix_ms();
            let expiry = (now_ms + bus.settings.ttl.as_millis() as u64).to_string();
            let entry = format!("{} {name}", bus.settings.node);
            let (who, rooms) = (bus.settings.who_key(&room), bus.settings.rooms_key());
            let ttl = bus.settings.ttl.as_millis().to_string();
            let now_ms = now_ms.to_string();
            Command::new(
                Expect::Nothing,
                &[
                    b"EVAL",
                    PRESENT.as_bytes(),
                    b"2",
                    who.as_bytes(),
                    rooms.as_bytes(),
                    expiry.as_bytes(),
                    entry.as_bytes(),
                    room.as_bytes(),
                    ttl.as_bytes(),
                    now_ms.as_bytes(),
                ],
            )
        });
    }

    /// Takes a member's name out of a room's who set.
    pub(super) fn absent(&mut self, name: &str, room: &str) {
        self.ask(|bus| {
            let entry = format!("{} {name}", bus.settings.node);
            let who = bus.settings.who_key(room);
            Command::new(
                Expect::Nothing,
                &[b"ZREM", who.as_bytes(), entry.as_bytes()],
            )
        });
    }

    /// Gives up this node's claim on a nickname.
    pub(super) fn release(&mut self, nick: &str) {
        self.ask(|bus| {
            let key = bus.settings.nick_key(nick);
            let node = bus.settings.node.as_bytes();
            let args: [&[u8]; 5] = [b"EVAL", RELEASE.as_bytes(), b"1", key.as_bytes(), node];
            Command::new(Expect::Nothing, &args)
        });
    }

    /// A room opened here: subscribe to its channel. Asked even while the bus is down: the
    /// subscriber link remembers its channels and subscribes when it is back.
    pub(super) fn room_opened(&mut self, room: &str) {
        if let Some(bus) = &mut self.bus {
            let channel = bus.settings.room_channel(room);
            bus.requests.subscriptions.push((channel, true));
        }
    }

    /// A room closed here: leave its channel.
    pub(super) fn room_closed(&mut self, room: &str) {
        if let Some(bus) = &mut self.bus {
            let channel = bus.settings.room_channel(room);
            bus.requests.subscriptions.push((channel, false));
        }
    }

    /// Publishes what a member said in `room` for the other nodes.
    pub(super) fn publish_say(&mut self, room: &str, from: &str, text: &str, stats: &Stats) {
        self.publish(room, stats, || Body::Say {
            from: from.into(),
            text: text.into(),
        });
    }

    /// Publishes a notice (`* bob joined dev`) for the other nodes' members of `room`.
    pub(super) fn publish_notice(&mut self, room: &str, line: &str, stats: &Stats) {
        self.publish(room, stats, || Body::Notice { text: line.into() });
    }

    /// Publishes what `body` makes: built only for a chat on the bus, so a lone server pays
    /// nothing for it on its hot path.
    fn publish(&mut self, room: &str, stats: &Stats, body: impl FnOnce() -> Body) {
        let Some(bus) = &mut self.bus else {
            return;
        };
        if !bus.up {
            // Pub/sub delivers at most once anyway: what cannot go now is dropped, and counted.
            stats.add(Metric::ChatBusDroppedDown, 1);
            return;
        }
        let channel = bus.settings.room_channel(room);
        let envelope = Envelope {
            node: bus.settings.node.clone(),
            body: body(),
        };
        let args: [&[u8]; 3] = [b"PUBLISH", channel.as_bytes(), &envelope.to_bytes()];
        bus.requests
            .commands
            .push(Command::new(Expect::Published, &args));
    }

    /// `/nick`: asks Redis for the name; `false` when the bus is not up and the chat must
    /// decide alone.
    pub(super) fn ask_claim(&mut self, member: SocketAddr, nick: &str) -> bool {
        self.ask(|bus| {
            let key = bus.settings.nick_key(nick);
            let ttl = bus.settings.ttl.as_millis().to_string();
            let expect = Expect::Claim {
                member,
                nick: nick.into(),
            };
            let node = bus.settings.node.as_bytes();
            let args: [&[u8]; 6] = [b"SET", key.as_bytes(), node, b"NX", b"PX", ttl.as_bytes()];
            Command::new(expect, &args)
        })
    }

    /// `/join`'s count of the room's members on every node.
    pub(super) fn ask_joined(&mut self, member: SocketAddr, room: &str) -> bool {
        self.ask(|bus| {
            let who = bus.settings.who_key(room);
            let now = unix_ms().to_string();
            let expect = Expect::Joined {
                member,
                room: room.into(),
            };
            Command::new(
                expect,
                &[b"ZCOUNT", who.as_bytes(), now.as_bytes(), b"+inf"],
            )
        })
    }

    /// `/who` of the room on every node.
    pub(super) fn ask_who(&mut self, member: SocketAddr, room: &str) -> bool {
        self.ask(|bus| {
            let who = bus.settings.who_key(room);
            let (now, most) = (unix_ms().to_string(), WHO_FETCH.to_string());
            let expect = Expect::Who {
                member,
                room: room.into(),
            };
            let args: [&[u8]; 6] = [
                b"EVAL",
                WHO.as_bytes(),
                b"1",
                who.as_bytes(),
                now.as_bytes(),
                most.as_bytes(),
            ];
            Command::new(expect, &args)
        })
    }

    /// `/rooms` on every node.
    pub(super) fn ask_rooms(&mut self, member: SocketAddr) -> bool {
        self.ask(|bus| {
            let rooms = bus.settings.rooms_key();
            let who_prefix = bus.settings.who_key("");
            let (now, most) = (unix_ms().to_string(), ROOMS_FETCH.to_string());
            let args: [&[u8]; 7] = [
                b"EVAL",
                ROOMS.as_bytes(),
                b"1",
                rooms.as_bytes(),
                now.as_bytes(),
                most.as_bytes(),
                who_prefix.as_bytes(),
            ];
            Command::new(Expect::Rooms { member }, &args)
        })
    }

    /// `/msg` to a nickname no member here has: asks which node holds it.
    pub(super) fn ask_lookup(
        &mut self,
        member: SocketAddr,
        name: &str,
        to: &str,
        text: &str,
    ) -> bool {
        self.ask(|bus| {
            let key = bus.settings.nick_key(to);
            let expect = Expect::Lookup {
                member,
                name: name.into(),
                to: to.into(),
                text: text.into(),
            };
            Command::new(expect, &[b"GET", key.as_bytes()])
        })
    }

    /// Adds the command `build` makes, if the bus is up; says whether it did.
    fn ask(&mut self, build: impl FnOnce(&Federation) -> Command) -> bool {
        match &mut self.bus {
            Some(bus) if bus.up => {
                let command = build(bus);
                bus.requests.commands.push(command);
                true
            }
            Some(_) | None => false,
        }
    }

    /// Redis answered.
    fn on_reply(
        &mut self,
        expect: Expect,
        frame: Frame,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        match (expect, &frame) {
            (Expect::Claim { member, nick }, Frame::Null) => {
                if self.members.contains_key(&member) {
                    reply(out, member, &format!("* nick {nick} is taken"));
                }
            }
            (Expect::Claim { member, nick }, Frame::SimpleString(_)) => {
                self.granted(member, &nick, now, stats, out);
            }
            (Expect::Renew { member, nick }, Frame::Integer(0)) => {
                self.lose_nick(member, &nick, now, stats, out);
            }
            (Expect::Renew { .. }, _) => {}
            (Expect::Joined { member, room }, Frame::Integer(n)) => {
                let others = usize::try_from(*n).unwrap_or(0).saturating_sub(1);
                self.tell_joined(member, &room, others, out);
            }
            (Expect::Who { member, room }, Frame::Array(parts)) => {
                let total = parts.first().and_then(integer).unwrap_or(0);
                let mut names: Vec<String> = parts
                    .iter()
                    .skip(1)
                    .filter_map(resp::text)
                    .map(|entry| {
                        entry
                            .split_once(' ')
                            .map_or(entry, |(_, name)| name)
                            .to_string()
                    })
                    .collect();
                names.sort();
                let line = bounded_list_of(&format!("* in {room}: "), names, total);
                self.answer(member, &line, out);
            }
            (Expect::Rooms { member }, Frame::Array(parts)) => {
                let mut rooms: Vec<String> = parts
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [room, count] => {
                            Some(format!("{} ({})", resp::text(room)?, integer(count)?))
                        }
                        _ => None,
                    })
                    .collect();
                rooms.sort();
                self.answer(member, &bounded_list("* rooms: ", rooms), out);
            }
            (Expect::Lookup { member, to, .. }, Frame::Null) => {
                self.answer(member, &format!("* no such nick: {to}"), out);
            }
            (
                Expect::Lookup {
                    member,
                    name,
                    to,
                    text,
                },
                holder,
            ) => self.direct(member, name, to, text, resp::text(holder), out),
            (Expect::Direct { member, to }, Frame::Integer(0)) => {
                self.answer(member, &format!("* no such nick: {to}"), out);
            }
            (Expect::Direct { member, to }, Frame::Integer(_)) => {
                self.answer(member, &format!("* sent to {to}"), out);
            }
            (expect, _) => {
                debug!("chat bus: unexpected reply {frame:?} to {expect:?}");
                self.unanswered(expect, now, stats, out);
            }
        }
    }

    /// A command went unanswered, or was refused: the member is answered from what this node
    /// knows, as if it were alone.
    fn unanswered(&mut self, expect: Expect, now: Instant, stats: &Stats, out: &mut Vec<Datagram>) {
        match expect {
            // The claim may or may not have reached Redis; the next refresh settles it.
            Expect::Claim { member, nick } => self.granted(member, &nick, now, stats, out),
            Expect::Nothing | Expect::Published | Expect::Renew { .. } => {}
            Expect::Joined { member, room } => {
                let others = self
                    .rooms
                    .get(&room)
                    .map_or(0, |r| r.len().saturating_sub(1));
                self.tell_joined(member, &room, others, out);
            }
            Expect::Who { member, room } => {
                let line = self.local_who(&room);
                self.answer(member, &line, out);
            }
            Expect::Rooms { member } => {
                let line = self.local_rooms();
                self.answer(member, &line, out);
            }
            Expect::Lookup { member, to, .. } | Expect::Direct { member, to } => {
                let line = format!("* not sent to {to}: the chat bus is down");
                self.answer(member, &line, out);
            }
        }
    }

    /// Redis gave (or may have given) this node the name: the member takes it, unless it left
    /// meanwhile or another member here took the name first.
    fn granted(
        &mut self,
        member: SocketAddr,
        nick: &str,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        if !self.members.contains_key(&member) {
            self.release(nick);
            return;
        }
        match self.nicks.get(nick) {
            Some(owner) if *owner != member => {
                reply(out, member, &format!("* nick {nick} is taken"));
            }
            Some(_) | None => self.rename(member, nick, now, stats, out),
        }
    }

    /// Another node holds the nickname a member here had: it falls back to its address.
    fn lose_nick(
        &mut self,
        member: SocketAddr,
        nick: &str,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        let Some(held) = self.members.get_mut(&member) else {
            return;
        };
        if held.nick.as_deref() != Some(nick) {
            return;
        }
        held.nick = None;
        let room = held.room.clone();
        self.nicks.remove(nick);
        self.absent(nick, &room);
        self.present(member, now);
        let line = format!("* your nick {nick} is held on another server now; you are {member}");
        reply(out, member, &line);
        self.announce(
            &room,
            Some(member),
            &format!("* {nick} is now {member}"),
            stats,
            out,
        );
    }

    /// Looked up `to`'s node: publish the message on its channel.
    fn direct(
        &mut self,
        member: SocketAddr,
        name: String,
        to: String,
        text: String,
        holder: Option<&str>,
        out: &mut Vec<Datagram>,
    ) {
        let Some(bus) = &mut self.bus else {
            return;
        };
        let Some(node) = holder.filter(|node| *node != bus.settings.node) else {
            // Held by no one, or by this node for a member that has since left.
            self.answer(member, &format!("* no such nick: {to}"), out);
            return;
        };
        let channel = bus.settings.node_channel(node);
        let envelope = Envelope {
            node: bus.settings.node.clone(),
            body: Body::Direct {
                from: name,
                to: to.clone(),
                text,
            },
        };
        let args: [&[u8]; 3] = [b"PUBLISH", channel.as_bytes(), &envelope.to_bytes()];
        let expect = Expect::Direct { member, to };
        bus.requests.commands.push(Command::new(expect, &args));
    }

    /// A message from the bus: delivered to the members here, never back to its origin.
    fn on_message(
        &mut self,
        channel: &[u8],
        payload: &[u8],
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        let Some(bus) = &self.bus else {
            return;
        };
        let Some(envelope) = Envelope::parse(payload) else {
            stats.add(Metric::ChatBusDroppedInvalid, 1);
            debug!(
                "chat bus: not a message: {}",
                String::from_utf8_lossy(payload)
            );
            return;
        };
        if envelope.node == bus.settings.node {
            // Our own, handed back by Redis: its members here had it already.
            return;
        }
        let channel = String::from_utf8_lossy(channel);
        let room_prefix = bus.settings.room_channel("");
        let room = channel.strip_prefix(&room_prefix);
        let ours = channel == bus.settings.node_channel(&bus.settings.node);
        match (envelope.body, room) {
            (Body::Say { from, text }, Some(room)) => {
                let sent = self.tell_room(room, None, &format!("{from}: {text}"), out);
                stats.add(Metric::ChatRelayed, sent as u64);
            }
            (Body::Notice { text }, Some(room)) => {
                self.tell_room(room, None, &text, out);
            }
            (Body::Direct { from, to, text }, None) if ours => {
                // The recipient may have left since its node was looked up: at most once.
                if let Some(&addr) = self.nicks.get(&to) {
                    reply(out, addr, &format!("[dm] {from}: {text}"));
                    stats.add(Metric::ChatRelayed, 1);
                }
            }
            (body, _) => {
                stats.add(Metric::ChatBusDroppedInvalid, 1);
                debug!("chat bus: {body:?} does not belong on {channel}");
                return;
            }
        }
        stats.add(Metric::ChatBusReceived, 1);
    }

    /// `* you joined ROOM (N others here)`.
    pub(super) fn tell_joined(
        &self,
        member: SocketAddr,
        room: &str,
        others: usize,
        out: &mut Vec<Datagram>,
    ) {
        let others = counted(others, "other", "others");
        self.answer(member, &format!("* you joined {room} ({others} here)"), out);
    }

    /// Replies to a member, if it is still one.
    fn answer(&self, member: SocketAddr, line: &str, out: &mut Vec<Datagram>) {
        if self.members.contains_key(&member) {
            reply(out, member, line);
        }
    }
}

/// An integer reply's value.
fn integer(frame: &Frame) -> Option<usize> {
    match frame {
        Frame::Integer(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
