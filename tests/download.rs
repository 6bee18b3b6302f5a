//! The TCP file download service over real sockets: the protocol, every refusal, streaming under
//! stress, and the tutorial downloader's bare form.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    AT_ONCE, IO_TIMEOUT, TestServer, WAIT, connect, join_within, payload, prompt_bound,
    read_exact_within, read_to_eof_within, round_trip, slowest_round_trip,
};
use readyloop::{Config, Metric};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A served root holding `files`, and a server on it configured further by `configure`.
fn serve(files: &[(&str, &[u8])], configure: impl FnOnce(&mut Config)) -> (TempDir, TestServer) {
    let root = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        let path = root.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
    let dir = root.path().to_path_buf();
    let server = TestServer::start(|config| {
        config.root = dir;
        configure(config);
    });
    (root, server)
}

/// Sends `request` as is and reads the whole reply, up to the server's close.
#[track_caller]
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut client = connect(addr);
    client.write_all(request).unwrap();
    read_to_eof_within(&mut client, WAIT).unwrap_or_else(|(e, got)| {
        panic!(
            "reply to {request:?} ended in {e} after {} bytes",
            got.len()
        )
    })
}

/// Splits a reply into its status line and the bytes after it.
#[track_caller]
fn split_reply(reply: &[u8]) -> (String, &[u8]) {
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(reply)));
    (
        String::from_utf8(reply[..end].to_vec()).unwrap(),
        &reply[end + 1..],
    )
}

/// Reads a `GET` reply's status line byte by byte, leaving the body unread.
#[track_caller]
fn read_status_line(client: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while byte[0] != b'\n' {
        client.read_exact(&mut byte).expect("status line");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap().trim_end().to_string()
}

/// Writes a `len`-byte file of pseudo-random blocks and returns its SHA-256.
fn write_big_file(path: &Path, len: usize) -> [u8; 32] {
    let mut file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let block = 1 << 20;
    for i in 0..len.div_ceil(block) {
        let chunk = payload(i as u64, block.min(len - i * block));
        hasher.update(&chunk);
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    hasher.finalize().into()
}

/// Downloads `name` with `GET` and returns the announced size and the body's SHA-256 and length.
#[track_caller]
fn get_digest(addr: SocketAddr, name: &str) -> (u64, [u8; 32], u64) {
    let mut client = connect(addr);
    writeln!(client, "GET {name}").unwrap();
    let status = read_status_line(&mut client);
    let size: u64 = status
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("unexpected status {status:?}"))
        .parse()
        .unwrap();
    let mut hasher = Sha256::new();
    let mut received = 0;
    let mut chunk = vec![0; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "download of {name} took over 60 s"
        );
        match client.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&chunk[..n]);
                received += n as u64;
            }
            Err(e) => panic!("download of {name} failed after {received} bytes: {e}"),
        }
    }
    (size, hasher.finalize().into(), received)
}

// ---- the protocol ------------------------------------------------------------------------------

#[test]
fn get_returns_the_size_then_exactly_the_file() {
    let (_root, server) = serve(&[("hello.txt", b"hello, world\n")], |_| {});
    let reply = exchange(server.files, b"GET hello.txt\n");
    assert_eq!(reply, b"OK 13\nhello, world\n");
    server.wait_for(WAIT, "the download to be counted", |s| {
        s.get(Metric::DownloadsCompleted) == 1 && s.get(Metric::OpenFiles) == 0
    });
}

#[test]
fn get_of_an_empty_file_is_ok_0_and_no_body() {
    let (_root, server) = serve(&[("empty", b"")], |_| {});
    assert_eq!(exchange(server.files, b"GET empty\r\n"), b"OK 0\n");
}

#[test]
fn an_offset_resumes_the_download_from_there() {
    let (_root, server) = serve(&[("digits", b"0123456789")], |_| {});
    assert_eq!(exchange(server.files, b"GET digits 4\n"), b"OK 6\n456789");
    assert_eq!(exchange(server.files, b"GET digits 10\n"), b"OK 0\n");
}

#[test]
fn an_offset_past_the_end_is_416() {
    let (_root, server) = serve(&[("digits", b"0123456789")], |_| {});
    let reply = exchange(server.files, b"GET digits 11\n");
    assert_eq!(split_reply(&reply).0, "ERR 416 offset past end of file");
}

