//! Decoding {"value": "<tweet>"} payloads: simd-json (what the worker uses) vs serde_json.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kafka_infer::app::data::test_tweets;
use kafka_infer::wire::{decode_value_serde_json, JsonDecoder};

fn bench(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = test_tweets()
        .into_iter()
        .map(|t| serde_json::to_vec(&serde_json::json!({ "value": t })).expect("json"))
        .collect();
    let mut g = c.benchmark_group("json_decode");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("simd_json_tape", |b| {
        // As a partition thread does: one decoder and one scratch buffer, reused (simd-json
        // parses in place).
        let (mut d, mut scratch) = (JsonDecoder::new(), Vec::with_capacity(1024));
        b.iter(|| {
            for p in &payloads {
                black_box(d.decode(p, &mut scratch).expect("valid").len());
            }
        })
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(decode_value_serde_json(p).expect("valid").len());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
