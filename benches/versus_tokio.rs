//! readyloop side by side with the tokio server a reader would write, under identical loads, and
//! with nginx for downloads.
//!
//! Run with `cargo bench --bench versus_tokio` (about 5 minutes on 2 cores). `-- --quick` runs one
//! short round of each scenario and writes its files to a temporary directory; `-- --rounds N`
//! sets the rounds; `-- --no-pin` leaves the threads where the kernel puts them; `-- --only
//! GROUP` (`echo`, `churn`, `download`, `chat`, `memory`; repeatable) runs part of it.
//!
//! Both servers run in this process on loopback: readyloop on its own thread
//! ([`support::start_readyloop`]) and a current-thread tokio runtime on another
//! ([`support::tokio_peer`]). The load comes from readyloop's own generator,
//! [`readyloop::bench::run`]. Each scenario measures the two servers in turn, round after round
//! (the order flips every round), and prints one table of medians with the ratio readyloop/tokio.
//!
//! Downloads are also measured against nginx, when it is installed ([`support::nginx`]): Debian's
//! package, one process, `sendfile on; tcp_nopush on;`, pinned like the others, in the same rounds
//! and on the same file. Without it the benchmark says so and leaves the nginx rows out.
//!
//! On a 2-core machine the generator costs about as much CPU per request as the server, so
//! requests per second are capped by the machine. What tells the servers apart is the **server's
//! CPU time per operation**: the user+system time of the server's one thread over the run, read
//! from `/proc`, divided by the operations done. With two or more cores both servers are pinned
//! to core 0 and the generator to the others.
//!
//! Beside its CPU time, readyloop reports its **system calls per operation** (request, connection,
//! megabyte, delivery), read from its own counts ([`readyloop::sys::counted`]) before and after
//! each run, and below each table which calls they are. They do not depend on the machine's load:
//! where CPU time needs rounds and medians to show a change of a few percent, one call more per
//! request shows as +1.00. The tokio peer counts none.
//!
//! Memory is measured out of process: the release binary `readyloop`, and this benchmark
//! re-executed as a tokio peer, each get 10 000 echo connections that exchange one message and
//! then sit idle; the growth of the server's resident set, divided by 10 000, is the cost of an
//! idle connection.
//!
//! A full run writes `docs/bench/results.csv` and draws `docs/bench/results.svg`.

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use readyloop::bench::{Load, Mode, Report, Scenario, run};
use readyloop::sys::counted::Call;
use support::nginx::{self, Nginx};
use support::tokio_peer::{TokioPeer, start_tokio_peer};
use support::{Running, loopback_config, machine, median, start_readyloop, task_cpu, write_file};

/// Echo connection counts of the issue: one client, a busy server, many, very many.
const ECHO_CONNECTIONS: [usize; 4] = [1, 50, 500, 5_000];
/// Echo message size in bytes.
const ECHO_SIZE: usize = 64;
/// Clients connecting, exchanging one message and closing, all at once.
const CHURN_PARALLEL: usize = 50;
/// Parallel downloads.
const DOWNLOAD_PARALLEL: [usize; 2] = [1, 16];
/// The file every download fetches.
const DOWNLOAD_NAME: &str = "big.bin";
/// Chat loads, as `benches/chat.rs`: one sender, a small room and a large one, in members
/// besides the sender.
const CHAT_MEMBERS: [usize; 2] = [10, 100];
/// The open-loop chat rate, as a share of the slower server's closed-loop message rate.
const OPEN_LOAD: f64 = 0.8;
/// Messages the open loop's sender may have in flight: enough never to hold the timetable back.
const CHAT_OPEN_INFLIGHT: usize = 1024;
/// Chat message size in bytes (the generator's smallest is 32: its header must fit).
const CHAT_SIZE: usize = 64;
/// Idle connections held open for the memory measurement.
const IDLE_CONNECTIONS: usize = 10_000;
/// File descriptors this process needs at once: the 10 000 client ends of the memory
/// measurement, or both ends of 5 000 echo connections, plus listeners, files and slack.
const DESCRIPTORS_NEEDED: u64 = 10_500;
/// The row giving the user-space part of the server's CPU time per operation.
const USER_METRIC: &str = "  of which user space";
/// The row giving readyloop's system calls per echo request.
const CALLS_PER_REQUEST: &str = "system calls / request";
/// Setting this variable makes the benchmark binary run only the tokio peer (memory measurement).
const PEER_ROLE_VAR: &str = "READYLOOP_VERSUS_TOKIO_PEER";