#[test]
fn a_missing_file_is_404() {
    let (_root, server) = serve(&[], |_| {});
    assert_eq!(
        exchange(server.files, b"GET nothing.here\n"),
        b"ERR 404 not found\n"
    );
    assert_eq!(server.get(Metric::DownloadsRefused), 1);
}

#[test]
fn a_name_ending_in_digits_needs_an_explicit_offset() {
    let (_root, server) = serve(&[("report 2024", b"annual")], |_| {});
    assert_eq!(
        exchange(server.files, b"GET report 2024 0\n"),
        b"OK 6\nannual"
    );
    assert_eq!(
        split_reply(&exchange(server.files, b"GET report 2024\n")).0,
        "ERR 404 not found"
    );
}

#[test]
fn list_names_every_servable_file_in_order_with_its_size() {
    let (root, server) = serve(
        &[
            ("b.txt", b"12345"),
            ("a/z.bin", b"xy"),
            ("a.txt", b""),
            (".hidden", b"h"),
        ],
        |_| {},
    );
    std::os::unix::fs::symlink("/etc/hostname", root.path().join("link")).unwrap();
    let reply = exchange(server.files, b"LIST\n");
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        "OK 3\n2 a/z.bin\n0 a.txt\n5 b.txt\n"
    );
}

#[test]
fn list_stops_at_list_max() {
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i:02}"), vec![b'x'; i]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let (_root, server) = serve(&refs, |config| config.list_max = 5);
    let reply = String::from_utf8(exchange(server.files, b"LIST\n")).unwrap();
    assert_eq!(reply, "OK 5\n0 f00\n1 f01\n2 f02\n3 f03\n4 f04\n");
}

#[test]
fn a_request_line_over_4_kib_is_414() {
    let (_root, server) = serve(&[], |_| {});
    let mut request = b"GET ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 5000));
    request.push(b'\n');
    let reply = exchange(server.files, &request);
    assert_eq!(split_reply(&reply).0, "ERR 414 request line too long");
}

// ---- refusals ----------------------------------------------------------------------------------

#[test]
fn names_that_could_leave_the_root_are_forbidden() {
    let (root, server) = serve(&[("inside.txt", b"in"), ("dir/file", b"f")], |_| {});
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("dir/deeper")).unwrap();

    for (request, reason) in [
        (&b"GET /etc/passwd\n"[..], "absolute path"),
        (b"GET ../secret\n", "'..' in name"),
        (b"GET dir/../../secret\n", "'..' in name"),
        (b"GET dir\\file\n", "backslash"),
        (b"GET dir\0file\n", "NUL byte"),
        (b"GET dir\x1b[0mfile\n", "control character"),
        (b"GET escape\n", "outside the served root"),
        (b"GET dir/deeper/secret\n", "outside the served root"),
        (b"GET dir\n", "is a directory"),
    ] {
        let reply = exchange(server.files, request);
        let (status, body) = split_reply(&reply);
        assert!(
            status.starts_with("ERR 403 ") && status.contains(reason),
            "{request:?} got {status:?}"
        );
        assert!(body.is_empty());
    }
    let before: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
    assert_eq!(before.len(), 3, "nothing a client sent created a file");
}

#[test]
fn invalid_utf8_in_a_name_is_400() {
    let (_root, server) = serve(&[], |_| {});
    let reply = exchange(server.files, b"GET \xff\xfe.txt\n");
    assert_eq!(split_reply(&reply).0, "ERR 400 request is not valid UTF-8");
}

