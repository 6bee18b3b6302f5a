//! Who is in the chat and what their datagrams mean: members, nicknames, rooms, commands, expiry,
//! rate limits and verification. No sockets here.
//!
//! [`Chat::on_datagram`] takes one datagram and appends the datagrams it causes (replies, relayed
//! lines, notices) to an output list; the relay in `chat.rs` does the sending. Keeping the two
//! apart lets every rule below be tested without a network.
//!
//! Every line the server writes ends with `\n`; its own lines start with `* `, and a member's text
//! is relayed as `<nick>: <text>`.
//!
//! With `--access-log`, every join (of the chat or of a room), nick change, leave and expiry is
//! written to the access log where it happens, as a [`ChatLine`]; what members say never is.
//!
//! With `--chat-bus`, the chat is one node of several: every room notice and every message is
//! also published for the other nodes, and some commands are answered through Redis. That part
//! is in [`federation`], hooked in where each rule changes who is where.

pub mod federation;

use federation::Federation;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bucket::TokenBucket;
use super::command::{self, Command, HELP};
use super::cookie::Cookies;
use super::outbox::Datagram;
use crate::access::{self, ChatEvent, ChatLine};
use crate::config::Config;
use crate::stats::{Metric, Stats};
use crate::text::counted;

/// The room every new member starts in.
pub const LOBBY: &str = "lobby";

/// Longest reply the server composes for `/who` and `/rooms`: safely under one Ethernet MTU, so
/// no reply is ever fragmented; longer lists end in "and N more".
const MAX_LIST_REPLY: usize = 1200;

/// A reply to an address that has not proven it receives what is sent to it may be at most this
/// many times the size of the datagram that caused it: a forger gains nothing by spoofing.
const AMPLIFICATION: usize = 3;

/// The limits the chat enforces, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest datagram accepted, in bytes.
    pub max_msg: usize,
    /// Most members at once.
    pub max_members: usize,
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Messages per second per member; 0 turns rate limiting off.
    pub rate: u32,
    /// Messages a member may send at once before the rate applies.
    pub burst: u32,
    /// Silence after which a member expires.
    pub idle: Duration,
    /// New addresses must send back a cookie before they join.
    pub verify: bool,
    /// Not a limit: whether joins, nick changes, leaves and expiries go to the access log.
    pub access_log: bool,
}

impl Limits {
    /// The chat limits of a configuration.
    pub fn from_config(config: &Config) -> Self {
        Limits {
            max_msg: config.chat_max_msg,
            max_members: config.chat_max_members,
            max_rooms: config.chat_max_rooms,
            rate: config.chat_rate,
            burst: config.chat_burst,
            idle: config.chat_idle,
            verify: config.chat_verify,
            access_log: access::enabled(config.access_log),
        }
    }
}

/// One member.
#[derive(Debug)]
struct Member {
    /// The chosen nickname; `None` means the default, the address itself.
    nick: Option<String>,
    room: String,
    /// Whether the member's own messages come back to it.
    echo: bool,
    /// When the member last sent anything.
    last_seen: Instant,
    /// The expiry entry armed for this member in [`Chat::expiries`]; may be earlier than
    /// `last_seen + idle` (activity since), never later.
    armed: Instant,
    bucket: TokenBucket,
    /// When the member was last told to slow down: at most once a second.
    slowed: Option<Instant>,
    /// When its nickname claim and presence were last refreshed in Redis (`--chat-bus`).
    refreshed: Instant,
}

impl Member {
    fn name(&self, addr: SocketAddr) -> String {
        self.nick.clone().unwrap_or_else(|| addr.to_string())
    }

    /// The access line of `event`, with the member as it is after it.
    fn line<'a>(&'a self, addr: SocketAddr, event: ChatEvent<'a>) -> ChatLine<'a> {
        ChatLine {
            peer: addr,
            event,
            nick: self.nick.as_deref(),
            room: &self.room,
        }
    }
}

