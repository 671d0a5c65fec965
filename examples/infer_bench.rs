//! Inference throughput of `Session::score_tensor` on real padded batches, for
//! `scripts/bench-inference-vs-ort` (which runs onnxruntime on the very same batches).
//!
//! ```text
//! infer_bench dump DIR                  # write DIR/b{N}.i32 + DIR/b{N}.json for N in 1 8 32 256
//! infer_bench run DIR N SECONDS         # time the batches of DIR/b{N}.*; one JSON line out
//! infer_bench baseline DIR N SECONDS    # the same, with the plan kafka-infer used before
//! ```
//!
//! `baseline` reproduces the previous `model.rs` (one plan optimized for symbolic `[B, S]`, no
//! allocator setting) so that before and after are measured in one run, on one machine.
//!
//! The batches are test.csv's tweets in file order, N at a time (a last partial batch is
//! dropped), each padded to its longest tweet, exactly as the worker pads them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kafka_infer::app::data::test_tweets;
use kafka_infer::model::batch::pad_to_longest;
use kafka_infer::Classifier;
use tract_onnx::prelude::tract_ndarray::Array2;

const SIZES: [usize; 4] = [1, 8, 32, 256];

fn model_dir() -> PathBuf {
    std::env::var_os("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("model"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dump", dir] => dump(Path::new(dir)),
        ["run", dir, n, secs] => run(Path::new(dir), n.parse()?, secs.parse()?, false),
        ["baseline", dir, n, secs] => run(Path::new(dir), n.parse()?, secs.parse()?, true),
        ["plans"] => plans(),
        _ => bail!("usage: infer_bench dump DIR | run|baseline DIR N SECONDS"),
    }
}

fn dump(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let clf = Classifier::load(&model_dir())?;
    let ids: Vec<Vec<i32>> = test_tweets()
        .iter()
        .map(|t| clf.tokenizer().encode(t))
        .collect();
    for n in SIZES {
        let mut data: Vec<u8> = Vec::new();
        let mut shapes = Vec::new();
        for chunk in ids.chunks_exact(n) {
            let t = pad_to_longest(chunk, clf.tokenizer().pad_id());
            shapes.push(format!("[{},{}]", t.nrows(), t.ncols()));
            data.extend(t.iter().flat_map(|v| v.to_le_bytes()));
        }
        std::fs::write(dir.join(format!("b{n}.i32")), data)?;
        std::fs::write(
            dir.join(format!("b{n}.json")),
            format!("{{\"shapes\":[{}]}}\n", shapes.join(",")),
        )?;
    }
    Ok(())
}

/// Plan-build cost: the first batch of each sequence length 1..=max_len builds its plan.
fn plans() -> anyhow::Result<()> {
    let rss = || -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let rss0 = rss();
    let t = Instant::now();
    let clf = Classifier::load(&model_dir())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_loaded = rss();
    let mut session = clf.session()?;
    let max_len = clf.tokenizer().max_len();
    let mut first = Vec::new();
    for s in 1..=max_len {
        let tokens = Array2::from_elem((8, s), 2);
        let t = Instant::now();
        session.score_tensor(tokens.clone())?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let sorted = {
        let mut v = first.clone();
        v.sort_by(f64::total_cmp);
        v
    };
    println!(
        "load {load_ms:.1} ms (RSS {rss0:.0} -> {rss_loaded:.0} MiB); first batch of a new length \
         (plan build + run): median {:.2} ms, max {:.2} ms, all {max_len} lengths {:.0} ms; \
         RSS with all plans {:.0} MiB",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        first.iter().sum::<f64>(),
        rss()
    );
    Ok(())
}

fn load(dir: &Path, n: usize) -> anyhow::Result<Vec<Array2<i32>>> {
    let raw = std::fs::read(dir.join(format!("b{n}.i32"))).context("batches: run dump first")?;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("b{n}.json")))?)?;
    let ints: Vec<i32> = raw
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut at = 0;
    let mut out = Vec::new();
    for s in meta["shapes"].as_array().context("shapes")? {
        let (r, c) = (
            s[0].as_u64().context("rows")? as usize,
            s[1].as_u64().context("cols")? as usize,
        );
        out.push(Array2::from_shape_vec(
            (r, c),
            ints[at..at + r * c].to_vec(),
        )?);
        at += r * c;
    }
    Ok(out)
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15 (utime, stime) in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / ticks
}

/// The scoring function under test: `Session::score_tensor`, or the previous implementation.
type Score = Box<dyn FnMut(Array2<i32>) -> anyhow::Result<usize>>;

fn current() -> anyhow::Result<Score> {
    let clf = Classifier::load(&model_dir())?;
    let mut session = clf.session()?;
    Ok(Box::new(move |t| Ok(session.score_tensor(t)?.len())))
}

/// `model.rs` before per-sequence-length plans: one plan for symbolic `[B, S]`.
fn baseline() -> anyhow::Result<Score> {
    use tract_onnx::prelude::*;
    let mut model = tract_onnx::onnx().model_for_path(model_dir().join("model.onnx"))?;
    let b = model.symbols.sym("B");
    let s = model.symbols.sym("S");
    model.set_input_fact(0, i32::fact([b.to_dim(), s.to_dim()]).into())?;
    let plan = model.into_optimized()?.into_runnable()?;
    let mut state = TypedSimpleState::new(&plan)?;
    Ok(Box::new(move |t| {
        let out = state.run(tvec!(Tensor::from(t).into()))?;
        Ok(out[0].to_plain_array_view::<f32>()?.len())
    }))
}

fn run(dir: &Path, n: usize, seconds: f64, before: bool) -> anyhow::Result<()> {
    let batches = load(dir, n)?;
    let t_load = Instant::now();
    let mut score = if before { baseline()? } else { current()? };
    let load_s = t_load.elapsed().as_secs_f64();
    // Warm-up: every batch once (builds whatever the session builds lazily).
    for b in &batches {
        score(b.clone())?;
    }
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut tweets = 0usize;
    while t0.elapsed().as_secs_f64() < seconds {
        for b in &batches {
            tweets += score(b.clone())?;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{{\"runtime\":\"{}\",\"batch\":{n},\"tweets\":{tweets},\"wall_s\":{wall:.4},\"cpu_s\":{cpu:.4},\"load_s\":{load_s:.4}}}",
        if before { "tract-before" } else { "tract" }
    );
    Ok(())
}