/// A line whose first word is `GET` or `LIST` in any case is a typed request: a slip is told what
/// is wrong, then the server closes, instead of the line being looked up as a file name.
#[test]
fn near_misses_of_get_and_list_get_err_400_naming_the_mistake() {
    let (_root, server) = serve(&[("a.txt", b"alpha")], |_| {});
    let near_misses: [(&[u8], &str); 7] = [
        (b"GET\n", "GET needs a file name"),
        (b"GET \r\n", "GET needs a file name"),
        (b"get a.txt\n", "methods are upper case: GET"),
        (
            b"GET\ta.txt\n",
            "put one space between GET and the file name",
        ),
        (b"list\n", "methods are upper case: LIST"),
        (b"LIST x\n", "LIST takes no argument"),
        // Sent like the tutorial's downloader, with no newline: typed all the same.
        (b"Get a.txt", "methods are upper case: GET"),
    ];
    for (request, reason) in near_misses {
        assert_eq!(
            String::from_utf8_lossy(&exchange(server.files, request)),
            format!("ERR 400 {reason}\n"),
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(
        server.get(Metric::DownloadsRefused),
        near_misses.len() as u64
    );
    assert_eq!(server.get(Metric::DownloadsStarted), 0);
}

#[test]
fn hidden_files_are_served_only_with_serve_hidden() {
    let (_root, server) = serve(&[(".env", b"KEY=1")], |_| {});
    assert_eq!(
        split_reply(&exchange(server.files, b"GET .env\n")).0,
        "ERR 403 hidden file"
    );
    let (_root, server) = serve(&[(".env", b"KEY=1")], |config| config.serve_hidden = true);
    assert_eq!(exchange(server.files, b"GET .env\n"), b"OK 5\nKEY=1");
}

/// A FIFO with no writer would block a plain `open` forever; the server must answer at once.
#[test]
fn a_fifo_is_refused_promptly() {
    let (root, server) = serve(&[], |_| {});
    let fifo = std::ffi::CString::new(
        root.path()
            .join("pipe")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let start = Instant::now();
    let reply = exchange(server.files, b"GET pipe\n");
    assert_eq!(split_reply(&reply).0, "ERR 403 not a regular file");
    let took = start.elapsed();
    assert!(took < AT_ONCE, "refused after {took:?}");
    // The loop was never blocked: echo still answers.
    round_trip(&mut connect(server.echo), b"still here");
}

#[test]
fn past_max_open_files_requests_get_503_until_a_file_closes() {
    let (root, server) = serve(&[("small", b"s")], |config| config.max_open_files = 1);
    write_big_file(&root.path().join("big"), 32 << 20);
    let mut holder = connect(server.files);
    holder.write_all(b"GET big\n").unwrap();
    server.wait_for(WAIT, "one open file", |s| s.get(Metric::OpenFiles) == 1);

    assert_eq!(
        split_reply(&exchange(server.files, b"GET small\n")).0,
        "ERR 503 busy: too many open files, try again later"
    );
    drop(holder);
    server.wait_for(WAIT, "the file to close", |s| s.get(Metric::OpenFiles) == 0);
    assert_eq!(exchange(server.files, b"GET small\n"), b"OK 1\ns");
}

// ---- the tutorial's bare form ------------------------------------------------------------------

/// The tutorial's downloader sends the bare name with no newline, reads once (at most 1 024
/// bytes), saves that and closes.
#[test]
fn a_bare_name_gets_the_raw_bytes_like_the_tutorial_downloader() {
    let contents = payload(7, 5000);
    let (_root, server) = serve(&[("tutorial.bin", &contents)], |_| {});
    let mut client = connect(server.files);
    client.write_all(b"tutorial.bin").unwrap();
    let mut first = vec![0; 1024];
    let n = client.read(&mut first).unwrap();
    assert!(n > 0);
    assert_eq!(&first[..n], &contents[..n], "raw bytes, no header");
    drop(client);

    let whole = exchange(server.files, b"tutorial.bin");
    assert_eq!(whole, contents);
    server.wait_for_no_open_connections();
}

/// A bare name is answered from the request-grace timer, not from a readiness event: a body far
/// larger than one handler's fair share must still stream to the end.
#[test]
fn a_bare_name_answered_after_the_grace_streams_a_large_file_whole() {
    let (root, server) = serve(&[], |_| {});
    let len = 8 << 20;
    let digest = write_big_file(&root.path().join("large.bin"), len);
    let mut client = connect(server.files);
    client.write_all(b"large.bin").unwrap();
    let body = read_to_eof_within(&mut client, Duration::from_secs(30)).unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&body)), digest);
}

