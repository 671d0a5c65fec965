//! Batched inference throughput (tweets/s, one thread) at real tweet lengths (each batch padded
//! to its longest tweet) and at the seed's full padding of 121, for comparison.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_infer::app::data::test_tweets;
use kafka_infer::model::batch::{pad_to, pad_to_longest};
use kafka_infer::Classifier;

fn bench(c: &mut Criterion) {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model");
    let clf = Classifier::load(&model).expect("model");
    let ids: Vec<Vec<i32>> = test_tweets()
        .iter()
        .map(|t| clf.tokenizer().encode(t))
        .collect();
    let pad = clf.tokenizer().pad_id();
    let mut session = clf.session().expect("session");
    let mut g = c.benchmark_group("inference");
    for size in [1usize, 8, 32, 128, 256, 512] {
        g.throughput(Throughput::Elements(size as u64));
        // Consecutive real tweets, cycling through test.csv, so batches differ in make-up.
        let batches: Vec<Vec<&[i32]>> = (0..16)
            .map(|k| {
                (0..size)
                    .map(|i| ids[(k * size + i) % ids.len()].as_slice())
                    .collect()
            })
            .collect();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("real_lengths", size), &size, |b, _| {
            b.iter(|| {
                k = (k + 1) % batches.len();
                session
                    .score_tensor(pad_to_longest(&batches[k], pad))
                    .expect("run")
            })
        });
        if matches!(size, 1 | 32 | 256) {
            g.bench_with_input(BenchmarkId::new("padded_121", size), &size, |b, _| {
                b.iter(|| {
                    k = (k + 1) % batches.len();
                    session
                        .score_tensor(pad_to(&batches[k], pad, 121))
                        .expect("run")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
