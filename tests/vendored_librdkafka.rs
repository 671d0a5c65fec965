//! The fixes carried by the vendored librdkafka (third_party/patches/), each shown by the
//! behaviour it changes, on librdkafka's mock cluster. A test here fails on the published crate:
//! it is what says a patch is still applied after an upgrade (and still needed, if it fails
//! with the patch removed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

/// Keeps the producer's latest statistics.
#[derive(Clone, Default)]
struct Stats(Arc<Mutex<Option<Statistics>>>);

impl ClientContext for Stats {
    fn stats(&self, statistics: Statistics) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(statistics);
        }
    }
}

impl ProducerContext for Stats {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Broker 1's (wakeups, ProduceRequests sent) in the next statistics emitted after this call.
fn broker_counters(producer: &BaseProducer<Stats>, stats: &Stats) -> (u64, i64) {
    if let Ok(mut s) = stats.0.lock() {
        *s = None;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        producer.poll(Duration::from_millis(20));
        let latest = stats.0.lock().ok().and_then(|s| s.clone());
        if let Some(st) = latest {
            let broker = st
                .brokers
                .values()
                .find(|b| b.nodeid == 1)
                .expect("broker 1 in the statistics");
            let produce = broker.req.get("Produce").copied().unwrap_or(0);
            return (broker.wakeups.expect("wakeups in the statistics"), produce);
        }
    }
    panic!("no statistics within 10 s");
}

/// The condition: an idempotent producer (as the worker's) whose partition has as many records
/// in flight as librdkafka allows (5: the limit counts records), with more records queued
/// behind them and older than `linger.ms` — here for 1.5 s, every produce answered 250 ms late.
/// Published librdkafka 2.12 sets the broker thread's next wakeup to "now" in that state and
/// polls its socket with a zero timeout until an answer arrives: hundreds of thousands of
/// wakeups in 1.5 s, however fast the machine. Patched, the thread sleeps until the answer or a
/// new record: a few per produce call and per response, a few hundred in all.
#[test]
fn an_idempotent_producer_does_not_spin_while_its_partition_waits_for_answers() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("out", 1, 1).expect("topic");
    let stats = Stats::default();
    let producer: BaseProducer<Stats> = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("statistics.interval.ms", "100")
        .create_with_context(stats.clone())
        .expect("producer");
    // Connected, with a producer id, before the answers slow down.
    producer
        .send(BaseRecord::<(), str>::to("out").payload("first"))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    mock.broker_round_trip_time(1, Duration::from_millis(250))
        .expect("round trip time");

    let (wakeups_before, produce_before) = broker_counters(&producer, &stats);
    let until = Instant::now() + Duration::from_millis(1500);
    let mut sent = 0;
    while Instant::now() < until {
        producer
            .send(BaseRecord::<(), str>::to("out").payload("{\"value\":[0.5]}"))
            .map_err(|(e, _)| e)
            .expect("send");
        sent += 1;
        producer.poll(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let (wakeups_after, produce_after) = broker_counters(&producer, &stats);

    let wakeups = wakeups_after - wakeups_before;
    let requests = produce_after - produce_before;
    eprintln!("{sent} records, {requests} produce requests, {wakeups} broker thread wakeups");
    // The condition held: records queued behind full in-flight windows, answered 250 ms late.
    assert!(sent > 100, "only {sent} records sent in 1.5 s");
    assert!(
        requests >= 5 && requests < sent,
        "{requests} produce requests for {sent} records: records did not queue behind in-flight requests"
    );
    assert!(
        wakeups < 5_000,
        "the broker thread woke {wakeups} times for {sent} records and {requests} produce requests \
         in 1.5 s: it spins while the partition waits for answers (is third_party/patches applied?)"
    );
}