/// Only the whole first word counts: a name that merely starts with `get` or `list` is a bare name.
#[test]
fn a_bare_name_that_only_starts_like_a_method_still_downloads() {
    let (_root, server) = serve(
        &[
            ("list.txt", b"a list"),
            ("Getting started.md", b"# start"),
            ("GETa", b"getta"),
        ],
        |_| {},
    );
    assert_eq!(exchange(server.files, b"list.txt"), b"a list");
    assert_eq!(exchange(server.files, b"Getting started.md"), b"# start");
    assert_eq!(exchange(server.files, b"GETa\n"), b"getta");
    assert_eq!(server.get(Metric::DownloadsRefused), 0);
}

/// The price of the rule: a file called `get` is typed in the bare form, so it is fetched as
/// `./get` (or with `GET get`).
#[test]
fn a_file_named_like_a_method_is_fetched_bare_behind_dot_slash() {
    let (_root, server) = serve(&[("get", b"a file called get")], |_| {});
    assert_eq!(
        exchange(server.files, b"get"),
        b"ERR 400 methods are upper case: GET\n"
    );
    assert_eq!(exchange(server.files, b"./get"), b"a file called get");
    assert_eq!(
        exchange(server.files, b"GET get\n"),
        b"OK 17\na file called get"
    );
}

#[test]
fn a_refused_bare_name_closes_without_a_body() {
    let (_root, server) = serve(&[], |_| {});
    assert_eq!(exchange(server.files, b"no-such-file"), b"");
    assert_eq!(exchange(server.files, b"../../etc/passwd"), b"");
    assert_eq!(server.get(Metric::DownloadsRefused), 2);
}

/// Without a newline, a request ends when the client pauses for `--request-grace`; pieces sent
/// closer together than that are one request. The second piece goes once the server has read
/// the first, so they are two reads; only a stall of most of the one-second grace between them
/// could split the request.
#[test]
fn a_request_without_newline_ends_after_the_request_grace() {
    const GRACE: Duration = Duration::from_secs(1);
    let (_root, server) = serve(&[("a.txt", b"alpha")], |config| {
        config.request_grace = GRACE;
    });
    let mut client = connect(server.files);
    let start = Instant::now();
    client.write_all(b"GET a").unwrap();
    server.wait_for(WAIT, "the server to read the first piece", |s| {
        s.get(Metric::BytesIn) == 5
    });
    client.write_all(b".txt").unwrap();
    let reply = read_to_eof_within(&mut client, WAIT).unwrap();
    assert_eq!(reply, b"OK 5\nalpha");
    assert!(start.elapsed() >= GRACE, "answered before the grace");
}

#[test]
fn a_half_close_ends_the_request_at_once() {
    let (_root, server) = serve(&[("a.txt", b"alpha")], |config| {
        config.request_grace = Duration::from_secs(30);
    });
    let mut client = connect(server.files);
    client.write_all(b"a.txt").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof_within(&mut client, WAIT).unwrap(), b"alpha");
}

// ---- streaming ---------------------------------------------------------------------------------

#[test]
fn a_256_mib_file_arrives_with_the_exact_digest() {
    let (root, server) = serve(&[], |_| {});
    let len = 256 << 20;
    let digest = write_big_file(&root.path().join("big.bin"), len);
    let (size, received_digest, received) = get_digest(server.files, "big.bin");
    assert_eq!(size, len as u64);
    assert_eq!(received, len as u64);
    assert_eq!(received_digest, digest);
}

#[test]
fn the_copy_path_sends_the_same_bytes_as_sendfile() {
    let (root, server) = serve(&[], |config| config.no_sendfile = true);
    let len = 8 << 20;
    let digest = write_big_file(&root.path().join("copy.bin"), len);
    let (_, received_digest, received) = get_digest(server.files, "copy.bin");
    assert_eq!((received, received_digest), (len as u64, digest));
    assert_eq!(server.get(Metric::BodyBytesCopied), len as u64);
    assert_eq!(server.get(Metric::BodyBytesSendfile), 0);
}

#[test]
fn fifty_concurrent_downloads_of_one_file_all_complete() {
    let (root, server) = serve(&[], |_| {});
    let len = 4 << 20;
    let digest = write_big_file(&root.path().join("shared.bin"), len);
    let files = server.files;
    let clients: Vec<_> = (0..50)
        .map(|_| thread::spawn(move || get_digest(files, "shared.bin")))
        .collect();
    for client in clients {
        let (_, received_digest, received) =
            join_within(client, Duration::from_secs(60), "a download");
        assert_eq!((received, received_digest), (len as u64, digest));
    }
    server.wait_for(WAIT, "50 completed downloads", |s| {
        s.get(Metric::DownloadsCompleted) == 50 && s.get(Metric::OpenFiles) == 0
    });
}

