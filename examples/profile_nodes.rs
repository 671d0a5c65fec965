//! Times every node of tract's optimized plan on real padded batches from test.csv: where does
//! tract spend its time, op by op.
//!
//! ```text
//! cargo run --release --example profile_nodes -- [generic|seq|full] [BATCH=256] [ITERS=100]
//! ```
//!
//! * `generic`: the plan built for symbolic `[B, S]` (what kafka-infer ran before);
//! * `seq`: the plans specialised per sequence length that `Session` runs;
//! * `full`: plans specialised for the whole `[B, S]` shape (for comparison).
//!
//! Environment: `MODEL_DIR` (default `model/`), `CHUNK=n` to run each padded batch as row chunks
//! of `n` (same padding), `HOT=k` to replace the tokens by `k` distinct ids (table rows then stay
//! in cache). Times are the calling thread's CPU time, so other load on the machine distorts
//! them less than wall time; each node's timer adds about a microsecond.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_infer::app::data::test_tweets;
use kafka_infer::model::batch::pad_to_longest;
use kafka_infer::model::plan::BaseModel;
use kafka_infer::Classifier;
use tract_onnx::prelude::tract_ndarray::s;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("seq");
    anyhow::ensure!(
        matches!(mode, "generic" | "seq" | "full"),
        "mode is generic, seq or full"
    );
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let iters: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
        .max(2);
    let dir = std::env::var_os("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("model"));
    let clf = Classifier::load(&dir)?;
    let mut ids: Vec<Vec<i32>> = test_tweets()
        .iter()
        .map(|t| clf.tokenizer().encode(t))
        .collect();
    if let Some(k) = env_usize("HOT") {
        for (i, v) in ids.iter_mut().flatten().enumerate() {
            *v = 2 + (i % k.max(1)) as i32;
        }
    }
    let pad = clf.tokenizer().pad_id();
    let chunk = env_usize("CHUNK").unwrap_or(size).max(1);
    let batches: Vec<Tensor> = ids
        .chunks_exact(size)
        .flat_map(|c| {
            let t = pad_to_longest(c, pad);
            (0..size)
                .step_by(chunk)
                .map(|r| Tensor::from(t.slice(s![r..(r + chunk).min(size), ..]).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();

    let base = BaseModel::from_onnx(&std::fs::read(dir.join("model.onnx"))?)?;
    let key_of = |t: &Tensor| match mode {
        "generic" => (0, 0),
        "full" => (t.shape()[0], t.shape()[1]),
        _ => (0, t.shape()[1]),
    };
    let mut plans: HashMap<(usize, usize), Arc<TypedSimplePlan>> = HashMap::new();
    let t0 = Instant::now();
    for b in &batches {
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(key_of(b)) {
            let (rows, seq) = *e.key();
            e.insert(match mode {
                "generic" => base.generic_plan()?,
                "full" => base.plan_for_shape(Some(rows), seq)?,
                _ => base.plan_for_seq(seq)?,
            });
        }
    }
    eprintln!("{} plan(s) built in {:?}", plans.len(), t0.elapsed());
    if let Some(first) = plans.values().next() {
        for n in first.model().eval_order()? {
            let node = first.model().node(n);
            eprintln!(
                "#{n} {} {:?} -> {:?}",
                node.name, node.op, node.outputs[0].fact
            );
        }
    }

    let mut states: HashMap<(usize, usize), TypedSimpleState> = plans
        .iter()
        .map(|(k, p)| Ok((*k, TypedSimpleState::new(p)?)))
        .collect::<TractResult<_>>()?;
    let mut per_node: HashMap<String, Duration> = HashMap::new();
    let mut total = Duration::ZERO;
    let mut rows = 0usize;
    for it in 0..iters {
        for b in &batches {
            let state = states
                .get_mut(&key_of(b))
                .ok_or_else(|| anyhow::anyhow!("no state"))?;
            let t = thread_cpu();
            state.run_plan_with_eval(tvec!(b.clone().into()), |ctx, st, node, inputs| {
                let t = thread_cpu();
                let r = eval(ctx, st, node, inputs);
                if it > 0 {
                    *per_node
                        .entry(format!(
                            "#{:<3} {:<40} {}",
                            node.id,
                            node.name,
                            node.op.name()
                        ))
                        .or_default() += thread_cpu() - t;
                }
                r
            })?;
            if it > 0 {
                total += thread_cpu() - t;
                rows += b.shape()[0];
            }
        }
    }
    let mut v: Vec<_> = per_node.into_iter().collect();
    v.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    let n_batches = ((iters - 1) * batches.len() * chunk / size).max(1);
    println!(
        "{mode} batch {size}: {:.0} tweets per CPU second, {:.1} CPU us/batch (node timers included)",
        rows as f64 / total.as_secs_f64(),
        total.as_secs_f64() * 1e6 / n_batches as f64
    );
    let sum: Duration = v.iter().map(|(_, d)| *d).sum();
    for (name, d) in v {
        println!(
            "{:>8.2} us {:>5.1}%  {name}",
            d.as_secs_f64() * 1e6 / n_batches as f64,
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!(
        "{:>8.2} us  outside nodes",
        total.saturating_sub(sum).as_secs_f64() * 1e6 / n_batches as f64
    );
    Ok(())
}