fn main() {
    if std::env::var_os(PEER_ROLE_VAR).is_some() {
        serve_as_peer_child();
        return;
    }
    let options = Options::from_args();
    raise_descriptor_limit();
    let root = tempfile::tempdir().expect("a temporary directory");
    write_file(&root.path().join(DOWNLOAD_NAME), options.file_len);
    nginx::write_reply_head(&root.path().join(DOWNLOAD_NAME));

    let pin = options.pin.then_some(0);
    let readyloop = start_readyloop(readyloop::Config {
        root: root.path().to_path_buf(),
        pin,
        max_conns: 50_000,
        chat_rate: 0,
        chat_max_members: 100_000,
        chat_max_rooms: 10_000,
        ..loopback_config()
    });
    let tokio = start_tokio_peer(root.path().to_path_buf(), pin);
    let nginx = if options.wants("download") {
        Nginx::start(root.path(), DOWNLOAD_NAME, pin)
            .inspect_err(|why| println!("nginx: {why}: the download tables leave nginx out"))
            .ok()
    } else {
        None
    };
    let servers = Servers {
        readyloop,
        tokio,
        nginx,
    };

    let machine = format!("{}, {}", machine(), today());
    println!("readyloop versus tokio (current-thread runtime, one task per connection)");
    println!(
        "{machine}; {} round(s) of {:?} per server; {}",
        options.rounds,
        options.window,
        if options.pin {
            "servers pinned to core 0, load generator to the other cores"
        } else {
            "no pinning"
        }
    );
    if let Some(nginx) = &servers.nginx {
        println!(
            "downloads also against {} on {}: one process, sendfile on; tcp_nopush on",
            nginx.version, nginx.addr
        );
    }
    let mut results = Results::default();
    if options.wants("echo") {
        for connections in ECHO_CONNECTIONS {
            echo(&options, &servers, connections, &mut results);
        }
    }
    if options.wants("churn") {
        churn(&options, &servers, &mut results);
    }
    if options.wants("download") {
        for shared in [false, true] {
            for parallel in DOWNLOAD_PARALLEL {
                download(&options, &servers, parallel, shared, &mut results);
            }
        }
    }
    if options.wants("chat") {
        for members in CHAT_MEMBERS {
            chat(&options, &servers, members, &mut results);
        }
    }
    if options.wants("memory") {
        memory(&mut results);
    }
    results.print_targets();

    let dir = options.output_dir();
    std::fs::create_dir_all(&dir).expect("create the output directory");
    let header = format!(
        "readyloop versus tokio; {machine}; {} round(s) of {:?}",
        options.rounds, options.window
    );
    results.write_csv(&dir.join("results.csv"), &header);
    results.draw_svg(&dir.join("results.svg"), &header);
    println!("\nwrote {}/results.csv and results.svg", dir.display());
}

/// What the command line asked for.
struct Options {
    rounds: usize,
    /// Length of one measurement.
    window: Duration,
    /// Size of the file downloaded, in bytes.
    file_len: usize,
    pin: bool,
    quick: bool,
    /// `--only GROUP` (repeatable): run only these groups of scenarios.
    only: Vec<String>,
}

impl Options {
    fn from_args() -> Options {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let rounds = args
            .iter()
            .position(|a| a == "--rounds")
            .and_then(|i| args.get(i + 1))
            .map(|n| n.parse().expect("--rounds takes a number"))
            .unwrap_or(if quick { 1 } else { 3 });
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Options {
            rounds,
            window: Duration::from_millis(if quick { 1_000 } else { 4_000 }),
            file_len: if quick { 32 << 20 } else { 256 << 20 },
            pin: cores >= 2 && !args.iter().any(|a| a == "--no-pin"),
            quick,
            only: args
                .windows(2)
                .filter(|pair| pair[0] == "--only")
                .map(|pair| pair[1].clone())
                .collect(),
        }
    }

    /// Whether a group of scenarios (`echo`, `churn`, `download`, `chat`, `memory`) runs.
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    /// A full run publishes its results; a quick or partial one must not overwrite them.
    fn output_dir(&self) -> PathBuf {
        if self.quick || !self.only.is_empty() {
            std::env::temp_dir().join("readyloop-versus-tokio-quick")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench")
        }
    }

    /// Generator threads: every core but the server's when pinned.
    fn threads(&self) -> usize {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        if self.pin { (cores - 1).max(1) } else { cores }
    }

    fn load(&self, scenario: Scenario, target: SocketAddr, connections: usize) -> Load {
        Load {
            scenario,
            target,
            connections,
            threads: self.threads().min(connections),
            duration: self.window,
            warmup: Duration::ZERO,
            requests: None,
            mode: Mode::Closed,
            pin: self.pin,
            progress: false,
        }
    }
}

/// The servers under test.
struct Servers {
    readyloop: Running,
    tokio: TokioPeer,
    /// The download peer beside tokio, if nginx is installed and started.
    nginx: Option<Nginx>,
}

/// Reads what a server has spent so far.
type Meter<'a> = &'a dyn Fn() -> Spent;

impl Servers {
    /// readyloop's one thread, and the system calls it counted.
    fn readyloop_spent(&self) -> Spent {
        let stats = self.readyloop.handle.stats();
        Spent {
            cpu: Cpu::of(&[self.readyloop.tid]),
            calls: Some(Call::ALL.map(|call| stats.get(call.metric()))),
        }
    }

    /// The tokio runtime thread and its blocking pool.
    fn tokio_spent(&self) -> Spent {
        Spent {
            cpu: Cpu::of(&self.tokio.threads()),
            calls: None,
        }
    }

    /// Every thread of the nginx process (it has one); nothing without nginx.
    fn nginx_spent(&self) -> Spent {
        Spent {
            cpu: self
                .nginx
                .as_ref()
                .map_or(Cpu::of(&[]), |nginx| Cpu::of_process(nginx.pid)),
            calls: None,
        }
    }
}