#[test]
fn a_client_leaving_mid_download_frees_its_slot_and_file() {
    let (root, server) = serve(&[], |_| {});
    write_big_file(&root.path().join("big.bin"), 64 << 20);
    let mut client = connect(server.files);
    client.write_all(b"GET big.bin\n").unwrap();
    read_exact_within(&mut client, 1 << 20, IO_TIMEOUT);
    drop(client);
    server.wait_for(WAIT, "the slot and the file to be freed", |s| {
        s.get(Metric::Open) == 0 && s.get(Metric::OpenFiles) == 0
    });
    assert_eq!(server.get(Metric::DownloadsAborted), 1);
}

/// A client that asks for a large file and never reads holds a socket and a file, nothing more:
/// the loop only does work that is ready, so other clients do not wait for it. Their round trips
/// stay within [`prompt_bound`] of those measured before the stalled download began.
#[test]
fn a_stalled_reader_does_not_slow_an_echo_client() {
    let (root, server) = serve(&[], |_| {});
    write_big_file(&root.path().join("big.bin"), 64 << 20);
    let mut echo = connect(server.echo);
    let bound = prompt_bound(slowest_round_trip(&mut echo, 20));
    let mut stalled = connect(server.files);
    stalled.write_all(b"GET big.bin\n").unwrap();
    server.wait_for(WAIT, "the download to start", |s| {
        s.get(Metric::DownloadsStarted) == 1
    });

    let slowest = slowest_round_trip(&mut echo, 200);
    // A loop stuck on the stalled reader would never answer; any healthy run is far below this.
    assert!(
        slowest < bound,
        "slowest echo round trip {slowest:?}, more than {bound:?}"
    );
    assert_eq!(
        server.get(Metric::OpenFiles),
        1,
        "the stalled download is still open"
    );
    drop(stalled);
}

/// The size is taken at open: a file that shrinks mid-transfer ends the download early, and the
/// client's read fails (a reset) after fewer than `OK <size>` bytes rather than ending cleanly.
/// The server carries on.
#[test]
fn a_file_truncated_during_the_transfer_makes_the_clients_read_fail() {
    let (root, server) = serve(&[("ok.txt", b"fine")], |_| {});
    let path = root.path().join("shrinking.bin");
    let len = 64 << 20;
    write_big_file(&path, len);
    let mut client = connect(server.files);
    client.write_all(b"GET shrinking.bin\n").unwrap();
    assert_eq!(read_status_line(&mut client), format!("OK {len}"));
    read_exact_within(&mut client, 1 << 20, IO_TIMEOUT);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();

    let (error, rest) = read_to_eof_within(&mut client, Duration::from_secs(30))
        .expect_err("a reset, not a clean end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let received = (1 << 20) + rest.len();
    assert!(received < len, "received {received} of {len} bytes");
    server.wait_for(WAIT, "the truncation to be counted", |s| {
        s.get(Metric::DownloadsTruncated) == 1
            && s.get(Metric::DownloadsReset) == 1
            && s.get(Metric::OpenFiles) == 0
    });
    assert_eq!(exchange(server.files, b"GET ok.txt\n"), b"OK 4\nfine");
}

/// The tutorial's bare form announces no size: a download cut by the end of the shutdown grace
/// must make the client's read fail, or the saved file would silently be short.
#[test]
fn a_bare_download_cut_by_the_shutdown_grace_makes_the_clients_read_fail() {
    let (root, mut server) = serve(&[], |config| {
        config.shutdown_grace = Duration::from_millis(300);
    });
    let len = 64 << 20;
    write_big_file(&root.path().join("big.bin"), len);
    let mut client = connect(server.files);
    client.write_all(b"big.bin").unwrap();
    read_exact_within(&mut client, 1 << 20, IO_TIMEOUT);
    // The client stops reading; the server drains, then gives up at the end of the grace.
    server.shutdown();
    let last = server.wait_stopped(WAIT);
    assert_eq!(last.get(Metric::DownloadsReset), 1, "{last}");
    let (error, rest) =
        read_to_eof_within(&mut client, IO_TIMEOUT).expect_err("a reset, not a clean end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert!(
        (1 << 20) + rest.len() < len,
        "the file did not fit in the buffers"
    );
}

#[test]
fn a_file_growing_during_the_transfer_sends_only_its_size_at_open() {
    let (root, server) = serve(&[], |_| {});
    let path = root.path().join("growing.bin");
    let len = 16 << 20;
    write_big_file(&path, len);
    let mut client = connect(server.files);
    client.write_all(b"GET growing.bin\n").unwrap();
    assert_eq!(read_status_line(&mut client), format!("OK {len}"));
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0; 1 << 20])
        .unwrap();
    let body = read_to_eof_within(&mut client, Duration::from_secs(30)).unwrap();
    assert_eq!(body.len(), len);
}

