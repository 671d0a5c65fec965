//! Preprocessing throughput (tweets/s) on the real tweets of test.csv.
//!
//! Two cases: `test_csv_tweets` with the vocabulary hot in the caches (a tight loop), and
//! `cold_caches`, where 4 MiB are written between tweets (not timed) so the vocabulary is no
//! longer in L1/L2 (the tweet's text is copied in after that: it is hot in the worker, just
//! decoded) — as in the worker, where librdkafka and the model's lookup tables pass
//! through the same caches between two tweets of a partition.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kafka_infer::app::data::test_tweets;
use kafka_infer::Tokenizer;

fn bench(c: &mut Criterion) {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model");
    let tok = Tokenizer::load(&model).expect("tokenizer");
    let tweets = test_tweets();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(tweets.len() as u64));
    g.bench_function("test_csv_tweets", |b| {
        let mut ids = Vec::with_capacity(128);
        b.iter(|| {
            for t in &tweets {
                tok.encode_into(black_box(t), &mut ids);
                black_box(&ids);
            }
        })
    });
    g.sample_size(10);
    g.bench_function("cold_caches", |b| {
        let mut ids = Vec::with_capacity(128);
        let mut evict = vec![0u8; 4 << 20];
        let mut text = String::with_capacity(1024);
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                for t in &tweets {
                    // 4 MiB written is four times L2 here: the table is (mostly) evicted.
                    evict.fill(i as u8);
                    black_box(&evict);
                    // The text itself is hot in the worker (just decoded): copy it in.
                    text.clear();
                    text.push_str(t);
                    let t0 = Instant::now();
                    tok.encode_into(black_box(&text), &mut ids);
                    black_box(&ids);
                    spent += t0.elapsed();
                }
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
