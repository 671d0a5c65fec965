//! Processes by pid, checked against their start time: with pid_max often 32768 a recorded pid
//! alone may name another process later, so every pid file holds "PID STARTTIME" and a pid is
//! acted on only while /proc says it still is that process.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// What /proc/PID/stat says about a live (not zombie) process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    /// Start time in clock ticks since boot (field 22).
    pub start: u64,
    /// Stopped by a signal (SIGSTOP): state `T`.
    pub stopped: bool,
}

/// The process's start time and state, or None if it does not exist or is a zombie.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses /proc/PID/stat (the command name, field 2, may contain spaces and parentheses).
pub fn parse_stat(stat: &str) -> Option<ProcInfo> {
    let rest = &stat[stat.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // fields[0] is field 3 (state): field 22 (starttime) is fields[19].
    let start = fields.get(19)?.parse().ok()?;
    Some(ProcInfo {
        start,
        stopped: state == "T",
    })
}

/// The process's start time, or None if it does not exist (or is a zombie).
pub fn proc_start(pid: u32) -> Option<u64> {
    proc_info(pid).map(|i| i.start)
}

/// The process's command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(s.join(" "))
}

/// PID is alive, started at `start`, and its command line contains `needle`.
pub fn proc_matches(pid: u32, start: u64, needle: &str) -> bool {
    proc_start(pid) == Some(start) && cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// Reads a pid file ("PID STARTTIME").
pub fn read_pid_file(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    Some((pid, start))
}

/// Sends `sig` to `pid`; false if it could not be sent (e.g. the process is gone).
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid only sends a signal; it touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether the process that started at `start` is still there.
pub fn same_process(pid: u32, start: u64) -> bool {
    proc_start(pid) == Some(start)
}

/// Waits up to `timeout` until the process (pid, start) is gone; true if it is.
pub fn wait_gone(pid: u32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !same_process(pid, start) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to each process (and SIGCONT, so a paused one handles it), up to `timeout` for
/// them to exit, then SIGKILL. Returns false if any needed SIGKILL; `say` hears about those.
pub fn terminate(pids: &[u32], timeout: Duration, say: &dyn Fn(&str)) -> bool {
    let starts: Vec<(u32, Option<u64>)> = pids.iter().map(|p| (*p, proc_start(*p))).collect();
    for (pid, start) in &starts {
        if start.is_some() {
            signal(*pid, libc::SIGTERM);
            signal(*pid, libc::SIGCONT);
        }
    }
    let deadline = Instant::now() + timeout;
    for (pid, start) in &starts {
        if let Some(s) = start {
            wait_gone(*pid, *s, deadline.saturating_duration_since(Instant::now()));
        }
    }
    let mut clean = true;
    for (pid, start) in &starts {
        if let Some(s) = start {
            if same_process(*pid, *s) {
                say(&format!(
                    "pid {pid} still running {}s after SIGTERM; sending SIGKILL",
                    timeout.as_secs()
                ));
                signal(*pid, libc::SIGKILL);
                clean = false;
            }
        }
    }
    for (pid, start) in &starts {
        if let Some(s) = start {
            wait_gone(*pid, *s, Duration::from_secs(10));
        }
    }
    clean
}

// ---- interruption (the CLI's SIGINT/SIGTERM/SIGHUP) ------------------------------------------

static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of ending the process, so that a long
/// wait (a start) notices, stops what it started and returns [`crate::Error::Interrupted`].
/// For the binary; a library user that wants the same calls it once.
pub fn install_interrupt_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The signal that interrupted this process, if any (see [`install_interrupt_handlers`]).
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        let stat = "4242 (java (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 30 0 123456 999 10";
        assert_eq!(
            parse_stat(stat),
            Some(ProcInfo {
                start: 123456,
                stopped: false
            })
        );
        let stopped = stat.replacen(") S ", ") T ", 1);
        assert!(parse_stat(&stopped).is_some_and(|i| i.stopped));
        let zombie = stat.replacen(") S ", ") Z ", 1);
        assert_eq!(parse_stat(&zombie), None);
    }

    #[test]
    fn this_process_is_itself() {
        let me = std::process::id();
        let start = proc_start(me).expect("own start time");
        assert!(same_process(me, start));
        assert!(!same_process(me, start + 1));
        assert!(cmdline(me).is_some());
    }
}
