//! `check-compose`: docker-compose.yml runs the same Kafka with the same broker settings as
//! this crate, proven by building the container's server.properties with the image's own
//! start-up code (kafka.docker.KafkaDockerWrapper, from the cached jars).

use std::fs;
use std::process::{Command, Stdio};

use crate::cache::{Java, RemoveOnDrop};
use crate::error::{show, Error, IoContext, Result};
use crate::{Env, KAFKA_VERSION};

/// Checks docker-compose.yml; each problem goes to stderr as `kafka: check-compose: …`. The
/// summary line on success.
pub fn check_compose(env: &Env) -> Result<String> {
    let compose_path = env.root.join("docker-compose.yml");
    let broker_path = env.root.join("config/kafka/broker.properties");
    if !compose_path.is_file() {
        return Err(Error::failed(format!("no {}", show(&compose_path))));
    }
    let compose = fs::read_to_string(&compose_path).ctx("cannot read", &compose_path)?;
    let broker = fs::read_to_string(&broker_path).ctx("cannot read", &broker_path)?;
    let mut errors = 0usize;
    let mut err = |m: String| {
        eprintln!("{}: check-compose: {m}", env.reporter.prog);
        errors += 1;
    };

    // 1. The same Kafka version.
    let images = kafka_images(&compose);
    if images.is_empty() {
        err("no apache/kafka image in docker-compose.yml".into());
    }
    for img in &images {
        if img.split_once(':').map(|(_, v)| v) != Some(KAFKA_VERSION) {
            err(format!(
                "docker-compose.yml uses {img}, scripts/kafka runs {KAFKA_VERSION}"
            ));
        }
    }

    // 2. The broker settings file is mounted where the image's KafkaDockerWrapper reads it.
    if !compose.lines().any(is_broker_mount) {
        err("the kafka service does not mount ./config/kafka/broker.properties at /mnt/shared/config/server.properties".into());
    }

    // 3. No KAFKA_* variable of the kafka service overrides a key of broker.properties (the
    //    image appends them after the mounted file, so they would win silently).
    let env_block = kafka_env(&compose);
    if env_block.is_empty() {
        err("could not find the kafka service's environment in docker-compose.yml".into());
    }
    let settings = property_lines(&broker);
    for (k, _) in &env_block {
        if let Some(prop) = env_to_prop(k) {
            if settings.iter().any(|(key, _)| *key == prop) {
                err(format!("docker-compose.yml sets {k}, which overrides {prop} of config/kafka/broker.properties; set it in that file instead"));
            }
        }
    }

    // 4. Build the container's server.properties with the image's own code and check it.
    let java = Java::find()?;
    env.cache.ensure(&java, &env.reporter)?;
    let tmp = std::env::temp_dir().join(format!("kafka-local-compose.{}", crate::random_suffix()));
    fs::create_dir_all(&tmp).ctx("cannot create", &tmp)?;
    let _guard = RemoveOnDrop(Some(tmp.clone()));
    for d in ["defaults", "mounted", "final", "data"] {
        fs::create_dir_all(tmp.join(d)).ctx("cannot create", &tmp.join(d))?;
    }
    let log4j = "Configuration:\n  Loggers:\n    Root:\n      level: INFO\n";
    for (name, text) in [
        ("defaults/server.properties", ""),
        ("defaults/log4j2.yaml", log4j),
        ("defaults/tools-log4j2.yaml", log4j),
        ("mounted/server.properties", broker.as_str()),
    ] {
        fs::write(tmp.join(name), text).ctx("cannot write", &tmp.join(name))?;
    }
    // The container's paths and host names do not exist here: keep the data dir in tmp and let
    // the wrapper format it (that also proves the resulting file is a valid KRaft config).
    let mut cmd = Command::new(&java.path);
    cmd.env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(env_block.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KAFKA_LOG_DIRS", tmp.join("data"))
        .args([
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Dlog4j2.level=error",
            "-cp",
        ])
        .arg(env.cache.class_path())
        .args([
            "kafka.docker.KafkaDockerWrapper",
            "setup",
            "--default-configs-dir",
        ])
        .arg(tmp.join("defaults"))
        .arg("--mounted-configs-dir")
        .arg(tmp.join("mounted"))
        .arg("--final-configs-dir")
        .arg(tmp.join("final"))
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| Error::io("cannot run KafkaDockerWrapper", e))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        err(
            "the image's KafkaDockerWrapper could not set up and format the compose configuration"
                .into(),
        );
    } else {
        // Every setting of broker.properties reaches the final file unchanged, and is not
        // redefined later in it.
        let final_path = tmp.join("final/server.properties");
        let fin = fs::read_to_string(&final_path).unwrap_or_default();
        let fin = property_lines(&fin);
        for (k, want) in &settings {
            let got = fin
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str());
            if got != Some(want.as_str()) {
                err(format!(
                    "the container's server.properties has {k}={}, broker.properties says {want}",
                    got.filter(|g| !g.is_empty()).unwrap_or("<unset>")
                ));
            }
        }
    }
    if errors > 0 {
        return Err(Error::failed(format!(
            "docker-compose.yml is out of sync with scripts/kafka ({errors} problem(s) above)"
        )));
    }
    Ok(format!(
        "docker-compose.yml: apache/kafka:{KAFKA_VERSION} with config/kafka/broker.properties ({} settings, checked through the image's KafkaDockerWrapper): in sync",
        settings.len()
    ))
}

