//! The saturation search's rules: when a step fails, and how the rate grows.

use crate::run::RunOutcome;

/// Each `--find-max` step sends this many times faster than the previous one.
pub const STEP_FACTOR: f64 = 1.5;

/// A step whose predictions come back slower than this fraction of its send rate is falling
/// behind: the backlog would grow without bound if it went on.
pub const MIN_PREDICTION_RATIO: f64 = 0.95;

/// Why a step fails; empty when it passes.
pub fn failures(o: &RunOutcome, slo_ms: f64) -> Vec<String> {
    let mut why = Vec::new();
    let p99_ms = o.latency.value_at_quantile(0.99) as f64 / 1_000.0;
    if o.latency.is_empty() {
        why.push("no predictions".to_owned());
    } else if p99_ms > slo_ms {
        why.push(format!("p99 {p99_ms:.1} ms > {slo_ms} ms"));
    }
    if o.lost > 0 {
        why.push(format!("{} lost", o.lost));
    }
    if o.unsent > 0 {
        why.push(format!("{} not sent (loadgen could not keep up)", o.unsent));
    }
    let (send, pred) = (o.send_rate(), o.prediction_rate());
    if pred < MIN_PREDICTION_RATIO * send {
        why.push(format!(
            "predictions {pred:.0}/s < 95% of sends {send:.0}/s"
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Rate;
    use crate::run::RunOutcome;
    use crate::track::new_histogram;
    use std::time::Duration;

    fn outcome(latency_ms: u64, lost: u64, predict_secs: f64) -> RunOutcome {
        let mut latency = new_histogram();
        for _ in 0..1000 {
            latency.saturating_record(latency_ms * 1_000);
        }
        RunOutcome {
            run_id: "t".into(),
            rate: Rate::PerSec(100.0),
            duration: Duration::from_secs(10),
            send_window: Duration::from_secs(10),
            predict_window: Duration::from_secs_f64(predict_secs),
            sent: 1000 + lost,
            predicted: 1000,
            lost,
            latency,
            ..RunOutcome::default()
        }
    }

    #[test]
    fn a_fast_complete_step_passes() {
        assert!(failures(&outcome(5, 0, 10.0), 10.0).is_empty());
    }

    #[test]
    fn slow_lossy_or_lagging_steps_fail() {
        assert_eq!(failures(&outcome(20, 0, 10.0), 10.0).len(), 1);
        assert_eq!(failures(&outcome(5, 3, 10.0), 10.0).len(), 1);
        // Sends 100/s for 10 s, predictions took 12 s: 83/s.
        assert_eq!(failures(&outcome(5, 0, 12.0), 10.0).len(), 1);
        assert!(!failures(&RunOutcome::default(), 10.0).is_empty());
    }
}