/// The whole chat: members, nicknames and rooms.
#[derive(Debug)]
pub struct Chat {
    limits: Limits,
    members: HashMap<SocketAddr, Member>,
    /// Chosen nicknames; default ones (`ip:port`) are not listed, and cannot clash, having a `:`.
    nicks: HashMap<String, SocketAddr>,
    rooms: HashMap<String, HashSet<SocketAddr>>,
    /// Armed expiries, nearest first: one entry per member.
    expiries: BTreeSet<(Instant, SocketAddr)>,
    cookies: Cookies,
    /// The chat's membership of the bus (`--chat-bus`); `None`: this process is the whole chat.
    bus: Option<Federation>,
}

impl Chat {
    /// An empty chat.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Chat {
            limits,
            members: HashMap::new(),
            nicks: HashMap::new(),
            rooms: HashMap::new(),
            expiries: BTreeSet::new(),
            cookies: Cookies::new(now),
            bus: None,
        }
    }

    /// Members now.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Rooms now.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// When the next member may expire.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Handles one datagram from `from`; appends what it causes to `out`.
    pub fn on_datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        if !self.members.contains_key(&from) && !self.admit(from, data, now, stats, out) {
            return;
        }
        // Any datagram is a sign of life for the other nodes too (see below).
        self.refresh_if_due(from, now);
        let limits = &self.limits;
        let Some(member) = self.members.get_mut(&from) else {
            return;
        };
        // Any datagram is activity, even one refused below (empty, too long, over the rate): it
        // shows the address is still there, which is all that expiry asks.
        member.last_seen = now;
        if limits.rate > 0 && !member.bucket.take(limits.rate, limits.burst, now) {
            stats.add(Metric::ChatDroppedRate, 1);
            if member
                .slowed
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
            {
                member.slowed = Some(now);
                let rate = counted(limits.rate as usize, "message", "messages");
                let line = format!("* slow down: at most {rate} a second");
                reply(out, from, &line);
            }
            return;
        }
        if data.len() > limits.max_msg {
            stats.add(Metric::ChatRefused, 1);
            let line = format!(
                "* message too long: {}, the limit is {}",
                counted(data.len(), "byte", "bytes"),
                limits.max_msg
            );
            return reply(out, from, &line);
        }
        let Ok(text) = std::str::from_utf8(data) else {
            stats.add(Metric::ChatRefused, 1);
            return reply(out, from, "* not relayed: messages must be UTF-8 text");
        };
        // Nothing to say is not relayed, but answered: the tutorial's "send, then wait for a
        // reply" program would otherwise wait forever after an empty line (IRC likewise answers
        // an empty PRIVMSG with ERR_NOTEXTTOSEND). It still counted as activity above.
        if text.trim().is_empty() {
            stats.add(Metric::ChatRefused, 1);
            return reply(out, from, "* not relayed: the message is empty");
        }
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        // One datagram is one line: a line break inside would let a member forge a server line
        // (`* bob left`), and other control characters could drive the readers' terminals.
        if text.chars().any(|c| c.is_control() && c != '\t') {
            stats.add(Metric::ChatRefused, 1);
            return reply(
                out,
                from,
                "* not relayed: line breaks and control characters are not allowed",
            );
        }
        if text.starts_with('/') {
            self.command(from, command::parse(text), now, stats, out);
        } else {
            self.say(from, text, stats, out);
        }
    }

    /// Removes members silent for longer than the idle limit; tells their rooms.
    pub fn expire(&mut self, now: Instant, stats: &Stats, out: &mut Vec<Datagram>) {
        while let Some(&(at, addr)) = self.expiries.first() {
            if at > now {
                return;
            }
            self.expiries.pop_first();
            let Some(member) = self.members.get_mut(&addr) else {
                continue;
            };
            let due = member.last_seen + self.limits.idle;
            if due > now {
                // Active since this entry was armed: arm the real expiry instead.
                member.armed = due;
                self.expiries.insert((due, addr));
                continue;
            }
            let idle = self.limits.idle;
            if let Some(member) = self.remove(addr, stats) {
                log(self.limits.access_log, member.line(addr, ChatEvent::Expire));
                let (name, room) = (member.name(addr), member.room);
                let line = format!("* {name} left {room} (silent for {idle:?})");
                self.announce(&room, None, &line, stats, out);
            }
        }
    }

    /// A datagram from an address that is not a member: make it one, or answer why not. Returns
    /// whether the datagram should then be handled as the new member's.
    fn admit(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) -> bool {
        let verified = match std::str::from_utf8(data).map(command::parse) {
            Ok(Command::Verify(cookie)) => self.cookies.check(from, cookie, now),
            _ => false,
        };
        if self.limits.verify && !verified {
            let challenge = format!("* verify with: /verify {}\n", self.cookies.issue(from, now));
            // Only answer what is big enough: the reply may not amplify a forged datagram.
            if challenge.len() <= data.len() * AMPLIFICATION {
                stats.add(Metric::ChatChallenges, 1);
                push(out, from, challenge.into_bytes().into());
            } else {
                stats.add(Metric::ChatRefused, 1);
            }
            return false;
        }
        if self.members.len() >= self.limits.max_members {
            stats.add(Metric::ChatRefused, 1);
            reply(out, from, "* server full");
            return false;
        }
        let expires = now + self.limits.idle;
        self.members.insert(
            from,
            Member {
                nick: None,
                room: LOBBY.to_string(),
                echo: true,
                last_seen: now,
                armed: expires,
                bucket: TokenBucket::full(self.limits.burst, now),
                slowed: None,
                refreshed: now,
            },
        );
        self.expiries.insert((expires, from));
        self.enter(from, LOBBY, stats);
        stats.add(Metric::ChatMembers, 1);
        log(
            self.limits.access_log,
            ChatLine {
                peer: from,
                event: ChatEvent::Join { from: None },
                nick: None,
                room: LOBBY,
            },
        );
        self.present(from, now);
        let line = format!("* {from} joined {LOBBY}");
        self.announce(LOBBY, Some(from), &line, stats, out);
        // The `/verify` that made it a member is not a message to handle further.
        if verified {
            reply(
                out,
                from,
                &format!("* verified: you are {from}, in {LOBBY}"),
            );
        }
        !verified
    }

    /// Relays text to the sender's room.
    fn say(&mut self, from: SocketAddr, text: &str, stats: &Stats, out: &mut Vec<Datagram>) {
        let Some(member) = self.members.get(&from) else {
            return;
        };
        let name = member.name(from);
        let line = format!("{name}: {text}");
        let skip = (!member.echo).then_some(from);
        let room = member.room.clone();
        let sent = self.tell_room(&room, skip, &line, out);
        stats.add(Metric::ChatRelayed, sent as u64);
        self.publish_say(&room, &name, text, stats);
    }

    /// Carries out one command for `from`.
    fn command(
        &mut self,
        from: SocketAddr,
        command: Command<'_>,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        let Some(member) = self.members.get_mut(&from) else {
            return;
        };
        let name = member.name(from);
        match command {
            Command::Nick(nick) => match self.nicks.get(nick).copied() {
                Some(owner) if owner != from => {
                    reply(out, from, &format!("* nick {nick} is taken"))
                }
                // Already this member's: nothing for the other nodes to say.
                Some(_) => self.rename(from, nick, now, stats, out),
                // Another node may hold it: the answer waits for Redis's.
                None if self.ask_claim(from, nick) => {}
                None => self.rename(from, nick, now, stats, out),
            },
            Command::Join(room) if room == member.room => {
                reply(out, from, &format!("* you are already in {room}"));
            }
            Command::Join(room)
                if !self.rooms.contains_key(room) && self.rooms.len() >= self.limits.max_rooms =>
            {
                reply(
                    out,
                    from,
                    &format!("* too many rooms (the limit is {})", self.limits.max_rooms),
                );
            }
            Command::Join(room) => {
                let old = std::mem::replace(&mut member.room, room.to_string());
                let moved = ChatEvent::Join { from: Some(&old) };
                log(self.limits.access_log, member.line(from, moved));
                self.quit(from, &old, stats);
                self.announce(&old, None, &format!("* {name} left {old}"), stats, out);
                self.announce(room, None, &format!("* {name} joined {room}"), stats, out);
                self.enter(from, room, stats);
                self.absent(&name, &old);
                self.present(from, now);
                if !self.ask_joined(from, room) {
                    let others = self.rooms.get(room).map_or(0, |r| r.len() - 1);
                    self.tell_joined(from, room, others, out);
                }
            }
            Command::Leave => {
                if let Some(member) = self.remove(from, stats) {
                    log(self.limits.access_log, member.line(from, ChatEvent::Leave));
                    let (name, room) = (member.name(from), member.room);
                    self.announce(&room, None, &format!("* {name} left {room}"), stats, out);
                }
                reply(out, from, "* you left the chat; send anything to come back");
            }
            Command::Who => {
                let room = member.room.clone();
                if !self.ask_who(from, &room) {
                    reply(out, from, &self.local_who(&room));
                }
            }
            Command::Rooms => {
                if !self.ask_rooms(from) {
                    reply(out, from, &self.local_rooms());
                }
            }
            Command::Msg { to, text } => {
                let target = self.nicks.get(to).copied().or_else(|| {
                    to.parse()
                        .ok()
                        .filter(|addr| self.members.contains_key(addr))
                });
                match target {
                    Some(target) => {
                        reply(out, target, &format!("[dm] {name}: {text}"));
                        stats.add(Metric::ChatRelayed, 1);
                        if target != from {
                            reply(out, from, &format!("* sent to {to}"));
                        }
                    }
                    // A nickname may be held on another node; addresses are this node's own.
                    None if command::is_name(to) && self.ask_lookup(from, &name, to, text) => {}
                    None => reply(out, from, &format!("* no such nick: {to}")),
                }
            }
            Command::Echo(on) => {
                member.echo = on;
                reply(out, from, if on { "* echo on" } else { "* echo off" });
            }
            Command::Help => reply(out, from, HELP),
            Command::Verify(_) => reply(out, from, "* you are already a member"),
            Command::Usage(usage) => reply(out, from, &format!("* usage: {usage}")),
            Command::Unknown(word) => {
                reply(out, from, &format!("* unknown command {word}; try /help"))
            }
        }
    }

    /// Gives `from` the nickname `nick` (free here, and granted by Redis if the bus is up): it
    /// is told, its room is told, and the other nodes learn the new name.
    fn rename(
        &mut self,
        from: SocketAddr,
        nick: &str,
        now: Instant,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        let Some(member) = self.members.get_mut(&from) else {
            return;
        };
        let name = member.name(from);
        let old = member.nick.replace(nick.to_string());
        let was = old.as_deref();
        log(
            self.limits.access_log,
            member.line(from, ChatEvent::Nick { was }),
        );
        let room = member.room.clone();
        if let Some(old) = &old {
            self.nicks.remove(old);
        }
        self.nicks.insert(nick.to_string(), from);
        reply(out, from, &format!("* you are now {nick}"));
        let line = format!("* {name} is now {nick}");
        self.announce(&room, Some(from), &line, stats, out);
        if name != nick {
            if let Some(old) = &old {
                self.release(old);
            }
            self.absent(&name, &room);
            self.present(from, now);
        }
    }

    /// `/who` from what this node knows: the members of `room` here.
    fn local_who(&self, room: &str) -> String {
        let mut names: Vec<String> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .map(|addr| self.members[addr].name(*addr))
            .collect();
        names.sort();
        bounded_list(&format!("* in {room}: "), names)
    }

    /// `/rooms` from what this node knows: its rooms and their sizes here.
    fn local_rooms(&self) -> String {
        let mut rooms: Vec<String> = self
            .rooms
            .iter()
            .map(|(name, members)| format!("{name} ({})", members.len()))
            .collect();
        rooms.sort();
        bounded_list("* rooms: ", rooms)
    }

    /// Adds `addr` to a room's member set, creating the room.
    fn enter(&mut self, addr: SocketAddr, room: &str, stats: &Stats) {
        let members = self.rooms.entry(room.to_string()).or_insert_with(|| {
            stats.add(Metric::ChatRooms, 1);
            HashSet::new()
        });
        members.insert(addr);
        if members.len() == 1 {
            self.room_opened(room);
        }
    }

    /// Takes `addr` out of a room's member set, removing the room once empty.
    fn quit(&mut self, addr: SocketAddr, room: &str, stats: &Stats) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&addr);
            if members.is_empty() {
                self.rooms.remove(room);
                stats.sub(Metric::ChatRooms, 1);
                self.room_closed(room);
            }
        }
    }

    /// Removes a member entirely; returns it, for the notice.
    fn remove(&mut self, addr: SocketAddr, stats: &Stats) -> Option<Member> {
        let member = self.members.remove(&addr)?;
        self.expiries.remove(&(member.armed, addr));
        if let Some(nick) = &member.nick {
            self.nicks.remove(nick);
            self.release(nick);
        }
        if self.bus.is_some() {
            self.absent(&member.name(addr), &member.room);
        }
        self.quit(addr, &member.room, stats);
        stats.sub(Metric::ChatMembers, 1);
        Some(member)
    }

    /// Tells a room something (`* bob joined dev`): its members here at once, and those on the
    /// other nodes through the bus.
    fn announce(
        &mut self,
        room: &str,
        skip: Option<SocketAddr>,
        line: &str,
        stats: &Stats,
        out: &mut Vec<Datagram>,
    ) {
        self.tell_room(room, skip, line, out);
        self.publish_notice(room, line, stats);
    }

    /// Sends `line` to every member of `room` but `skip`; returns how many datagrams that made.
    fn tell_room(
        &self,
        room: &str,
        skip: Option<SocketAddr>,
        line: &str,
        out: &mut Vec<Datagram>,
    ) -> usize {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        let payload: Arc<[u8]> = format!("{line}\n").into_bytes().into();
        let before = out.len();
        for &addr in members.iter().filter(|addr| Some(**addr) != skip) {
            push(out, addr, Arc::clone(&payload));
        }
        out.len() - before
    }
}

