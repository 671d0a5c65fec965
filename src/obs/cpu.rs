//! What the worker costs, from the threads' own CPU clocks: CPU seconds per *thread role* (a
//! thread's name without its number: `partition-0` and `partition-2` are `partition`; every
//! librdkafka broker thread is `rdk:broker`), for `/metrics`, and records per CPU second over
//! the last interval, so an operator sees the cost per tweet at the rate they run (a drain's
//! figure says little about 1,000 tweets/s).
//!
//! Each thread's clock is read with `clock_gettime` on its per-thread CPU clock id (what
//! `pthread_getcpuclockid` returns, computed from the thread id, so librdkafka's threads are
//! read too): nanoseconds of user + system time, not `/proc`'s 10 ms ticks. Threads come and go
//! (a revoked partition's thread, an exactly-once lane's producer); a role's total keeps what
//! its ended threads had used when last sampled, so the counters never go down.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// CPU seconds per role since the process started, as counters that never decrease.
#[derive(Debug, Default)]
pub struct CpuAccount {
    state: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Per thread id: its role and CPU nanoseconds at the last sample.
    threads: HashMap<u32, (String, u64)>,
    /// Per role: nanoseconds of threads that have ended (or whose id was reused).
    departed: BTreeMap<String, u64>,
}

/// The role of a thread named `name` (see the module doc).
pub fn role(name: &str) -> String {
    if name.starts_with("rdk:broker") {
        return "rdk:broker".to_owned();
    }
    let trimmed = name
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches(['-', '_', ' ', '#']);
    if trimmed.is_empty() {
        name.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// CPU nanoseconds of thread `tid` of this process, from its own clock.
#[cfg(target_os = "linux")]
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED): the clock id glibc's pthread_getcpuclockid
    // computes. The kernel only answers it for threads of the calling process.
    let clock = (!(tid as libc::clockid_t) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id is an error return.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns(_: u32) -> Option<u64> {
    None
}

/// Every live thread of this process: (thread id, name).
fn threads() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, name.trim_end().to_owned()))
        })
        .collect()
}

impl CpuAccount {
    pub fn new() -> CpuAccount {
        CpuAccount::default()
    }

    /// CPU seconds per role since start (ended threads included), read now.
    pub fn sample(&self) -> BTreeMap<String, f64> {
        let now: Vec<(u32, String, u64)> = threads()
            .into_iter()
            .filter_map(|(tid, name)| Some((tid, role(&name), thread_cpu_ns(tid)?)))
            .collect();
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        seen.update(now)
    }
}

impl Seen {
    /// Takes a new reading of every live thread; returns the totals per role, in seconds.
    fn update(&mut self, now: Vec<(u32, String, u64)>) -> BTreeMap<String, f64> {
        let live: std::collections::HashSet<u32> = now.iter().map(|(t, _, _)| *t).collect();
        let gone: Vec<u32> = self
            .threads
            .keys()
            .filter(|t| !live.contains(t))
            .copied()
            .collect();
        for tid in gone {
            if let Some((role, ns)) = self.threads.remove(&tid) {
                *self.departed.entry(role).or_default() += ns;
            }
        }
        for (tid, role, ns) in now {
            let reused = self
                .threads
                .get(&tid)
                .is_some_and(|(r, last)| *r != role || ns < *last);
            if reused {
                if let Some((old_role, last)) = self.threads.remove(&tid) {
                    *self.departed.entry(old_role).or_default() += last;
                }
            }
            self.threads.insert(tid, (role, ns));
        }
        let mut totals: BTreeMap<String, u64> = self.departed.clone();
        for (role, ns) in self.threads.values() {
            *totals.entry(role.clone()).or_default() += ns;
        }
        totals
            .into_iter()
            .map(|(r, ns)| (r, ns as f64 / 1e9))
            .collect()
    }
}

/// Records per CPU second over the last interval: `records` and `cpu_s` are totals now, the
/// previous call's are kept. `None` until two readings exist, or when no CPU was used.
#[derive(Debug, Default)]
pub struct Efficiency {
    last: Option<(u64, f64)>,
}

impl Efficiency {
    pub fn update(&mut self, records: u64, cpu_s: f64) -> Option<f64> {
        let previous = self.last.replace((records, cpu_s));
        let (r0, c0) = previous?;
        let cpu = cpu_s - c0;
        (cpu > 0.0).then(|| records.saturating_sub(r0) as f64 / cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_drop_the_thread_number() {
        assert_eq!(role("partition-12"), "partition");
        assert_eq!(role("inference-0"), "inference");
        assert_eq!(role("rdk:broker1"), "rdk:broker");
        assert_eq!(role("rdk:broker-1"), "rdk:broker");
        assert_eq!(role("rdk:main"), "rdk:main");
        assert_eq!(role("deliveries"), "deliveries");
    }

    #[test]
    fn totals_never_go_down_when_threads_end_or_ids_are_reused() {
        let mut s = Seen::default();
        let t = s.update(vec![
            (1, "partition".into(), 100_000_000),
            (2, "partition".into(), 50_000_000),
            (3, "inference".into(), 1_000_000_000),
        ]);
        assert_eq!(t["partition"], 0.15);
        assert_eq!(t["inference"], 1.0);
        // Thread 2 ended; thread 3's id now belongs to a new partition thread.
        let t = s.update(vec![
            (1, "partition".into(), 200_000_000),
            (3, "partition".into(), 10_000_000),
        ]);
        assert!((t["partition"] - (0.2 + 0.05 + 0.01)).abs() < 1e-9, "{t:?}");
        assert_eq!(t["inference"], 1.0, "an ended thread's time stays counted");
    }

    #[test]
    fn this_process_has_threads_with_clocks() {
        let worker = std::thread::Builder::new()
            .name("busy-7".into())
            .spawn(|| {
                let t0 = std::time::Instant::now();
                let mut x = 0u64;
                while t0.elapsed() < std::time::Duration::from_millis(30) {
                    x = x.wrapping_add(1);
                }
                std::hint::black_box(x);
                std::thread::park_timeout(std::time::Duration::from_secs(5));
            })
            .expect("thread");
        std::thread::sleep(std::time::Duration::from_millis(60));
        let totals = CpuAccount::new().sample();
        worker.thread().unpark();
        worker.join().expect("join");
        let busy = totals.get("busy").copied().unwrap_or(0.0);
        assert!(busy > 0.005, "the busy thread's clock: {totals:?}");
    }

    #[test]
    fn efficiency_is_records_per_cpu_second_between_readings() {
        let mut e = Efficiency::default();
        assert_eq!(e.update(100, 1.0), None);
        assert_eq!(e.update(1_100, 1.5), Some(2_000.0));
        assert_eq!(e.update(1_100, 1.5), None, "no CPU used: no figure");
    }
}
