//! UDP chat relay: one socket, every member, rooms, nicknames and direct messages.
//!
//! The tutorial's chat was peer to peer: each program bound a port and sent to an address it was
//! told. readyloop is the peer everybody sends to: a datagram from a new address makes it a member
//! of the room `lobby`, and text is relayed to the room as `<nick>: <text>` (the sender included,
//! so a lone sender sees its message went through). `docs/PROTOCOL.md` lists the commands.
//!
//! This file is the socket side: receive until `WouldBlock`, hand each datagram to [`Chat`] (in
//! [`members`]), send what it produces, and queue what the socket will not take yet in the bounded
//! [`Outbox`], with writable interest only while something waits there. The relay runs on any
//! datagram [`Socket`], so `chat/tests.rs` drives it with a scripted fake.
//!
//! With `--chat-bus` the relay is one node of a chat shared by several processes: [`bus`] carries
//! what the chat asks of Redis to the two Redis links and brings back their replies and the other
//! nodes' messages, which the relay hands to [`Chat`] as it does datagrams.

pub mod bucket;
pub mod bus;
pub mod command;
pub mod cookie;
pub mod members;
pub mod outbox;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::Interest;
use mio::net::UdpSocket;

use self::bus::Exchange;
use self::members::{Chat, Limits};
use self::outbox::{Datagram, Outbox};
use super::{Context, Handler, KEEP, Next};
use crate::config::Config;
use crate::stats::{Metric, ServiceId, ServiceMetric};
use crate::sys::counted::{self, Call};
use crate::sys::{interrupted, would_block};
use crate::token::Id;

/// Budget charged per datagram at the least, so a flood of tiny datagrams still yields the loop
/// after a few hundred of them.
const DATAGRAM_COST: usize = 1024;

/// A datagram socket the relay can run on: a UDP socket in the server, a scripted fake in the
/// relay's tests. The relay is generic over it rather than holding a `dyn Socket`, so the server's
/// relay compiles to direct calls on mio's `UdpSocket`.
pub trait Socket {
    /// Receives one datagram into `buf`: its length and its sender.
    ///
    /// # Errors
    /// As `recvfrom(2)`: `WouldBlock` when nothing waits; on Linux also an error (such as
    /// `ECONNREFUSED`) reported by ICMP for an earlier send.
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

    /// Sends `buf` as one datagram to `to`.
    ///
    /// # Errors
    /// As `sendto(2)`: `WouldBlock` when the send buffer is full, and the kernel's reasons
    /// otherwise.
    fn send_to(&mut self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
}

impl Socket for UdpSocket {
    // The inherent methods: mio's own, which take `&self`.
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        counted::count(Call::Recvfrom);
        UdpSocket::recv_from(self, buf)
    }

    fn send_to(&mut self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        counted::count(Call::Sendto);
        UdpSocket::send_to(self, buf, to)
    }
}

/// The chat relay endpoint.
#[derive(Debug)]
pub struct Relay<S = UdpSocket> {
    socket: S,
    chat: Chat,
    outbox: Outbox,
    /// What the datagram being handled produced; kept to reuse its allocation.
    produced: Vec<Datagram>,
}

impl Relay<UdpSocket> {
    /// The socket, for registration.
    pub fn source(&mut self) -> &mut UdpSocket {
        &mut self.socket
    }
}

impl<S: Socket> Relay<S> {
    /// A relay on a bound socket.
    pub fn new(socket: S, config: &Config, now: Instant) -> Self {
        Relay {
            socket,
            chat: Chat::new(Limits::from_config(config), now),
            outbox: Outbox::new(config.chat_queue),
            produced: Vec::new(),
        }
    }

    /// Makes this relay a node of the chat bus: rooms, nicknames, `/who` and `/msg` reach the
    /// other nodes through Redis.
    pub fn join_bus(&mut self, settings: bus::Settings) {
        self.chat.federate(settings);
    }

    /// Handles what the Redis links left: replies, the other nodes' messages, the bus going up
    /// or down. Each costs budget like a datagram; what is left waits for the next turn.
    pub fn on_mail(&mut self, ctx: &mut Context<'_>) {
        while ctx.budget > 0 {
            let Some(inbound) = ctx.bus.as_deref_mut().and_then(Exchange::take_inbound) else {
                break;
            };
            ctx.budget = ctx.budget.saturating_sub(DATAGRAM_COST);
            (self.chat).on_bus(inbound, ctx.now, ctx.stats, &mut self.produced);
            self.send_produced(ctx);
        }
        self.forward(ctx);
    }