/// System calls by kind, in the order of [`Call::ALL`].
type Calls = [u64; Call::ALL.len()];

/// What a server has spent so far.
#[derive(Debug, Clone, Copy)]
struct Spent {
    cpu: Cpu,
    /// readyloop's system calls, as its figures count them; `None` for tokio and nginx. The loop
    /// adds its counts to the figures at the end of each pass, so a reading misses at most the
    /// pass under way: a few calls in a run of millions.
    calls: Option<Calls>,
}

/// CPU time some threads have used so far: a server's threads in this process, or nginx's.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// User and system time, in nanoseconds ([`task_cpu`]).
    total: Duration,
    /// User time alone: the server's own code, without the kernel's TCP/IP work done on its
    /// behalf. Counted in clock ticks (10 ms), so it is only meaningful over seconds.
    user: Duration,
}

impl Cpu {
    /// Threads of this process.
    fn of(tids: &[i32]) -> Cpu {
        Cpu::of_tasks(tids.iter().map(|tid| format!("/proc/self/task/{tid}")))
    }

    /// Every thread of another process.
    fn of_process(pid: u32) -> Cpu {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().display().to_string());
        Cpu::of_tasks(tasks)
    }

    /// The threads whose `/proc` directories are `tasks`.
    fn of_tasks(tasks: impl Iterator<Item = String>) -> Cpu {
        tasks.fold(
            Cpu {
                total: Duration::ZERO,
                user: Duration::ZERO,
            },
            |sum, task| Cpu {
                total: sum.total + task_cpu(&task),
                user: sum.user + task_user(&task),
            },
        )
    }
}

/// User time of the thread whose `/proc` directory is `task`: `utime`, field 14 of its `stat`.
fn task_user(task: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it start with field 3, the state.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .nth(14 - 3)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// One measurement's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    per_second: f64,
    megabytes_per_second: f64,
    p99_us: f64,
    /// Server thread CPU nanoseconds per operation.
    cpu_ns: f64,
    /// Of which user time.
    user_ns: f64,
    /// Server CPU microseconds per megabyte received by the clients.
    cpu_us_per_mb: f64,
    delivery_ratio: f64,
    /// readyloop's system calls over the run; `None` for tokio.
    calls: Option<Calls>,
    /// Operations done and megabytes received: what the calls are divided by.
    operations: f64,
    megabytes: f64,
}

/// What system calls are counted per.
#[derive(Debug, Clone, Copy)]
enum Per {
    /// Request, connection, download or delivery: the scenario's operation.
    Operation,
    /// Megabyte received by the clients.
    Megabyte,
}

impl Sample {
    /// readyloop's system calls of one kind (`None`: of every kind) per operation or megabyte;
    /// NaN for a server that counts none.
    fn calls(&self, call: Option<Call>, per: Per) -> f64 {
        let Some(calls) = self.calls else {
            return f64::NAN;
        };
        let made = match call {
            Some(call) => calls[call as usize],
            None => calls.iter().sum(),
        };
        let units = match per {
            Per::Operation => self.operations,
            Per::Megabyte => self.megabytes,
        };
        made as f64 / units.max(f64::MIN_POSITIVE)
    }
}

/// Runs one load and reads the server thread's CPU time, and readyloop's system calls, around it.
fn measure(load: &Load, server: Meter<'_>) -> Sample {
    let before = server();
    let report: Report = run(load).unwrap_or_else(|e| panic!("{} load failed: {e}", load.target));
    let after = server();
    let (cpu, user) = (
        after.cpu.total.saturating_sub(before.cpu.total),
        after.cpu.user.saturating_sub(before.cpu.user),
    );
    let calls = before
        .calls
        .zip(after.calls)
        .map(|(before, after)| std::array::from_fn(|i| after[i].saturating_sub(before[i])));
    if !report.errors.is_empty() {
        eprintln!(
            "  {} on {}: errors {:?}",
            report.scenario, load.target, report.errors
        );
    }
    Sample {
        per_second: report.per_second(),
        megabytes_per_second: report.megabytes_per_second(),
        p99_us: report.latency.p99.as_secs_f64() * 1e6,
        cpu_ns: cpu.as_nanos() as f64 / report.operations.max(1) as f64,
        user_ns: user.as_nanos() as f64 / report.operations.max(1) as f64,
        cpu_us_per_mb: cpu.as_secs_f64() * 1e6 / (report.bytes.max(1) as f64 / 1e6),
        delivery_ratio: report.delivery_ratio.unwrap_or(1.0),
        calls,
        operations: report.operations as f64,
        megabytes: report.bytes as f64 / 1e6,
    }
}

/// Measures each target in turn, `rounds` times, flipping the order every round so neither
/// server always runs on a machine the other has just warmed or heated; returns the samples per
/// target.
fn alternate(options: &Options, targets: &[(&Load, Meter<'_>)]) -> Vec<Vec<Sample>> {
    let mut samples = vec![Vec::new(); targets.len()];
    for round in 0..options.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (load, server) = targets[i];
            samples[i].push(measure(load, server));
        }
    }
    samples
}

