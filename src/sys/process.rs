//! The process's own figures, as Prometheus's standard `process_*` metrics report them: resident
//! memory, open and maximum file descriptors, CPU time and start time.
//!
//! On Linux they come from `/proc/self` (and `/proc/stat` for the boot time), read when asked, so
//! the loop pays nothing for them between scrapes. Each figure is read on its own: a file that
//! cannot be read or parsed leaves that figure absent (`None`), never an error or a panic, and
//! elsewhere than Linux only the descriptor limit is known.
//!
//! Counting open descriptors lists `/proc/self/fd`, one entry per descriptor, and the kernel builds
//! each entry: about a microsecond apiece, so 10 ms of the loop's time with 10 000 connections.
//! [`count_open_fds`] is therefore separate, for the caller to ask only when that is cheap (see
//! `event_loop/view.rs`).

use std::fs;

/// The figures of one read. `None` where the system would not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    /// Resident set size, in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// File descriptors open now (the one used to count them included).
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors (`RLIMIT_NOFILE`): where `EMFILE` begins.
    pub max_fds: Option<u64>,
    /// User and system CPU time used so far, in seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl Process {
    /// Reads every figure now.
    pub fn read() -> Process {
        Process {
            open_fds: count_open_fds(),
            ..Process::read_without_fds()
        }
    }

    /// Reads every figure but the open descriptors, whose count can be costly (see
    /// [`count_open_fds`]).
    pub fn read_without_fds() -> Process {
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| Stat::parse(&text));
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let ticks = sysconf(libc::_SC_CLK_TCK);
        let page = sysconf(libc::_SC_PAGESIZE);
        Process {
            resident_memory_bytes: stat.zip(page).map(|(s, page)| s.rss_pages * page),
            open_fds: None,
            max_fds: max_fds(),
            cpu_seconds: stat
                .zip(ticks)
                .map(|(s, ticks)| (s.utime + s.stime) as f64 / ticks as f64),
            start_time_seconds: (stat.zip(ticks).zip(boot_time))
                .map(|((s, ticks), boot)| boot as f64 + s.start_ticks as f64 / ticks as f64),
        }
    }
}

/// Descriptors open now (the one used to count them included), by listing `/proc/self/fd`.
pub fn count_open_fds() -> Option<u64> {
    fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64)
}

/// The fields of `/proc/self/stat` the figures need (proc(5) numbers them from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Field 14: CPU time in user mode, in clock ticks.
    utime: u64,
    /// Field 15: CPU time in kernel mode, in clock ticks.
    stime: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    start_ticks: u64,
    /// Field 24: resident set size, in pages.
    rss_pages: u64,
}

impl Stat {
    /// Parses the one line of `/proc/self/stat`.
    ///
    /// Field 2 is the command name in parentheses, and the name itself may hold spaces and `)`;
    /// so the fields are counted from the *last* `)`, after which field 3 comes.
    fn parse(line: &str) -> Option<Stat> {
        let (_, rest) = line.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            rss_pages: field(24)?,
        })
    }
}

/// The boot time from `/proc/stat`'s `btime` line, in seconds since the Unix epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A positive `sysconf` value, or `None`.
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads the configuration value it is asked for.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited or unreadable.
fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid `rlimit` for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line's shape, with a command name built to fool a parser that splits on spaces or
    /// on the first `)`.
    const STAT: &str = "4242 (ready ) (loop) S 1 4242 4242 0 -1 4194560 310 0 0 0 \
                        150 25 0 0 20 0 1 0 987654 10485760 321 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = Stat::parse(STAT).expect("parses");
        assert_eq!(
            stat,
            Stat {
                utime: 150,
                stime: 25,
                start_ticks: 987654,
                rss_pages: 321,
            }
        );
    }

    #[test]
    fn a_short_or_garbled_stat_line_is_absent_not_a_panic() {
        assert_eq!(Stat::parse(""), None);
        assert_eq!(Stat::parse("4242 (readyloop) S 1 2 3"), None);
        assert_eq!(Stat::parse(&STAT.replace("150", "x")), None);
    }

    #[test]
    fn the_boot_time_is_the_btime_line() {
        let proc_stat = "cpu  1 2 3\nintr 5\nbtime 1764600000\nprocesses 9\n";
        assert_eq!(boot_time(proc_stat), Some(1764600000));
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
        assert_eq!(boot_time("btime soon\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_every_figure_and_started_before_now() {
        let process = Process::read();
        assert!(process.resident_memory_bytes.is_some_and(|b| b > 0));
        assert!(process.open_fds.is_some_and(|n| n >= 3), "stdio at least");
        assert!(process.cpu_seconds.is_some_and(|s| s >= 0.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = process.start_time_seconds.expect("a start time");
        // Boot time and start ticks are whole seconds and ticks: allow a second of rounding.
        assert!(started <= now + 1.0, "started {started}, now {now}");
        assert!(started > now - 24.0 * 3600.0, "started a day ago?");
    }
}
