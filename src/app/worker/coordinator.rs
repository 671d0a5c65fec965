//! The main thread's loop while the worker runs: it polls the consumer (rebalances run here),
//! commits at-least-once progress, updates the gauges, logs a summary line — and `/healthz`
//! asks it (and the partitions) whether the worker is healthy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use super::pipeline::Pipeline;
use super::WorkerConfig;
use crate::app::shutdown::Shutdown;
use crate::kafka::source::{commit, SourceConsumer};
use crate::kafka::Guarantee;
use crate::obs::http::HealthCheck;
use crate::obs::metrics::Metrics;

/// What the loop and the health check share.
pub struct Liveness {
    started: Instant,
    /// Seconds since start at the loop's last turn.
    heartbeat: AtomicU64,
    /// The worker is winding down (health says so).
    stopping: AtomicBool,
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness {
            started: Instant::now(),
            heartbeat: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Runs until a stop is requested (a signal, or something fatal).
pub fn run(
    cfg: &WorkerConfig,
    consumer: &SourceConsumer,
    pipeline: &Pipeline,
    metrics: &Metrics,
    shutdown: &Shutdown,
    live: &Liveness,
) {
    let mut last_commit = Instant::now();
    let mut last_log = Instant::now();
    while !shutdown.is_requested() {
        live.heartbeat
            .store(live.started.elapsed().as_secs(), Ordering::Relaxed);
        match consumer.poll(Duration::from_millis(100)) {
            // Every assigned partition is read on its own queue, split off before assignment;
            // a record here would be read outside its partition's order.
            Some(Ok(msg)) => shutdown.fail(format!(
                "a record of partition {} arrived outside its partition queue",
                rdkafka::Message::partition(&msg)
            )),
            Some(Err(e)) => {
                metrics.client_errors_total.inc();
                tracing::warn!("consumer: {e}");
            }
            None => {}
        }
        if last_commit.elapsed() >= cfg.commit_interval {
            let lanes = consumer.context().lanes();
            if cfg.guarantee == Guarantee::AtLeastOnce {
                commit::commit_async(consumer, &lanes, metrics);
            }
            for lane in &lanes {
                metrics.set_in_flight(lane.partition, lane.tracker.in_flight());
            }
            metrics.in_flight_bytes.set(pipeline.budget.used() as i64);
            last_commit = Instant::now();
        }
        if last_log.elapsed() >= cfg.log_interval {
            let rate = metrics.interval_rate();
            let cost = metrics
                .update_efficiency()
                .map_or_else(String::new, |us| format!(" cpu={us:.0}µs/record"));
            tracing::info!("{} rate={rate:.0}/s{cost}", metrics.summary_line());
            last_log = Instant::now();
        }
        if pipeline.any_stopped() {
            shutdown.fail("an internal pipeline thread stopped unexpectedly");
        }
    }
}

/// `/healthz`: healthy while the main loop runs, nothing fatal happened, and no partition has
/// records in flight without any acknowledgement for `stall` — the pipeline, not just a thread.
/// It never waits on a lock held across a broker call: the partition map is held only to copy
/// the lanes.
pub fn health_check(
    live: Arc<Liveness>,
    shutdown: Shutdown,
    consumer: Weak<SourceConsumer>,
    stall: Duration,
) -> HealthCheck {
    Arc::new(move || {
        if let Some(reason) = shutdown.fatal() {
            return Err(format!("failed: {reason}"));
        }
        if live.stopping.load(Ordering::Relaxed) || shutdown.is_requested() {
            return Err("shutting down".into());
        }
        let age = live
            .started
            .elapsed()
            .as_secs()
            .saturating_sub(live.heartbeat.load(Ordering::Relaxed));
        if age > 30 {
            return Err(format!("main loop stalled for {age} s"));
        }
        let Some(c) = consumer.upgrade() else {
            return Ok(());
        };
        for lane in c.context().lanes() {
            if let Some(d) = lane.tracker.stalled_for().filter(|d| *d > stall) {
                return Err(format!(
                    "partition {}: no output acknowledged for {} s with {} records in flight",
                    lane.partition,
                    d.as_secs(),
                    lane.tracker.in_flight()
                ));
            }
        }
        Ok(())
    })
}
