//! One measured run: a collector and an open-loop sender running concurrently, a status line
//! per second, and the grace period for late predictions. Also the readiness probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::Message;

use crate::cli::Rate;
use crate::collector::{CollectStats, Collector};
use crate::error::{Error, Result};
use crate::kafka::Connection;
use crate::proc::{ProcessCost, Sample};
use crate::producer::{SendStats, Sender};
use crate::schedule::{Clock, Schedule};
use crate::track::{lock, new_histogram, KeyCodec, Snapshot, Tracker};

/// How often the monitor checks whether the run is over.
const TICK: Duration = Duration::from_millis(50);
/// Interval of the status lines.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Interval of readiness probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Everything a run needs that does not change between runs.
pub struct Runner<'a> {
    pub sender: &'a Sender,
    pub conn: &'a Connection,
    pub output_topic: &'a str,
    pub grace: Duration,
    /// Bound on broker round trips (metadata, offsets).
    pub timeout: Duration,
    /// Print status lines on stderr.
    pub progress: bool,
    /// `--pid`: the process under test, whose CPU time and context switches each run reports.
    pub measure: Option<u32>,
}

/// The result of one run. Counts are of ids; latencies in µs.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_id: String,
    pub rate: Rate,
    pub duration: Duration,
    /// From t0 to the last send, at least `duration`.
    pub send_window: Duration,
    /// From t0 to the last matched prediction, at least `send_window`.
    pub predict_window: Duration,
    /// Ids handed to the producer (registered with the tracker).
    pub sent: u64,
    /// Ids whose prediction arrived within the grace period.
    pub predicted: u64,
    /// Sent ids without a prediction by the end of the grace period (includes `late`).
    pub lost: u64,
    /// Lost ids whose prediction did arrive, after the grace period.
    pub late: u64,
    /// Extra predictions for ids that already had one.
    pub duplicates: u64,
    /// Predictions whose key is not an id of this run.
    pub unknown: u64,
    /// Predictions of this run whose payload is not `{"value":[numbers]}`.
    pub malformed: u64,
    /// Records the producer refused or failed to deliver.
    pub send_errors: u64,
    /// Scheduled sends never made (loadgen could not keep up).
    pub unsent: u64,
    /// Records the consumer delivered twice (same partition and offset), skipped.
    pub redelivered: u64,
    pub consumer_errors: u64,
    /// Worst lateness of a send against its schedule.
    pub max_send_lag: Duration,
    /// End-to-end latencies (µs), from intended send time to arrival.
    pub latency: Histogram<u64>,
    /// `--pid`: what the process under test spent from the first send to the end of the run.
    pub cost: Option<ProcessCost>,
}

impl Default for RunOutcome {
    fn default() -> Self {
        RunOutcome {
            run_id: String::new(),
            rate: Rate::Max,
            duration: Duration::ZERO,
            send_window: Duration::ZERO,
            predict_window: Duration::ZERO,
            sent: 0,
            predicted: 0,
            lost: 0,
            late: 0,
            duplicates: 0,
            unknown: 0,
            malformed: 0,
            send_errors: 0,
            unsent: 0,
            redelivered: 0,
            consumer_errors: 0,
            max_send_lag: Duration::ZERO,
            latency: new_histogram(),
            cost: None,
        }
    }
}

impl RunOutcome {
    /// Achieved send rate (ids/s).
    pub fn send_rate(&self) -> f64 {
        per_sec(self.sent, self.send_window)
    }

    /// Achieved prediction rate (predictions of this run/s).
    pub fn prediction_rate(&self) -> f64 {
        per_sec(self.predicted, self.predict_window)
    }
}

fn per_sec(n: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        n as f64 / window.as_secs_f64()
    }
}