/// Picks one figure out of a sample.
type Figure = fn(&Sample) -> f64;

/// The median of one figure over samples.
fn median_of(samples: &[Sample], figure: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(figure).collect();
    median(&mut values)
}

fn echo(options: &Options, servers: &Servers, connections: usize, results: &mut Results) {
    let scenario = || Scenario::Echo {
        size: ECHO_SIZE,
        pipeline: 1,
    };
    let ours = options.load(
        scenario(),
        servers.readyloop.addresses.echo.expect("echo is on"),
        connections,
    );
    let theirs = options.load(scenario(), servers.tokio.echo, connections);
    let samples = alternate(
        options,
        &[
            (&ours, &|| servers.readyloop_spent()),
            (&theirs, &|| servers.tokio_spent()),
        ],
    );
    let name = format!("echo {connections}");
    let table = Table::new(
        &name,
        format!("echo, {ECHO_SIZE}-byte messages, {connections} connection(s)"),
    );
    results.add(
        table.pair(&samples, "requests/s", "req/s", Better::Higher, |s| {
            s.per_second
        }),
    );
    results.add(table.pair(&samples, "p99", "us", Better::Lower, |s| s.p99_us));
    results.add(
        table.pair(&samples, "server CPU / request", "ns", Better::Lower, |s| {
            s.cpu_ns
        }),
    );
    results.add(table.pair(&samples, USER_METRIC, "ns", Better::Lower, |s| s.user_ns));
    results.add(table.sampled(
        CALLS_PER_REQUEST,
        "calls",
        Better::Lower,
        |s| s.calls(None, Per::Operation),
        &samples[0],
        None,
    ));
    results.print_last(5);
    print_calls(&samples[0], Per::Operation, "request");
}

fn churn(options: &Options, servers: &Servers, results: &mut Results) {
    let ours = options.load(
        Scenario::Connect,
        servers.readyloop.addresses.echo.expect("echo is on"),
        CHURN_PARALLEL,
    );
    let theirs = options.load(Scenario::Connect, servers.tokio.echo, CHURN_PARALLEL);
    let samples = alternate(
        options,
        &[
            (&ours, &|| servers.readyloop_spent()),
            (&theirs, &|| servers.tokio_spent()),
        ],
    );
    let table = Table::new(
        "connect churn",
        format!("connect churn, {CHURN_PARALLEL} in parallel"),
    );
    results.add(
        table.pair(&samples, "connections/s", "conn/s", Better::Higher, |s| {
            s.per_second
        }),
    );
    results.add(table.pair(&samples, "p99", "us", Better::Lower, |s| s.p99_us));
    results.add(table.pair(
        &samples,
        "server CPU / connection",
        "ns",
        Better::Lower,
        |s| s.cpu_ns,
    ));
    results.add(table.pair(&samples, USER_METRIC, "ns", Better::Lower, |s| s.user_ns));
    results.add(table.sampled(
        "system calls / connection",
        "calls",
        Better::Lower,
        |s| s.calls(None, Per::Operation),
        &samples[0],
        None,
    ));
    results.print_last(5);
    print_calls(&samples[0], Per::Operation, "connection");
}