/// `apache/kafka:TAG` and `apache/kafka-native:TAG` references, sorted, each once.
pub fn kafka_images(compose: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["apache/kafka:", "apache/kafka-native:"] {
        let mut rest = compose;
        while let Some(pos) = rest.find(prefix) {
            let tail = &rest[pos + prefix.len()..];
            let tag: String = tail
                .chars()
                .take_while(|c| *c != '"' && !c.is_whitespace())
                .collect();
            if !tag.is_empty() {
                out.push(format!("{prefix}{tag}"));
            }
            rest = tail;
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `- "./config/kafka/broker.properties:/mnt/shared/config/server.properties[:ro]"`
fn is_broker_mount(line: &str) -> bool {
    let Some(item) = line.trim().strip_prefix('-') else {
        return false;
    };
    let item = item.trim();
    let item = item.strip_prefix('"').unwrap_or(item);
    let item = item.strip_suffix('"').unwrap_or(item);
    let want = "./config/kafka/broker.properties:/mnt/shared/config/server.properties";
    item == want || item.strip_suffix(":ro") == Some(want)
}

/// `key=value` lines of a properties file (keys of `[a-zA-Z0-9._-]`), in order.
pub fn property_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let ok = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            ok.then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The kafka service's environment as (KEY, VALUE): a small parser for this file's layout (a
/// block mapping under services.kafka.environment, scalar values).
pub fn kafka_env(compose: &str) -> Vec<(String, String)> {
    let indent = |s: &str| s.len() - s.trim_start_matches(' ').len();
    let (mut in_services, mut in_kafka, mut in_env) = (false, false, false);
    let mut out = Vec::new();
    for line in compose.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if line.starts_with("services:") {
            in_services = true;
            continue;
        }
        let ind = indent(line);
        if in_services && ind == 2 {
            in_kafka = line.trim_end() == "  kafka:";
            in_env = false;
            continue;
        }
        if in_kafka && ind == 4 {
            in_env = line.trim_end() == "    environment:";
            continue;
        }
        if in_kafka && in_env && ind >= 6 {
            let mut l = line.trim_start().to_owned();
            if let Some(pos) = comment_start(&l) {
                l.truncate(pos);
            }
            let Some((k, v)) = l.split_once(':') else {
                out.push((l.clone(), l));
                continue;
            };
            let v = v.trim_start();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// Where `[[:space:]]+#.*$` starts.
fn comment_start(l: &str) -> Option<usize> {
    let b = l.as_bytes();
    (1..b.len())
        .find(|&i| b[i] == b'#' && b[i - 1].is_ascii_whitespace())
        .map(|i| {
            let mut s = i;
            while s > 0 && b[s - 1].is_ascii_whitespace() {
                s -= 1;
            }
            s
        })
}

/// The property the apache/kafka image makes of a KAFKA_* variable (KafkaDockerWrapper: drop
/// KAFKA_, lower-case, '_' -> '.', '...' -> '-', '..' -> '_'); None for the image's own
/// variables.
pub fn env_to_prop(k: &str) -> Option<String> {
    let rest = k.strip_prefix("KAFKA_")?;
    const OWN: [&str; 11] = [
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
        "KAFKA_JMX_HOSTNAME",
    ];
    if OWN.contains(&k) {
        return None;
    }
    Some(
        rest.to_lowercase()
            .replace('_', ".")
            .replace("...", "-")
            .replace("..", "_"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str = "x-kafka-image: &kafka-image apache/kafka:4.1.2\n\nservices:\n  kafka:\n    image: *kafka-image\n    volumes:\n      - \"./config/kafka/broker.properties:/mnt/shared/config/server.properties:ro\"\n    environment:\n      CLUSTER_ID: \"abc\"  # a comment\n      KAFKA_NODE_ID: 1\n      # a comment line\n      KAFKA_LOG_DIRS: '/var/lib/kafka/data'\n    healthcheck:\n      test: x\n  worker:\n    environment:\n      KAFKA_BROKERS: kafka:19092\n";

    #[test]
    fn parses_the_kafka_services_environment() {
        assert_eq!(
            kafka_env(COMPOSE),
            vec![
                ("CLUSTER_ID".to_owned(), "abc".to_owned()),
                ("KAFKA_NODE_ID".to_owned(), "1".to_owned()),
                (
                    "KAFKA_LOG_DIRS".to_owned(),
                    "/var/lib/kafka/data".to_owned()
                ),
            ]
        );
        assert_eq!(kafka_images(COMPOSE), vec!["apache/kafka:4.1.2"]);
        assert!(COMPOSE.lines().any(is_broker_mount));
    }

    #[test]
    fn env_names_to_properties() {
        assert_eq!(env_to_prop("KAFKA_LOG_DIRS").as_deref(), Some("log.dirs"));
        assert_eq!(
            env_to_prop("KAFKA_LISTENER_NAME_X__Y").as_deref(),
            Some("listener.name.x_y")
        );
        assert_eq!(env_to_prop("KAFKA_A___B").as_deref(), Some("a-b"));
        assert_eq!(env_to_prop("KAFKA_HEAP_OPTS"), None);
        assert_eq!(env_to_prop("CLUSTER_ID"), None);
    }
}
