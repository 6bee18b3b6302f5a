//! `--reuse-port`: several servers bound to the same ports at once, the kernel spreading the
//! clients across them (one process per core, as nginx runs its workers); with the chat bus,
//! chat members spread across them still share one room.
//!
//! The servers here run in one test process, each on its own thread with its own loop; to the
//! kernel, sockets that share a port with `SO_REUSEPORT` are alike whichever process opened
//! them. Which server a client reaches is the kernel's hash of the client's address, so the tests
//! open clients from fresh ports until each server has had some, within a bound.

mod common;

use std::io::ErrorKind;

use readyloop::{Config, Metric, Server, StartError};

use common::chat_peer::{ChatPeer, connect_rooms};
use common::redis::Redis;
use common::{TestServer, WAIT, connect, round_trip};

/// Clients to open, at most, until each of two servers has served one. The kernel's hash sends
/// each new source port to either server with about even odds: all 64 to one has odds of 2^-63.
const SPREAD_TRIES: usize = 64;

/// A server on `first`'s echo, files and chat ports, with a free admin port of its own.
fn sharing_ports_with(first: &TestServer, configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start(|config| {
        config.reuse_port = true;
        config.echo_port = Some(first.echo.port());
        config.files_port = Some(first.files.port());
        config.chat_port = Some(first.chat.port());
        configure(config);
    })
}

#[test]
fn two_servers_on_the_same_ports_both_serve_echo() {
    let first = TestServer::start(|config| config.reuse_port = true);
    let second = sharing_ports_with(&first, |_| {});
    assert_eq!(second.echo, first.echo, "one echo address for both");
    assert_eq!(second.chat, first.chat, "one chat address for both");

    let served = |server: &TestServer| server.get(Metric::Accepted);
    let mut clients = Vec::new();
    for i in 0..SPREAD_TRIES {
        let mut client = connect(first.echo);
        round_trip(&mut client, format!("client {i}\n").as_bytes());
        clients.push(client);
        if served(&first) > 0 && served(&second) > 0 {
            break;
        }
    }
    assert!(
        served(&first) > 0 && served(&second) > 0,
        "{} clients all went to one server: first served {}, second {}",
        clients.len(),
        served(&first),
        served(&second)
    );
    assert_eq!(
        served(&first) + served(&second),
        clients.len() as u64,
        "every client was served by exactly one of them"
    );
}

#[test]
fn without_reuse_port_a_second_server_cannot_bind_the_ports() {
    let first = TestServer::start(|config| config.reuse_port = true);
    let config = Config {
        bind: "127.0.0.1".parse().unwrap(),
        echo_port: Some(first.echo.port()),
        files_port: None,
        chat_port: None,
        admin_port: None,
        ..Config::default()
    };
    match Server::bind(config) {
        Err(StartError::Bind {
            service: "echo",
            source,
            ..
        }) => assert_eq!(source.kind(), ErrorKind::AddrInUse),
        Err(other) => panic!("expected the echo port to be in use, got: {other}"),
        Ok(_) => panic!("a server without --reuse-port bound a port another holds"),
    }
}

/// Chat members sent to one address land on either server, by the kernel's hash of their
/// addresses; through Redis they still share the lobby.
#[test]
fn chat_members_spread_across_two_servers_share_a_room() {
    let redis = Redis::start();
    let first = TestServer::start(|config| {
        config.reuse_port = true;
        config.chat_bus = Some(redis.bus());
    });
    let second = sharing_ports_with(&first, |config| config.chat_bus = Some(redis.bus()));
    for server in [&first, &second] {
        server.wait_for(WAIT, "both bus links up", |s| {
            s.get(Metric::ChatBusLinksUp) == 2
        });
    }
    let members = |server: &TestServer| server.get(Metric::ChatMembers);
    // Members join one at a time; the server whose count rose has the new one.
    let (mut on_first, mut on_second) = (None, None);
    for i in 0..SPREAD_TRIES {
        let before = members(&first);
        let peer = ChatPeer::named(first.chat, &format!("m{i}"));
        if members(&first) > before {
            on_first.get_or_insert(peer);
        } else {
            on_second.get_or_insert(peer);
        }
        if on_first.is_some() && on_second.is_some() {
            break;
        }
    }
    let (Some(a), Some(b)) = (on_first, on_second) else {
        panic!("{SPREAD_TRIES} chat members all went to one server");
    };
    // Each waits until what the one says reaches the other: the lobby is one room.
    connect_rooms(&a, &b);
    connect_rooms(&b, &a);
    assert!(first.get(Metric::ChatBusReceived) > 0 && second.get(Metric::ChatBusReceived) > 0);
}