/// Download throughput and server CPU per megabyte against both tokio bodies: `tokio::fs`
/// (idiomatic) and `std::fs` read in the task (the copy alone), and against nginx when it runs.
/// The tokio figure counts its blocking pool, where `tokio::fs` reads run, with the runtime
/// thread. nginx is asked for `/big.bin`: its HTTP/0.9 reply is the file, whose first line is the
/// `OK` line the generator expects (see [`support::nginx`]).
///
/// With `shared`, the generator is not pinned and runs a thread per core, so it competes with the
/// server for core 0: the CPU a server saves is then CPU the clients can use, which is how a
/// small machine serving its own clients feels zero-copy.
fn download(
    options: &Options,
    servers: &Servers,
    parallel: usize,
    shared: bool,
    results: &mut Results,
) {
    let load_of = |target, name: String| {
        let load = options.load(Scenario::Download { name }, target, parallel);
        if shared {
            let cores = thread::available_parallelism().map_or(1, |n| n.get());
            Load {
                pin: false,
                threads: cores.min(parallel),
                ..load
            }
        } else {
            load
        }
    };
    let load = |target| load_of(target, DOWNLOAD_NAME.to_string());
    let ours = load(servers.readyloop.addresses.files.expect("files is on"));
    let tokio_fs = load(servers.tokio.files);
    let std_fs = load(servers.tokio.files_std);
    let nginx = servers
        .nginx
        .as_ref()
        .map(|nginx| load_of(nginx.addr, format!("/{DOWNLOAD_NAME}")));
    let (readyloop_spent, tokio_spent, nginx_spent) = (
        || servers.readyloop_spent(),
        || servers.tokio_spent(),
        || servers.nginx_spent(),
    );
    let mut targets: Vec<(&Load, Meter<'_>)> = vec![
        (&ours, &readyloop_spent),
        (&tokio_fs, &tokio_spent),
        (&std_fs, &tokio_spent),
    ];
    targets.extend(nginx.iter().map(|load| (load, &nginx_spent as Meter<'_>)));
    let samples = alternate(options, &targets);
    let (name, placement) = if shared {
        (
            format!("download {parallel} shared"),
            "load generator unpinned on every core",
        )
    } else {
        (format!("download {parallel}"), "load generator pinned")
    };
    let title = format!(
        "download of a {} MiB file, {parallel} in parallel, {placement}",
        options.file_len >> 20
    );
    let table = Table::new(&name, title);
    let peers = [(1, "tokio::fs"), (2, "std::fs in task")];
    let figures: [(&str, &str, Better, Figure); 2] = [
        ("MB/s", "MB/s", Better::Higher, |s| s.megabytes_per_second),
        ("server CPU / MB", "us", Better::Lower, |s| s.cpu_us_per_mb),
    ];
    for (metric, unit, better, figure) in figures {
        for (peer, peer_name) in peers {
            results.add(table.sampled(
                format!("{metric} vs {peer_name}"),
                unit,
                better,
                figure,
                &samples[0],
                Some(&samples[peer]),
            ));
        }
    }
    results.add(table.sampled(
        "system calls / MB",
        "calls",
        Better::Lower,
        |s| s.calls(None, Per::Megabyte),
        &samples[0],
        None,
    ));
    results.print_last(5);
    print_calls(&samples[0], Per::Megabyte, "MB");
    if nginx.is_some() {
        let table = table.against("nginx");
        for (metric, unit, better, figure) in figures {
            results.add(table.sampled(
                format!("{metric} vs nginx"),
                unit,
                better,
                figure,
                &samples[0],
                Some(&samples[3]),
            ));
        }
        results.print_last(2);
    }
}

/// The chat relay against the tokio peer's, which receives one datagram and sends it to every
/// member before it receives the next.
fn chat(options: &Options, servers: &Servers, members: usize, results: &mut Results) {
    let load = |target| Load {
        threads: 1,
        ..options.load(
            Scenario::Chat {
                senders: 1,
                members,
                size: CHAT_SIZE,
                members_at: Vec::new(),
            },
            target,
            1,
        )
    };
    let ours = load(servers.readyloop.addresses.chat.expect("chat is on"));
    let theirs = load(servers.tokio.chat);
    let samples = alternate(
        options,
        &[
            (&ours, &|| servers.readyloop_spent()),
            (&theirs, &|| servers.tokio_spent()),
        ],
    );
    let table = Table::new(
        &format!("chat {members}"),
        format!(
            "chat relay, 1 sender, {members} other members, {CHAT_SIZE}-byte messages, rate limit off"
        ),
    );
    results.add(
        table.pair(&samples, "deliveries/s", "dgram/s", Better::Higher, |s| {
            s.per_second
        }),
    );
    results.add(table.pair(&samples, "p99", "us", Better::Lower, |s| s.p99_us));
    results.add(table.pair(
        &samples,
        "server CPU / delivery",
        "ns",
        Better::Lower,
        |s| s.cpu_ns,
    ));
    results.add(table.pair(&samples, "delivered", "%", Better::Higher, |s| {
        s.delivery_ratio * 100.0
    }));
    results.add(table.sampled(
        "system calls / delivery",
        "calls",
        Better::Lower,
        |s| s.calls(None, Per::Operation),
        &samples[0],
        None,
    ));
    // The closed loop's latency is mostly its own window waiting in line. An open loop at one
    // rate for both, below what the slower one reached, compares the time a message spends in
    // each relay under the same offered load.
    let messages_per_second =
        |samples: &[Sample]| median_of(samples, |s| s.per_second) / (members as f64 + 1.0);
    let rate = (OPEN_LOAD * messages_per_second(&samples[0]).min(messages_per_second(&samples[1])))
        .round();
    let open = |load: Load| Load {
        mode: Mode::Open {
            rate,
            max_inflight: CHAT_OPEN_INFLIGHT,
        },
        ..load
    };
    let (ours, theirs) = (open(ours), open(theirs));
    let open_samples = alternate(
        options,
        &[
            (&ours, &|| servers.readyloop_spent()),
            (&theirs, &|| servers.tokio_spent()),
        ],
    );
    results.add(
        table.pair(&open_samples, "open loop: p99", "us", Better::Lower, |s| {
            s.p99_us
        }),
    );
    results.add(table.pair(
        &open_samples,
        "open loop: delivered",
        "%",
        Better::Higher,
        |s| s.delivery_ratio * 100.0,
    ));
    results.print_last(7);
    println!(
        "  open loop: {rate} messages/s sent ({:.0}% of the slower server's closed-loop rate)",
        OPEN_LOAD * 100.0
    );
    print_calls(&samples[0], Per::Operation, "delivery");
}

/// Prints what readyloop's system calls per unit were, by kind, largest first (medians over the
/// rounds; kinds under 0.005 left out): the row above in parts, so a change names its call.
fn print_calls(samples: &[Sample], per: Per, unit: &str) {
    let mut kinds: Vec<(Call, f64)> = Call::ALL
        .iter()
        .map(|&call| (call, median_of(samples, |s| s.calls(Some(call), per))))
        .filter(|(_, made)| *made >= 0.005)
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(call, made)| format!("{} {}", call.name(), number(*made)))
        .collect();
    println!("  readyloop system calls per {unit}: {}", kinds.join(", "));
}

/// Resident memory per idle connection, readyloop's binary and the tokio peer each in a child
/// process of their own.
fn memory(results: &mut Results) {
    let mut readyloop = Command::new(env!("CARGO_BIN_EXE_readyloop"));
    readyloop.args([
        "--bind",
        "127.0.0.1",
        "--echo-port",
        "0",
        "--files-port",
        "0",
        "--chat-port",
        "0",
        "--admin-port",
        "0",
        "--max-conns",
        "50000",
        "-q",
    ]);
    let ours = idle_bytes_per_connection(readyloop, "readyloop");
    let mut tokio = Command::new(std::env::current_exe().expect("this benchmark's path"));
    tokio.env(PEER_ROLE_VAR, "1");
    let theirs = idle_bytes_per_connection(tokio, "tokio peer");
    let table = Table::new(
        "memory",
        format!("memory, {IDLE_CONNECTIONS} idle echo connections (each after one exchange)"),
    );
    results.add(table.row(
        "RSS / idle connection",
        "B",
        Better::Lower,
        ours,
        Some(theirs),
    ));
    results.print_last(1);
}

/// Kills and reaps a child server when dropped, whatever happens to the measurement.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, reads its start-up line, and measures the growth of its resident set when
/// [`IDLE_CONNECTIONS`] echo connections each exchange one message and then stay open.
fn idle_bytes_per_connection(mut command: Command, what: &str) -> f64 {
    let child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
    let mut guard = ChildGuard(child);
    let pid = guard.0.id();
    let stdout = guard.0.stdout.take().expect("a piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the start-up line");
    let echo: SocketAddr = line
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("echo="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no echo address in the {what}'s start-up line {line:?}"));

    let base_fds = open_descriptors(pid);
    let before = settled_rss(pid);
    let mut connections = Vec::with_capacity(IDLE_CONNECTIONS);
    let message = [b'm'; ECHO_SIZE];
    let mut reply = [0u8; ECHO_SIZE];
    for _ in 0..IDLE_CONNECTIONS {
        let mut stream = TcpStream::connect(echo).expect("connect for the memory measurement");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        stream.write_all(&message).expect("send one message");
        stream.read_exact(&mut reply).expect("its echo");
        connections.push(stream);
    }
    // Every connection has had its echo, so the server holds all of them; wait until its
    // descriptor table says so too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_descriptors(pid) < base_fds + IDLE_CONNECTIONS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let after = settled_rss(pid);
    drop(connections);
    let per_connection = (after as f64 - before as f64) / IDLE_CONNECTIONS as f64;
    println!(
        "  {what}: VmRSS {} KiB before, {} KiB with {IDLE_CONNECTIONS} idle connections",
        before / 1024,
        after / 1024
    );
    per_connection
}

/// The process's resident set in bytes, once two readings 200 ms apart agree (at most 3 s).
fn settled_rss(pid: u32) -> u64 {
    let mut last = vm_rss(pid);
    for _ in 0..15 {
        thread::sleep(Duration::from_millis(200));
        let now = vm_rss(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The child role: the tokio peer alone, until standard input closes (the parent died or is done).
fn serve_as_peer_child() {
    let root = std::env::temp_dir();
    let peer = start_tokio_peer(root, None);
    println!(
        "tokio-peer listening echo={} files={} chat={}",
        peer.echo, peer.files, peer.chat
    );
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// 5 000 echo connections have both ends in this process, and the memory measurement holds the
/// client ends of 10 000 (the child server holds the others, under the limit it inherits): the
/// soft limit (often 1 024) must go up to the hard one.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit and setrlimit read and write the one struct passed, which lives across
    // the calls.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!("cannot raise the descriptor limit to {}", limit.rlim_max);
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur < DESCRIPTORS_NEEDED
        {
            eprintln!(
                "the descriptor limit is {}; 5 000 connections and the memory measurement need \
                 {DESCRIPTORS_NEEDED} (raise the hard limit with `ulimit -Hn`)",
                limit.rlim_cur
            );
        }
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the days since 1970 (Howard Hinnant's `civil_from_days`).
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

// ---------------------------------------------------------------------------------------------
// Results: tables, targets, CSV, chart
// ---------------------------------------------------------------------------------------------

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One figure of one scenario, for readyloop and the server it is compared with.
#[derive(Debug, Clone)]
struct Row {
    /// Short scenario name, for the CSV and the chart.
    scenario: String,
    /// The table's title.
    title: String,
    metric: String,
    unit: &'static str,
    better: Better,
    readyloop: f64,
    /// The server compared with: `tokio`, or `nginx` for downloads.
    peer: &'static str,
    /// The peer's figure; `None` where readyloop's figure stands alone.
    other: Option<f64>,
    /// The larger of the two servers' (max − min) / median over the rounds: how far one round
    /// may stray, to judge a ratio by. `None` for a single measurement.
    spread: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.other.map(|other| self.readyloop / other)
    }
}

/// Builds the rows of one scenario's table.
struct Table {
    scenario: String,
    title: String,
    /// The server readyloop is compared with in this table.
    peer: &'static str,
}

impl Table {
    /// A table of readyloop against tokio.
    fn new(scenario: &str, title: String) -> Table {
        Table {
            scenario: scenario.to_string(),
            title,
            peer: "tokio",
        }
    }

    /// The same table against another server.
    fn against(self, peer: &'static str) -> Table {
        Table { peer, ..self }
    }

    fn row(
        &self,
        metric: impl Into<String>,
        unit: &'static str,
        better: Better,
        readyloop: f64,
        other: Option<f64>,
    ) -> Row {
        Row {
            scenario: self.scenario.clone(),
            title: self.title.clone(),
            metric: metric.into(),
            unit,
            better,
            readyloop,
            peer: self.peer,
            other,
            spread: None,
        }
    }

    /// A row of medians over rounds, with the spread of the rounds.
    fn sampled(
        &self,
        metric: impl Into<String>,
        unit: &'static str,
        better: Better,
        figure: Figure,
        readyloop: &[Sample],
        other: Option<&[Sample]>,
    ) -> Row {
        let spread = |samples: &[Sample]| {
            let values = samples.iter().map(figure);
            let (low, high) = values.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
            (high - low) / median_of(samples, figure)
        };
        Row {
            spread: Some(other.map_or(spread(readyloop), |o| spread(readyloop).max(spread(o)))),
            ..self.row(
                metric,
                unit,
                better,
                median_of(readyloop, figure),
                other.map(|o| median_of(o, figure)),
            )
        }
    }

    /// A row from the samples of readyloop (`samples[0]`) and the peer (`samples[1]`).
    fn pair(
        &self,
        samples: &[Vec<Sample>],
        metric: &'static str,
        unit: &'static str,
        better: Better,
        figure: Figure,
    ) -> Row {
        self.sampled(metric, unit, better, figure, &samples[0], Some(&samples[1]))
    }
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
}

impl Results {
    fn add(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Prints the last `n` rows, which belong to one scenario, as an aligned table.
    fn print_last(&self, n: usize) {
        let rows = &self.rows[self.rows.len() - n..];
        println!("\n{}", rows[0].title);
        let peer = rows[0].peer;
        println!(
            "{:<34} {:>15} {:>15} {:>16} {:>8}",
            "",
            "readyloop",
            peer,
            format!("readyloop/{peer}"),
            "spread"
        );
        for row in rows {
            let value = |v: f64| format!("{} {}", number(v), row.unit);
            println!(
                "{:<34} {:>15} {:>15} {:>16} {:>8}",
                row.metric,
                value(row.readyloop),
                row.other.map_or("-".into(), value),
                row.ratio().map_or("-".into(), |r| format!("{r:.2}x")),
                row.spread
                    .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            );
        }
    }

    fn find(&self, scenario: &str, metric: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
    }

    /// The targets, each with its figure and whether it was reached.
    fn print_targets(&self) {
        println!("\ntargets (ratios readyloop/peer in this run)");
        let check = |what: String, figure: Option<f64>, reached: &dyn Fn(f64) -> bool| match figure
        {
            Some(f) => println!(
                "  {:<54} {:>10}  {}",
                what,
                // Ratios with three decimals, so that 1.004 does not show as a failing 1.00.
                if f < 10.0 {
                    format!("{f:.3}")
                } else {
                    number(f)
                },
                if reached(f) { "reached" } else { "NOT reached" }
            ),
            None => println!("  {what:<54} {:>10}  not measured", "-"),
        };
        let ratio = |scenario: &str, metric: &str| self.find(scenario, metric)?.ratio();
        for connections in [50, 500, 5_000] {
            let scenario = format!("echo {connections}");
            check(
                format!("echo {connections}: CPU/request <= 0.90x"),
                ratio(&scenario, "server CPU / request"),
                &|r| r <= 0.90,
            );
            check(
                format!("echo {connections}: p99 no worse (<= 1.00x)"),
                ratio(&scenario, "p99"),
                &|r| r <= 1.0,
            );
            if let Some(row) = self.find(&scenario, CALLS_PER_REQUEST) {
                println!(
                    "  {:<54} {:>10}  (the floor: 2, and a share of epoll_wait)",
                    format!("echo {connections}: system calls per request"),
                    number(row.readyloop)
                );
            }
        }
        check(
            "connect churn: CPU/connection <= 0.85x".into(),
            ratio("connect churn", "server CPU / connection"),
            &|r| r <= 0.85,
        );
        let placements = DOWNLOAD_PARALLEL
            .iter()
            .flat_map(|p| [format!("download {p}"), format!("download {p} shared")]);
        for scenario in placements {
            let worst = ["MB/s vs tokio::fs", "MB/s vs std::fs in task"]
                .iter()
                .filter_map(|m| ratio(&scenario, m))
                .reduce(f64::min);
            check(
                format!("{scenario}: >= 1.6x the faster tokio copy"),
                worst,
                &|r| r >= 1.6,
            );
            check(
                format!("{scenario}: >= 1.1x nginx"),
                ratio(&scenario, "MB/s vs nginx"),
                &|r| r >= 1.1,
            );
        }
        check(
            "memory: <= 512 bytes per idle connection".into(),
            self.find("memory", "RSS / idle connection")
                .map(|r| r.readyloop),
            &|b| b <= 512.0,
        );
        for members in CHAT_MEMBERS {
            let scenario = format!("chat {members}");
            check(
                format!("chat {members}: p99 <= 1.1x (closed loop)"),
                ratio(&scenario, "p99"),
                &|r| r <= 1.1,
            );
            check(
                format!("chat {members}: p99 <= 1.1x (open loop, same rate)"),
                ratio(&scenario, "open loop: p99"),
                &|r| r <= 1.1,
            );
            if let Some(r) = ratio(&scenario, "deliveries/s") {
                println!(
                    "  {:<54} {:>10.3}  (no target against tokio: not lower than before)",
                    format!("chat {members}: deliveries/s"),
                    r
                );
            }
        }
    }

    fn write_csv(&self, path: &Path, header: &str) {
        let mut csv =
            format!("# {header}\nscenario,metric,peer,readyloop,other,ratio,unit,spread\n");
        for row in &self.rows {
            let optional = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
            let _ = writeln!(
                csv,
                "{},{},{},{:.4},{},{},{},{}",
                row.scenario,
                row.metric,
                row.peer,
                row.readyloop,
                optional(row.other),
                optional(row.ratio()),
                row.unit,
                optional(row.spread)
            );
        }
        std::fs::write(path, csv).expect("write the CSV");
    }

    /// Two panels of horizontal bars, readyloop/peer (tokio, or the server the metric names):
    /// costs (lower is better) above, throughput (higher is better) below, each with a line at
    /// 1.0, where the servers are equal.
    fn draw_svg(&self, path: &Path, caption: &str) {
        use plotters::prelude::*;

        let bars = |better: Better| -> Vec<(String, f64)> {
            self.rows
                .iter()
                .filter(|r| {
                    r.better == better
                        && ![
                            "p99",
                            "delivered",
                            "open loop: p99",
                            "open loop: delivered",
                            USER_METRIC,
                        ]
                        .contains(&r.metric.as_str())
                })
                .filter_map(|r| Some((format!("{}: {}", r.scenario, r.metric), r.ratio()?)))
                // The y axis counts upwards: reversed, the first row is drawn at the top.
                .rev()
                .collect()
        };
        let panels = [
            (
                "server CPU per operation and memory per idle connection, readyloop/peer (lower is better)",
                bars(Better::Lower),
            ),
            (
                "throughput, readyloop/peer (higher is better)",
                bars(Better::Higher),
            ),
        ];
        let height = 120 + 34 * panels.iter().map(|(_, b)| b.len() + 2).sum::<usize>() as u32;
        let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
        root.fill(&WHITE).expect("draw");
        let root = root
            .titled(caption, ("sans-serif", 16))
            .expect("draw the caption");
        let heights: Vec<u32> = panels
            .iter()
            .map(|(_, b)| 34 * (b.len() as u32 + 2))
            .collect();
        let (upper, lower) = root.split_vertically(heights[0] + 20);
        for ((title, bars), area) in panels.iter().zip([upper, lower]) {
            let top = bars.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.15;
            let mut chart = ChartBuilder::on(&area)
                .caption(*title, ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(340)
                .build_cartesian_2d(0.0..top, 0.0..bars.len() as f64)
                .expect("a chart");
            let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(WHITE)
                .x_labels(8)
                .y_labels(bars.len() * 2 + 1)
                .y_label_formatter(&|y| {
                    // Labels sit at the middle of each bar; other tick positions stay blank.
                    let i = (*y - 0.5).round();
                    if (*y - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_desc("readyloop / peer (tokio, unless the row names nginx)")
                .draw()
                .expect("the axes");
            chart
                .draw_series(bars.iter().enumerate().map(|(i, (_, ratio))| {
                    let y = i as f64;
                    Rectangle::new([(0.0, y + 0.2), (*ratio, y + 0.8)], BLUE.mix(0.6).filled())
                }))
                .expect("the bars");
            chart
                .draw_series(bars.iter().enumerate().map(|(i, (_, ratio))| {
                    Text::new(
                        format!("{ratio:.2}x"),
                        (*ratio + top * 0.01, i as f64 + 0.65),
                        ("sans-serif", 13),
                    )
                }))
                .expect("the bar labels");
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(1.0, 0.0), (1.0, bars.len() as f64)],
                    RED.stroke_width(2),
                )))
                .expect("the 1.0 line");
        }
        root.present().expect("write the SVG");
    }
}

/// A figure with three significant digits, thousands grouped with spaces.
fn number(value: f64) -> String {
    if value.abs() >= 1_000.0 {
        let mut digits = format!("{:.0}", value.abs().round());
        let mut grouped = String::new();
        while digits.len() > 3 {
            let tail = digits.split_off(digits.len() - 3);
            grouped = format!(" {tail}{grouped}");
        }
        let sign = if value < 0.0 { "-" } else { "" };
        format!("{sign}{digits}{grouped}")
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