impl Runner<'_> {
    /// Sends probes (keys `<run-id>-warmup-<n>`, one per second) until a prediction for any
    /// of them arrives, proving the worker is consuming. Returns how long that took.
    pub fn wait_ready(&self, run_id: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let group = format!("loadgen-{run_id}-warmup");
        let collector = Collector::new(self.conn, self.output_topic, &group, self.timeout)?;
        let codec = KeyCodec::new(&format!("{run_id}-warmup"));
        let clock = Clock::new();
        let mut next_probe = start;
        let mut n = 0;
        while start.elapsed() < timeout {
            if Instant::now() >= next_probe {
                self.sender.send_probe(&codec.key(n), &clock)?;
                n += 1;
                next_probe += PROBE_EVERY;
            }
            self.sender.poll(Duration::ZERO);
            match collector.poll(Duration::from_millis(100), |_, msg| {
                codec.seq(msg.key()).is_some()
            }) {
                Ok(Some(true)) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(e) => collector.warn(|| format!("consume: {e}")),
            }
        }
        Err(Error::Broker(format!(
            "no prediction for {n} probe tweet(s) within {}: is the worker running, and \
             reading the input topic / writing {}? (--wait-ready 0s skips this check)",
            humantime::format_duration(timeout),
            self.output_topic
        )))
    }

    /// One run at `rate` for `duration`, ids `<run_id>-<seq>`.
    pub fn run(&self, run_id: &str, rate: Rate, duration: Duration) -> Result<RunOutcome> {
        let schedule = match rate {
            Rate::PerSec(rate) => Schedule::Paced { rate, duration },
            Rate::Max => Schedule::Max { duration },
        };
        let collector = Collector::new(
            self.conn,
            self.output_topic,
            &format!("loadgen-{run_id}"),
            self.timeout,
        )?;
        let codec = KeyCodec::new(run_id);
        let clock = Clock::new();
        let tracker = Mutex::new(Tracker::new());
        let stop = AtomicBool::new(false);
        let failures_before = self.sender.delivery_failures();
        if self.progress {
            eprintln!(
                "loadgen: run {run_id}: {rate} for {}",
                humantime::format_duration(duration)
            );
        }

        let measured_from = self.measure.map(Sample::take).transpose()?;
        let t0 = Instant::now();
        let hard_stop = t0 + duration + self.grace;
        let (sent, collected) = std::thread::scope(|s| {
            let collecting = s.spawn(|| collector.collect(&clock, &codec, &tracker, &stop));
            let sending = s.spawn(|| {
                let stats = self
                    .sender
                    .run(&schedule, t0, hard_stop, &clock, &codec, &tracker);
                // The grace period starts at the last send; flushing is part of it.
                lock(&tracker).set_deadline(clock.at(stats.last_send + self.grace));
                if let Err(e) = self.sender.flush(self.grace) {
                    eprintln!("loadgen: run {run_id}: flush: {e}");
                }
                stats
            });
            self.monitor(run_id, t0, &clock, &tracker, || sending.is_finished());
            stop.store(true, Ordering::Relaxed);
            let sent = sending.join();
            let collected = collecting.join();
            (sent, collected)
        });
        let sent: SendStats =
            sent.map_err(|_| Error::Broker("the sender thread panicked".into()))?;
        let collected: CollectStats =
            collected.map_err(|_| Error::Broker("the collector thread panicked".into()))?;

        let tracker = tracker
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every prediction is in (or the grace period is over): what the process spent since
        // the first send is what this run's tweets cost it.
        let cost = match (self.measure, measured_from) {
            (Some(pid), Some(from)) => {
                let to = Sample::take(pid).map_err(|e| {
                    Error::Broker(format!("the process under test (--pid {pid}) is gone: {e}"))
                })?;
                Some(from.cost_until(&to, pid, tracker.sent()))
            }
            _ => None,
        };
        let send_window = sent.last_send.duration_since(t0).max(duration);
        let predict_window = tracker
            .last_arrival_us()
            .map(|t| Duration::from_micros(t.saturating_sub(clock.at(t0))))
            .unwrap_or_default()
            .max(send_window);
        Ok(RunOutcome {
            run_id: run_id.to_owned(),
            rate,
            duration,
            send_window,
            predict_window,
            sent: tracker.sent(),
            predicted: tracker.matched(),
            lost: tracker.lost(),
            late: tracker.late(),
            duplicates: tracker.duplicates(),
            unknown: tracker.unknown(),
            malformed: collected.malformed,
            send_errors: sent.enqueue_errors
                + self
                    .sender
                    .delivery_failures()
                    .saturating_sub(failures_before),
            unsent: sent.unsent,
            redelivered: collected.redelivered,
            consumer_errors: collected.errors,
            max_send_lag: sent.max_lag,
            latency: tracker.latency().clone(),
            cost,
        })
    }

    /// Returns when the sender is done and every prediction is in or the grace period is
    /// over; prints a status line per second meanwhile.
    fn monitor(
        &self,
        run_id: &str,
        t0: Instant,
        clock: &Clock,
        tracker: &Mutex<Tracker>,
        sender_done: impl Fn() -> bool,
    ) {
        let mut next_status = t0 + STATUS_EVERY;
        loop {
            std::thread::sleep(TICK);
            let over = sender_done() && {
                let t = lock(tracker);
                // No deadline after a finished sender means it panicked: stop too.
                t.in_flight() == 0 || t.deadline_us().is_none_or(|d| clock.now_us() > d)
            };
            if self.progress && (over || Instant::now() >= next_status) {
                let snap = lock(tracker).snapshot();
                eprintln!("{}", status_line(run_id, t0.elapsed(), &snap));
                next_status += STATUS_EVERY;
            }
            if over {
                return;
            }
        }
    }
}

/// `loadgen: r1  3.0s  sent 900  predicted 897  in flight 3  p99 4.21 ms (last 1 s), 5.02 ms (all)`
pub fn status_line(run_id: &str, elapsed: Duration, s: &Snapshot) -> String {
    let ms = |v: Option<u64>| {
        v.map_or_else(|| "-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3))
    };
    format!(
        "loadgen: {run_id} {:>6.1}s  sent {}  predicted {}  in flight {}{}  p99 {} (last 1 s), {} (all)",
        elapsed.as_secs_f64(),
        s.sent,
        s.matched,
        s.in_flight,
        if s.duplicates > 0 { format!("  duplicates {}", s.duplicates) } else { String::new() },
        ms(s.interval_p99_us),
        ms(s.p99_us),
    )
}
