//! The build supports what the README promises users: TLS, SASL (PLAIN, SCRAM, OAUTHBEARER) and
//! every compression codec producers use. librdkafka refuses, at client creation, a setting its
//! build cannot honour ("built without SSL support" …), so creating the clients is the proof.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;

fn create(props: &[(&str, &str)]) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", "127.0.0.1:1");
    for (k, v) in props {
        c.set(*k, *v);
    }
    c.create::<BaseProducer>()
        .map(drop)
        .map_err(|e| e.to_string())?;
    c.set("group.id", "features");
    c.create::<BaseConsumer>()
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn tls_and_sasl_mechanisms_are_compiled_in() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
        let r = create(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]);
        assert!(r.is_ok(), "SASL_SSL with {mechanism}: {r:?}");
    }
    assert!(create(&[("security.protocol", "SSL")]).is_ok());
}

#[test]
fn every_compression_codec_is_compiled_in() {
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let r = create(&[("compression.type", codec)]);
        assert!(r.is_ok(), "{codec}: {r:?}");
    }
}

#[test]
fn an_unsupported_setting_is_refused_so_these_tests_can_fail() {
    assert!(create(&[("compression.type", "brotli")]).is_err());
    assert!(create(&[
        ("sasl.mechanism", "NOT-A-MECHANISM"),
        ("security.protocol", "SASL_SSL")
    ])
    .is_err());
}
