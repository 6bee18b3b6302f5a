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
use crate::sys::{self, interrupted, would_block};
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

    /// Sends datagrams in order, as many in one call as the socket takes, and says how many it
    /// took: at least one, unless `datagrams` is empty.
    ///
    /// # Errors
    /// The first datagram's, as `sendmmsg(2)` or `sendto(2)`: `WouldBlock` when the send buffer
    /// is full, and the kernel's reasons otherwise.
    fn send_many(&mut self, datagrams: &[Datagram]) -> io::Result<usize>;
}

impl Socket for UdpSocket {
    // The inherent method: mio's own, which takes `&self`.
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        counted::count(Call::Recvfrom);
        UdpSocket::recv_from(self, buf)
    }

    fn send_many(&mut self, datagrams: &[Datagram]) -> io::Result<usize> {
        counted::count(if cfg!(target_os = "linux") {
            Call::Sendmmsg
        } else {
            Call::Sendto
        });
        let each = datagrams.iter().map(|d| (&d.payload[..], d.to));
        sys::send_datagrams(self, each)
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
        // Others waiting ahead keep their place: then everything new queues behind them.
        let done = if self.outbox.is_empty() {
            send_all(&mut self.socket, &produced, ctx)
        } else {
            0
        };
        for datagram in produced.drain(..).skip(done) {
            self.queue(datagram, ctx);
        }
        self.produced = produced;
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
        while !self.outbox.is_empty() {
            let waiting = self.outbox.oldest();
            let done = send_all(&mut self.socket, waiting, ctx);
            let blocked = done < waiting.len();
            self.outbox.forget(done);
            if blocked {
                break;
            }
        }
        KEEP
    }
}

/// Sends `datagrams` in order, in as few calls as the socket allows, until it would block.
/// Returns how many are done with: sent, or dropped because the kernel refused them.
///
/// Each call takes a run of datagrams (a room's fan-out is one run): on Linux one `sendmmsg`
/// carries up to [`sys::SEND_BATCH`] of them, saving a system call's entry and exit per datagram
/// after the first. A datagram the kernel refuses ends its call early; sent again at the head of
/// the next, it reports its own error, and is dropped: one unreachable peer must not hold up the
/// others.
fn send_all(socket: &mut impl Socket, datagrams: &[Datagram], ctx: &Context<'_>) -> usize {
    let mut done = 0;
    while done < datagrams.len() {
        match socket.send_many(&datagrams[done..]) {
            Ok(sent) => {
                let bytes = datagrams[done..done + sent]
                    .iter()
                    .map(|d| d.payload.len() as u64)
                    .sum();
                ctx.stats.add(Metric::ChatOut, sent as u64);
                // The loop credits the bytes to the relay's row and to the chat service.
                ctx.stats.add(Metric::BytesOut, bytes);
                done += sent;
            }
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => {}
            Err(e) => {
                debug!(
                    "{} chat: send to {} failed: {e}",
                    Id(ctx.token),
                    datagrams[done].to
                );
                ctx.stats.add(Metric::ChatDroppedSend, 1);
                done += 1;
            }
        }
    }
    done
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
            ctx.stats.add(Metric::BytesIn, n as u64);
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
