//! `--pid`: what the process under test spent on a run, from Linux's `/proc`: CPU time (user +
//! system) and context switches, in total and per *thread role* (a thread's name without its
//! trailing number: `partition-0` and `partition-2` are the role `partition`, every librdkafka
//! broker thread is `rdk:broker`). Divided by the tweets of the run, that is the cost per tweet
//! at the rate the run was made at — which a drain's figure says little about.
//!
//! Threads that end during a run (a partition revoked, a client closed) take their time with
//! them: a sample only sees the threads alive when it is taken. Runs are short and the process
//! under test is steady, so this rarely matters; the per-role table counts threads so it shows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// One thread's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
struct ThreadSample {
    role: String,
    /// User + system CPU time, in clock ticks.
    ticks: u64,
    voluntary: u64,
    involuntary: u64,
}

/// Every thread of a process at one moment, by thread id.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    threads: BTreeMap<u32, ThreadSample>,
}

/// What one role's threads spent between two samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoleCost {
    pub role: String,
    /// Threads of this role seen in the later sample.
    pub threads: usize,
    pub cpu_s: f64,
    pub cpu_us_per_tweet: f64,
    /// Voluntary context switches (the thread blocked: one per wake-up) per tweet.
    pub wakeups_per_tweet: f64,
    /// Involuntary ones (preempted) per tweet.
    pub preemptions_per_tweet: f64,
}

/// What the process spent between two samples, per tweet of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessCost {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_us_per_tweet: f64,
    pub wakeups_per_tweet: f64,
    pub preemptions_per_tweet: f64,
    /// Busiest role first.
    pub roles: Vec<RoleCost>,
}

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`): 100 on every Linux that
/// loadgen runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The role of a thread named `name`: without trailing digits and the separator before them.
pub fn role(name: &str) -> String {
    if name.starts_with("rdk:broker") {
        return "rdk:broker".to_owned();
    }
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.trim_end_matches(['-', '_', ' ', '#']);
    if trimmed.is_empty() {
        name.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// User + system ticks from a `stat` line (the name in parentheses may hold spaces).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 0; utime and stime are fields 11 and 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks))
}

/// (voluntary, involuntary) context switches from a `status` file.
fn parse_switches(status: &str) -> (u64, u64) {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

impl Sample {
    /// Reads every thread of `pid`. Fails if the process does not exist (any more).
    pub fn take(pid: u32) -> Result<Sample> {
        let dir = format!("/proc/{pid}/task");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(Path::new(&dir), e))?;
        let mut threads = BTreeMap::new();
        for entry in entries.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read: skip it.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((name, ticks)) = parse_stat(&stat) else {
                continue;
            };
            let (voluntary, involuntary) = std::fs::read_to_string(entry.path().join("status"))
                .map(|s| parse_switches(&s))
                .unwrap_or_default();
            threads.insert(
                tid,
                ThreadSample {
                    role: role(&name),
                    ticks,
                    voluntary,
                    involuntary,
                },
            );
        }
        Ok(Sample { threads })
    }

    /// What was spent from `self` to `later`, per tweet of `tweets`. A thread new in `later`
    /// counts from zero (it started during the run).
    pub fn cost_until(&self, later: &Sample, pid: u32, tweets: u64) -> ProcessCost {
        let per = |v: f64| if tweets == 0 { 0.0 } else { v / tweets as f64 };
        let mut roles: BTreeMap<&str, (usize, u64, u64, u64)> = BTreeMap::new();
        for (tid, now) in &later.threads {
            let before = self.threads.get(tid).cloned().unwrap_or_default();
            let r = roles.entry(now.role.as_str()).or_default();
            r.0 += 1;
            r.1 += now.ticks.saturating_sub(before.ticks);
            r.2 += now.voluntary.saturating_sub(before.voluntary);
            r.3 += now.involuntary.saturating_sub(before.involuntary);
        }
        let mut out: Vec<RoleCost> = roles
            .into_iter()
            .map(|(role, (threads, ticks, vol, invol))| {
                let cpu_s = ticks as f64 / TICKS_PER_SECOND;
                RoleCost {
                    role: role.to_owned(),
                    threads,
                    cpu_s,
                    cpu_us_per_tweet: per(cpu_s * 1e6),
                    wakeups_per_tweet: per(vol as f64),
                    preemptions_per_tweet: per(invol as f64),
                }
            })
            .collect();
        out.sort_by(|a, b| b.cpu_s.total_cmp(&a.cpu_s).then(a.role.cmp(&b.role)));
        let cpu_s: f64 = out.iter().map(|r| r.cpu_s).sum();
        let sum = |f: fn(&RoleCost) -> f64| out.iter().map(f).sum::<f64>();
        ProcessCost {
            pid,
            cpu_s,
            cpu_us_per_tweet: per(cpu_s * 1e6),
            wakeups_per_tweet: sum(|r| r.wakeups_per_tweet),
            preemptions_per_tweet: sum(|r| r.preemptions_per_tweet),
            roles: out,
        }
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
        assert_eq!(role("batcher"), "batcher");
        assert_eq!(role("python3"), "python");
        assert_eq!(role("42"), "42");
    }

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "4242 (producer pollin) S 1 2 3 4 5 6 7 8 9 10 123 45 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("producer pollin".to_owned(), 168)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn switches_come_from_the_status_file() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(status), (17, 3));
        assert_eq!(parse_switches(""), (0, 0));
    }

    fn thread(role: &str, ticks: u64, voluntary: u64) -> ThreadSample {
        ThreadSample {
            role: role.to_owned(),
            ticks,
            voluntary,
            involuntary: 1,
        }
    }

    #[test]
    fn the_cost_of_a_run_is_per_role_and_per_tweet_and_new_threads_count_from_zero() {
        let before = Sample {
            threads: BTreeMap::from([
                (1, thread("partition", 100, 10)),
                (2, thread("partition", 50, 10)),
                (3, thread("inference", 10, 0)),
            ]),
        };
        let after = Sample {
            threads: BTreeMap::from([
                (1, thread("partition", 150, 30)),
                (2, thread("partition", 70, 20)),
                (3, thread("inference", 210, 500)),
                // Started during the run.
                (4, thread("rdk:broker", 5, 4)),
            ]),
        };
        let cost = before.cost_until(&after, 7, 1_000);
        assert_eq!(cost.pid, 7);
        assert!((cost.cpu_s - 2.75).abs() < 1e-9, "{cost:?}");
        assert!((cost.cpu_us_per_tweet - 2_750.0).abs() < 1e-6, "{cost:?}");
        let names: Vec<&str> = cost.roles.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(names, ["inference", "partition", "rdk:broker"]);
        let partition = &cost.roles[1];
        assert_eq!(partition.threads, 2);
        assert!((partition.cpu_s - 0.7).abs() < 1e-9);
        assert!((partition.wakeups_per_tweet - 0.03).abs() < 1e-9);
        assert!((cost.wakeups_per_tweet - (0.03 + 0.5 + 0.004)).abs() < 1e-9);
        // A thread seen before and after with the same counters costs nothing.
        assert_eq!(before.cost_until(&before, 7, 10).cpu_s, 0.0);
        // No tweets: no division by zero.
        assert_eq!(before.cost_until(&after, 7, 0).cpu_us_per_tweet, 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = Sample::take(std::process::id()).expect("own /proc");
        assert!(!s.threads.is_empty());
        assert!(Sample::take(u32::MAX).is_err());
    }
}
