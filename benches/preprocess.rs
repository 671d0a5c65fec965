//! Preprocessing throughput (tweets/s) on the real tweets of test.csv.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kafka_infer::data::test_tweets;
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