#[test]
fn shutdown_lets_a_download_under_way_finish() {
    let (root, server) = serve(&[], |config| {
        config.shutdown_grace = Duration::from_secs(10)
    });
    let len = 32 << 20;
    let digest = write_big_file(&root.path().join("big.bin"), len);
    let mut client = connect(server.files);
    client.write_all(b"GET big.bin\n").unwrap();
    assert_eq!(read_status_line(&mut client), format!("OK {len}"));
    server.shutdown();
    let body = read_to_eof_within(&mut client, Duration::from_secs(30)).unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&body)), digest);
}

// ---- over --max-conns ------------------------------------------------------------------------

/// A server at `--max-conns 1`, held full by one download client that has sent nothing.
fn full_server(configure: impl FnOnce(&mut Config)) -> (TempDir, TestServer, TcpStream) {
    let (root, server) = serve(&[("a.txt", b"abc")], |c| {
        c.max_conns = 1;
        configure(c);
    });
    let holder = connect(server.files);
    server.wait_for(WAIT, "the holder admitted", |s| s.get(Metric::Open) == 1);
    (root, server, holder)
}

#[test]
fn get_and_list_over_max_conns_are_told_the_server_is_busy() {
    let (_root, server, _holder) = full_server(|_| {});
    for request in [&b"GET a.txt\n"[..], b"LIST\n"] {
        let reply = exchange(server.files, request);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "ERR 503 busy: too many connections, try again later\n",
            "reply to {request:?}"
        );
    }
    server.wait_for(WAIT, "both counted as refused at the limit", |s| {
        s.get(Metric::ClosedLimit) == 2
    });
    assert_eq!(server.get(Metric::Open), 1, "turned away is not open");
}

/// The bare form has no error line: past the limit it is closed without a word, as any refusal.
#[test]
fn a_bare_name_over_max_conns_gets_a_silent_close() {
    let (_root, server, _holder) = full_server(|_| {});
    assert_eq!(exchange(server.files, b"a.txt"), b"");
    server.wait_for(WAIT, "counted at the limit", |s| {
        s.get(Metric::ClosedLimit) == 1
    });
}

/// Turned-away clients that say nothing are held at most `TURN_AWAY_DEADLINE` (1 s) each, and
/// only `--max-turned-away` of them at once: the next is closed at once, with no reply at all.
#[test]
fn turned_away_clients_are_a_small_pool_with_a_short_deadline() {
    let (_root, server, _holder) = full_server(|c| c.max_turned_away = 2);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..2).map(|_| connect(server.files)).collect();
    let mut extra = connect(server.files);
    assert_eq!(
        read_to_eof_within(&mut extra, WAIT).expect("a clean close"),
        b"",
        "past the pool: closed at once"
    );
    server.wait_for(WAIT, "the extra one counted", |s| {
        s.get(Metric::ClosedLimit) == 1
    });
    for client in &mut silent {
        assert_eq!(
            read_to_eof_within(client, WAIT).expect("a clean close"),
            b""
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held until the deadline, not closed at once: {:?}",
        started.elapsed()
    );
    server.wait_for(WAIT, "all three counted", |s| {
        s.get(Metric::ClosedLimit) == 3
    });
    // The pool is free again: a typed request is answered.
    let reply = exchange(server.files, b"LIST\n");
    assert!(
        reply.starts_with(b"ERR 503 "),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}
