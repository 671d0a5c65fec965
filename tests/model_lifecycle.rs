//! The model's life in production, on Apache Kafka: hot reloads while tweets stream in (a
//! second valid model, then a broken one, then back), SIGHUP, and shadow scoring.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kafka_infer::Classifier;
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Points `link` at `target` atomically (a new symlink renamed over the old one), as a
/// deployment would.
fn switch(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename");
}

/// Model directories A (the shipped model), B (the fixture) and a broken copy of B (its
/// ONNX truncated), and a `live` symlink pointing at A.
struct Dirs {
    root: PathBuf,
    a: PathBuf,
    b: PathBuf,
    broken: PathBuf,
    live: PathBuf,
}

fn dirs(name: &str) -> Dirs {
    let root = std::env::temp_dir().join(format!("ki-lifecycle-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (a, b, broken, live) = (
        root.join("a"),
        root.join("b"),
        root.join("broken"),
        root.join("live"),
    );
    copy_dir(&repo().join("model"), &a);
    copy_dir(&repo().join("tests/fixtures/model-b"), &b);
    copy_dir(&b, &broken);
    let onnx = std::fs::read(b.join("model.onnx")).expect("onnx");
    std::fs::write(broken.join("model.onnx"), &onnx[..onnx.len() / 2]).expect("truncate");
    std::os::unix::fs::symlink(&a, &live).expect("symlink");
    Dirs {
        root,
        a,
        b,
        broken,
        live,
    }
}

/// Each output's score must be what the model named in its `model-version` header gives
/// for its input tweet: the header names the model that actually scored it.
fn assert_scored_by_their_version(w: &World, outs: &[Out], models: &[&Path]) {
    let ins = w.read(&w.input, WAIT, Duration::ZERO, |i| {
        i.len() >= outs.len() / 2
    });
    let text_of: HashMap<(i32, i64), String> = ins
        .iter()
        .map(|i| {
            let v: serde_json::Value = serde_json::from_slice(&i.value).expect("json");
            (
                (i.partition, i.offset),
                v["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let classifiers: HashMap<String, Classifier> = models
        .iter()
        .map(|d| {
            let c = Classifier::load(d).expect("model");
            (c.version().to_owned(), c)
        })
        .collect();
    let mut sessions: HashMap<&str, _> = classifiers
        .iter()
        .map(|(v, c)| (v.as_str(), c.session().expect("session")))
        .collect();
    for o in outs {
        let version = o.headers["model-version"].as_str();
        let c = &classifiers[version];
        let text = &text_of[&o.source()];
        let s = sessions
            .get_mut(version)
            .expect("session")
            .score_texts(c.tokenizer(), &[text])
            .expect("score")[0];
        assert!(
            (f64::from(s) - o.score()).abs() < 1e-5,
            "{:?} labelled {version} scored {} but that model gives {s}",
            o.source(),
            o.score()
        );
    }
}

#[test]
fn reloads_swap_models_mid_stream_reject_a_broken_one_and_lose_nothing() {
    let d = dirs("reload");
    let w = World::new();
    let live = d.live.to_string_lossy().into_owned();
    let mut sc = support::report::Scenario::start(
        "model reloads A → B → broken → A while streaming",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = w.start_worker(&["--model-dir", &live, "--model-poll-ms", "300"]);
    let feeder = w.feed(300);
    let version = |dir: &Path| Classifier::load(dir).expect("model").version().to_owned();
    let (va, vb) = (version(&d.a), version(&d.b));
    assert_ne!(va, vb);
    fn has(v: &str) -> impl Fn(&[Out]) -> bool + '_ {
        move |o: &[Out]| o.iter().any(|x| x.headers["model-version"] == v)
    }
    w.read(&w.output, WAIT, Duration::ZERO, has(&va));

    switch(&d.live, &d.b);
    w.read(&w.output, WAIT, Duration::ZERO, has(&vb));
    switch(&d.live, &d.broken);
    wait_until(Duration::from_secs(30), "the broken model rejected", || {
        worker.metric("kafka_infer_model_reloads_total") >= 2.0
    });
    assert!(
        worker.log_text().contains("model reload rejected"),
        "{}",
        worker.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    switch(&d.live, &d.a);
    // Back on A: outputs of A after B's.
    wait_until(WAIT, "model A again", || {
        let outs = w.read(&w.output, Duration::from_secs(5), Duration::ZERO, |_| false);
        let last_b = outs.iter().rposition(|o| o.headers["model-version"] == vb);
        last_b.is_some_and(|i| outs[i..].iter().any(|o| o.headers["model-version"] == va))
    });
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, Duration::from_secs(3), |o| {
        want.is_subset(&predicted(o))
    });
    measure_run(&mut sc, sent, &outs, "the broken model never served");
    assert_every_input_predicted(&want, &outs, &worker.log_text());
    assert_eq!(duplicates(&outs), 0);
    // Per partition, versions follow the reloads: A…A B…B A…A, never the broken model.
    let mut runs: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for o in &outs {
        let v = o.headers["model-version"].clone();
        assert!(v == va || v == vb, "unexpected version {v}");
        let r = runs.entry(o.partition).or_default();
        if r.last() != Some(&v) {
            r.push(v);
        }
    }
    for (p, r) in &runs {
        assert!(
            r.len() <= 3 && r.first() == Some(&va) && (r.len() < 2 || r[1] == vb),
            "partition {p}: versions {r:?}"
        );
    }
    assert_scored_by_their_version(&w, &outs, &[&d.a, &d.b]);
    worker.terminate_cleanly(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&d.root);
}

#[test]
fn sighup_reloads_at_once() {
    let d = dirs("sighup");
    let w = World::new();
    let live = d.live.to_string_lossy().into_owned();
    // No polling: only SIGHUP reloads.
    let mut worker = w.start_worker(&["--model-dir", &live, "--model-poll-ms", "0"]);
    worker
        .wait_for_log("watching the model directory", WAIT)
        .expect("watching");
    switch(&d.live, &d.b);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !worker.log_text().contains("model reloaded"),
        "no poll, no reload"
    );
    worker.signal("HUP");
    let line = worker
        .wait_for_log("model reloaded", Duration::from_secs(20))
        .expect("reloaded on SIGHUP");
    let vb = Classifier::load(&d.b).expect("model").version().to_owned();
    assert!(line.contains(&vb), "{line}");
    w.produce(&tweets(30, 0));
    let outs = w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 30);
    assert!(outs.iter().all(|o| o.headers["model-version"] == vb));
    worker.terminate_cleanly(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&d.root);
}

#[test]
fn a_shadow_model_scores_beside_the_live_one_into_its_own_topic() {
    let d = dirs("shadow");
    let w = World::new();
    let shadow_topic = format!("{}.shadow", w.output);
    support::kafka::create_topics(&w.bootstrap(), &[(&shadow_topic, PARTITIONS)]);
    let b = d.b.to_string_lossy().into_owned();
    let n = 900;
    w.produce(&tweets(n, 0));
    let mut worker = w.start_worker(&["--shadow-model-dir", &b]);
    let live = w.read(&w.output, WAIT, Duration::from_secs(2), |o| o.len() >= n);
    assert_eq!(live.len(), n);
    // The shadow scores beside, never in the way: live outputs keep each partition's order.
    assert_partition_order(&live);
    assert_eq!(duplicates(&live), 0);
    let (va, vb) = (
        Classifier::load(&d.a).expect("model").version().to_owned(),
        Classifier::load(&d.b).expect("model").version().to_owned(),
    );
    assert!(live.iter().all(|o| o.headers["model-version"] == va));
    assert_scored_by_their_version(&w, &live, &[&d.a]);

    let shadow = w.read(&shadow_topic, WAIT, Duration::from_secs(2), |o| {
        o.len() >= n
    });
    let m = worker.metrics();
    let shed = m
        .get("kafka_infer_shadow_shed_total")
        .copied()
        .unwrap_or(0.0) as usize;
    assert_eq!(
        shadow.len() + shed,
        n,
        "every tweet scored in shadow or counted as shed"
    );
    let live_by_source: HashMap<(i32, i64), &Out> = live.iter().map(|o| (o.source(), o)).collect();
    for s in &shadow {
        assert_eq!(s.headers["model-version"], vb);
        assert_eq!(s.headers["live-model-version"], va);
        let l = live_by_source[&s.source()];
        assert_eq!((s.key.as_ref(), s.partition), (l.key.as_ref(), l.partition));
    }
    assert_scored_by_their_version(&w, &shadow, &[&d.b]);
    let agreement = m["kafka_infer_shadow_agreement_rate"];
    assert!((0.5..=1.0).contains(&agreement), "agreement {agreement}");
    assert!(m["kafka_infer_shadow_mean_abs_diff"] > 0.0);
    // Score histograms per version: the live model's n scores and the candidate's.
    assert_eq!(
        m["kafka_infer_model_scores_count"],
        (n + shadow.len()) as f64,
        "live + shadow score histogram counts"
    );
    worker.terminate_cleanly(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&d.root);
}
