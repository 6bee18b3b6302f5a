//! `--reuse-port`: several servers bound to the same ports at once, the kernel spreading the
//! clients across them (one process per core, as nginx runs its workers).
//!
//! The servers here run in one test process, each on its own thread with its own loop; to the
//! kernel, sockets that share a port with `SO_REUSEPORT` are alike whichever process opened
//! them. Which server a client reaches is the kernel's hash of the client's address, so the tests
//! open clients from fresh ports until each server has had some, within a bound.

mod common;

use std::io::ErrorKind;

use readyloop::{Config, Metric, Server, StartError};

use common::{TestServer, connect, round_trip};

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