/// Writes a membership change to the access log when it is `on`. A [`ChatLine`] only borrows, so
/// while the log is off nothing is formatted or copied.
fn log(on: bool, line: ChatLine<'_>) {
    if on {
        access::write(&line);
    }
}

/// Queues one line for one address.
fn reply(out: &mut Vec<Datagram>, to: SocketAddr, line: &str) {
    push(out, to, format!("{line}\n").into_bytes().into());
}

fn push(out: &mut Vec<Datagram>, to: SocketAddr, payload: Arc<[u8]>) {
    out.push(Datagram { to, payload });
}

/// `prefix` and the items joined by `, `, cut to [`MAX_LIST_REPLY`] bytes with "and N more".
fn bounded_list(prefix: &str, items: Vec<String>) -> String {
    let total = items.len();
    bounded_list_of(prefix, items, total)
}

/// As [`bounded_list`], for the first items of `total`: those not given count among the more.
fn bounded_list_of(prefix: &str, items: Vec<String>, total: usize) -> String {
    let mut line = prefix.to_string();
    let total = total.max(items.len());
    let given = items.len();
    for (shown, item) in items.into_iter().enumerate() {
        if shown > 0 {
            line.push_str(", ");
        }
        if line.len() + item.len() > MAX_LIST_REPLY - 20 {
            line.push_str(&format!("and {} more", total - shown));
            return line;
        }
        line.push_str(&item);
    }
    if total > given {
        let more = format!("and {} more", total - given);
        line.push_str(if given > 0 { ", " } else { "" });
        line.push_str(&more);
    }
    line
}

#[cfg(test)]
mod tests;
