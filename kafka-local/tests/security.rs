//! The secured listeners of `start --sasl … --tls`: an rdkafka client produces and consumes
//! through SASL_PLAINTEXT (PLAIN and SCRAM-SHA-512) and SSL, a wrong password is refused, and
//! a client that does not trust the throwaway CA is refused.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_local::{create_topics, unique, ClientSettings, Kafka, SaslMechanism, User};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

/// Produces one record through `s` and reads it back through `s`.
fn round_trip(s: &ClientSettings, topic: &str) {
    let producer: BaseProducer = s
        .client_config()
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let payload = unique("payload");
    producer
        .send(BaseRecord::to(topic).key("k").payload(&payload))
        .map_err(|(e, _)| e)
        .expect("send");
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flush through {}: {e}", s.line()));
    let consumer: BaseConsumer = s
        .client_config()
        .set("group.id", unique("g"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // Earlier round trips on the topic come first: read on to this one's record.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            if m.payload() == Some(payload.as_bytes()) {
                return;
            }
        }
    }
    panic!("read nothing back through {}", s.line());
}

/// Collects the client's error callbacks (authentication and TLS failures arrive there).
#[derive(Default)]
struct Errors(Mutex<Vec<String>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Errors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A metadata request through `s` fails; the client's errors (served by poll), lower-cased.
fn refused(s: &ClientSettings) -> String {
    let c: BaseProducer<Errors> = s
        .client_config()
        .create_with_context(Errors::default())
        .expect("client");
    let r = c.client().fetch_metadata(None, Duration::from_secs(8));
    assert!(r.is_err(), "{} was let in", s.line());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.poll(Duration::from_millis(100));
        let errs = c
            .context()
            .0
            .lock()
            .map(|v| v.join("\n"))
            .unwrap_or_default();
        if !errs.is_empty() || Instant::now() >= deadline {
            return errs.to_lowercase();
        }
    }
}

#[test]
fn sasl_plain_and_tls_listeners() {
    let alice = User {
        name: "alice".into(),
        password: "alice-pw".into(),
    };
    let kafka = Kafka::builder()
        .sasl(SaslMechanism::Plain, &[alice])
        .tls()
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let topic = unique("secure");
    create_topics(&kafka.bootstrap, &[(&topic, 1)]);

    let sasl = kafka.sasl_client().expect("a SASL listener");
    assert_eq!(sasl.get("sasl.mechanism"), Some("PLAIN"));
    assert_eq!(sasl.get("sasl.username"), Some("alice"));
    round_trip(&sasl, &topic);
    let errs = refused(&sasl.clone().with("sasl.password", "wrong"));
    assert!(errs.contains("authentication"), "{errs}");

    let tls = kafka.tls_client().expect("a TLS listener");
    let ca = tls
        .get("ssl.ca.location")
        .expect("ssl.ca.location")
        .to_owned();
    assert!(ca.ends_with("/tls/ca.pem") && std::path::Path::new(&ca).is_file());
    round_trip(&tls, &topic);

    let other = std::env::temp_dir().join(unique("kafka-local-other-ca"));
    let other_ca =
        kafka_local::security::make_ca(&other, "other", "not the broker's CA").expect("another CA");
    let errs = refused(
        &tls.clone()
            .with("ssl.ca.location", &other_ca.to_string_lossy()),
    );
    let _ = std::fs::remove_dir_all(&other);
    assert!(
        errs.contains("certificate verify failed") || errs.contains("ssl handshake failed"),
        "{errs}"
    );
}

#[test]
fn sasl_scram_listener() {
    let kafka = Kafka::builder()
        .sasl(SaslMechanism::ScramSha512, &[])
        .start()
        .unwrap_or_else(|e| panic!("start: {e}"));
    let topic = unique("scram");
    create_topics(&kafka.bootstrap, &[(&topic, 1)]);
    let sasl = kafka.sasl_client().expect("a SASL listener");
    // No --user: the default user, created in the metadata at format time.
    assert_eq!(sasl.get("sasl.username"), Some("admin"));
    assert_eq!(sasl.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    round_trip(&sasl, &topic);
    let errs = refused(&sasl.clone().with("sasl.password", "wrong"));
    assert!(errs.contains("authentication"), "{errs}");
    // The PLAINTEXT listener stays open beside it.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .expect("client");
    c.fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("PLAINTEXT metadata");
}