    /// Datagrams waiting in the outbox.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Always readable; writable only while datagrams wait in the outbox.
    pub fn interest(&self) -> Interest {
        if self.outbox.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// When the next member may expire.
    pub fn deadline(&self) -> Option<Instant> {
        self.chat.next_expiry()
    }

    /// Expires silent members.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_>) -> Next {
        self.chat.expire(ctx.now, ctx.stats, &mut self.produced);
        self.send_produced(ctx);
        self.forward(ctx);
        KEEP
    }

    /// Hands what the chat asked of the bus (commands, subscriptions) to the links.
    fn forward(&mut self, ctx: &mut Context<'_>) {
        let Some(requests) = self.chat.bus_requests() else {
            return;
        };
        let Some(bus) = ctx.bus.as_deref_mut() else {
            // No exchange to carry them (a relay tested alone): nothing may pile up.
            requests.clear();
            return;
        };
        for command in requests.commands.drain(..) {
            bus.send(command, ctx.stats);
        }
        for (channel, on) in requests.subscriptions.drain(..) {
            bus.subscribe(channel, on);
        }
    }

    /// Sends (or queues) everything the last datagram or expiry produced.
    fn send_produced(&mut self, ctx: &mut Context<'_>) {
        let mut produced = mem::take(&mut self.produced);
        for datagram in produced.drain(..) {
            if self.outbox.is_empty() {
                if let Some(unsent) = self.send(datagram, ctx) {
                    self.queue(unsent, ctx);
                }
            } else {
                // Others wait ahead of it: keep the order.
                self.queue(datagram, ctx);
            }
        }
        self.produced = produced;
    }

    /// Sends one datagram; gives it back if the socket would block.
    fn send(&mut self, datagram: Datagram, ctx: &Context<'_>) -> Option<Datagram> {
        loop {
            match self.socket.send_to(&datagram.payload, datagram.to) {
                Ok(sent) => {
                    ctx.stats.add(Metric::ChatOut, 1);
                    ctx.stats
                        .service_add(ServiceId::Chat, ServiceMetric::BytesOut, sent as u64);
                    return None;
                }
                Err(e) if would_block(&e) => return Some(datagram),
                Err(e) if interrupted(&e) => {}
                Err(e) => {
                    // One unreachable peer must not hold the queue up: drop, count, carry on.
                    debug!(
                        "{} chat: send to {} failed: {e}",
                        Id(ctx.token),
                        datagram.to
                    );
                    ctx.stats.add(Metric::ChatDroppedSend, 1);
                    return None;
                }
            }
        }
    }

    fn queue(&mut self, datagram: Datagram, ctx: &Context<'_>) {
        if self.outbox.push(datagram).is_some() {
            ctx.stats.add(Metric::ChatDroppedQueue, 1);
        }
    }
}

impl<S: Socket> Handler for Relay<S> {
    /// Receives datagrams until `WouldBlock` (or the budget is spent) and handles each; then
    /// hands what they asked of the bus to the links, all at once.
    fn on_readable(&mut self, ctx: &mut Context<'_>) -> Next {
        self.receive(ctx);
        self.forward(ctx);
        KEEP
    }

    /// Sends queued datagrams until the socket would block again.
    fn on_writable(&mut self, ctx: &mut Context<'_>) -> Next {
        while let Some(datagram) = self.outbox.front() {
            let datagram = datagram.clone();
            if self.send(datagram, ctx).is_some() {
                return KEEP;
            }
            self.outbox.pop_front();
        }
        KEEP
    }
}

impl<S: Socket> Relay<S> {
    /// Receives datagrams until `WouldBlock` (or the budget is spent) and handles each.
    fn receive(&mut self, ctx: &mut Context<'_>) {
        while ctx.budget > 0 {
            let (n, from) = match self.socket.recv_from(ctx.scratch) {
                Ok(received) => received,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    // An error reported for an earlier send concerns that peer only. It still
                    // costs budget, so an error that repeats cannot hold the loop.
                    debug!("{} chat: receive failed: {e}", Id(ctx.token));
                    ctx.budget = ctx.budget.saturating_sub(DATAGRAM_COST);
                    continue;
                }
            };
            ctx.budget = ctx.budget.saturating_sub(n.max(DATAGRAM_COST));
            ctx.stats.add(Metric::ChatIn, 1);
            ctx.stats
                .service_add(ServiceId::Chat, ServiceMetric::Requests, 1);
            ctx.stats
                .service_add(ServiceId::Chat, ServiceMetric::BytesIn, n as u64);
            // The scratch buffer holds 64 KiB, the largest UDP payload: `n` is the whole datagram,
            // never a truncated one, so an oversize message is seen as such.
            self.chat.on_datagram(
                from,
                &ctx.scratch[..n],
                ctx.now,
                ctx.stats,
                &mut self.produced,
            );
            self.send_produced(ctx);
        }
    }
}

#[cfg(test)]
mod tests;
