//! Java, and the jar cache: Apache Kafka's jars from Maven Central (fetched once with Maven,
//! checked with sha256), and the class-data-sharing archive that makes broker starts faster.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{show, Error, IoContext, Result};
use crate::{elapsed, utc_now, Reporter, KAFKA_VERSION, LOG4J_VERSION};

const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1";

/// The jars a broker needs; a cache without one of them is refetched.
pub fn required_jars() -> Vec<String> {
    let k = KAFKA_VERSION;
    let l = LOG4J_VERSION;
    vec![
        format!("kafka_2.13-{k}.jar"),
        format!("kafka-clients-{k}.jar"),
        format!("kafka-server-{k}.jar"),
        format!("kafka-raft-{k}.jar"),
        format!("kafka-metadata-{k}.jar"),
        format!("kafka-storage-{k}.jar"),
        format!("log4j-core-{l}.jar"),
        format!("log4j-slf4j-impl-{l}.jar"),
        "slf4j-api-1.7.36.jar".to_owned(),
    ]
}

// ---- Java ---------------------------------------------------------------------------------------

/// The `java` that runs the brokers: `$JAVA_HOME/bin/java` if set, else `java` on PATH (17+).
#[derive(Debug, Clone)]
pub struct Java {
    pub path: PathBuf,
    /// `java -version`'s output (part of the class-data archive's key).
    pub version_text: String,
    pub major: u32,
}

impl Java {
    pub fn find() -> Result<Java> {
        let path = match std::env::var_os("JAVA_HOME") {
            Some(h) if !h.is_empty() && is_executable(&Path::new(&h).join("bin/java")) => {
                Path::new(&h).join("bin/java")
            }
            _ => which("java").ok_or_else(|| {
                Error::failed(format!(
                    "java not found (Kafka {KAFKA_VERSION} needs Java 17+). On Debian: apt-get install openjdk-17-jdk-headless"
                ))
            })?,
        };
        let out = Command::new(&path)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {} -version", show(&path)), e))?;
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let version_text = text.trim_end_matches('\n').to_owned();
        let major = parse_java_major(&version_text);
        match major {
            Some(v) if v >= 17 => Ok(Java {
                path,
                version_text,
                major: v,
            }),
            other => Err(Error::failed(format!(
                "{} is Java '{}'; Kafka {KAFKA_VERSION} needs Java 17 or newer",
                show(&path),
                other.map_or("?".to_owned(), |v| v.to_string())
            ))),
        }
    }
}

/// The major version in `java -version` output (`version "17.0.15"` -> 17).
pub fn parse_java_major(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.contains("version \""))?;
    let v = &line[line.find("version \"")? + 9..];
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program on PATH, like `command -v`.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

// ---- locks ---------------------------------------------------------------------------------------

/// An exclusive flock(2) on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock at once if free, else says `waiting` and waits up to `timeout`.
    pub fn acquire(path: &Path, timeout: Duration, waiting: &dyn Fn()) -> Result<FileLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ctx("cannot open the lock file", path)?;
        if try_flock(&file) {
            return Ok(FileLock { _file: file });
        }
        waiting();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(sig) = crate::process::interrupted() {
                return Err(Error::Interrupted(sig));
            }
            std::thread::sleep(Duration::from_millis(200));
            if try_flock(&file) {
                return Ok(FileLock { _file: file });
            }
        }
        Err(Error::failed(format!(
            "timed out waiting for the lock on {}",
            show(path)
        )))
    }
}

fn try_flock(f: &File) -> bool {
    // SAFETY: flock(2) on a descriptor this File owns; the lock goes with the descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

// ---- the jar cache -------------------------------------------------------------------------------

/// Where the jars live: `$KAFKA_INFER_CACHE_DIR` or `${XDG_CACHE_HOME:-~/.cache}/kafka-infer`,
/// then `kafka-VERSION/{lib/, lib.sha256, cds-*.jsa}`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
    pub dir: PathBuf,
    pub lib: PathBuf,
}

impl Cache {
    pub fn from_env() -> Cache {
        let root = match std::env::var_os("KAFKA_INFER_CACHE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let base = match std::env::var_os("XDG_CACHE_HOME") {
                    Some(d) if !d.is_empty() => PathBuf::from(d),
                    _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
                };
                base.join("kafka-infer")
            }
        };
        let dir = root.join(format!("kafka-{KAFKA_VERSION}"));
        let lib = dir.join("lib");
        Cache { root, dir, lib }
    }

    /// The java class path of the broker: every jar of lib/ (java expands the `*`).
    pub fn class_path(&self) -> String {
        format!("{}/*", self.lib.display())
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join(format!("kafka-{KAFKA_VERSION}.lock"))
    }

    pub fn lock(&self, timeout: Duration, waiting: &dyn Fn()) -> Result<FileLock> {
        fs::create_dir_all(&self.root).ctx("cannot create the cache directory", &self.root)?;
        FileLock::acquire(&self.lock_path(), timeout, waiting)
    }

    /// The cache was filled completely (by an earlier fetch).
    pub fn complete(&self) -> bool {
        self.dir.join("complete").is_file()
            && self.dir.join("lib.sha256").is_file()
            && required_jars().iter().all(|j| self.lib.join(j).is_file())
    }

    /// Fetches the jars with Maven unless the cache is complete (under the cache lock; the
    /// finished download is moved into place in one rename).
    pub fn ensure(&self, java: &Java, r: &Reporter) -> Result<()> {
        if self.complete() {
            return Ok(());
        }
        let _lock = self.lock(Duration::from_secs(900), &|| {
            r.say(&format!(
                "another process is fetching Kafka {KAFKA_VERSION} into {}; waiting (up to 15 min)",
                show(&self.dir)
            ))
        })?;
        if self.complete() {
            return Ok(());
        }
        self.fetch(java, r)?;
        if !self.complete() {
            return Err(Error::failed(format!(
                "the jar cache {} is incomplete after fetching",
                show(&self.dir)
            )));
        }
        Ok(())
    }

    fn fetch(&self, _java: &Java, r: &Reporter) -> Result<()> {
        let mvn = std::env::var("MVN")
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "mvn".to_owned());
        let mvn_path = which(&mvn).ok_or_else(|| {
            Error::failed(format!(
                "Maven ('{mvn}') is needed once to fetch Kafka's jars from Maven Central. On Debian: apt-get install maven"
            ))
        })?;
        let t0 = Instant::now();
        // Leftovers of fetches that were killed (we hold the lock: nobody else is fetching).
        remove_matching(&self.root, &format!(".kafka-{KAFKA_VERSION}.tmp."));
        r.say(&format!(
            "fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {} (once; ~45 MB)",
            show(&self.dir)
        ));
        let tmp = self.root.join(format!(
            ".kafka-{KAFKA_VERSION}.tmp.{}",
            crate::random_suffix()
        ));
        fs::create_dir(&tmp).ctx("cannot create", &tmp)?;
        let mut guard = RemoveOnDrop(Some(tmp.clone()));
        let pom = tmp.join("pom.xml");
        fs::write(&pom, pom_xml()).ctx("cannot write", &pom)?;
        let log_path = tmp.join("mvn.log");
        let log = File::create(&log_path).ctx("cannot create", &log_path)?;
        let log2 = log.try_clone().ctx("cannot reopen", &log_path)?;
        // -C: fail on a checksum mismatch (Maven only warns by default).
        let status = Command::new(&mvn_path)
            .args(["-B", "-q", "-C", "-f"])
            .arg(&pom)
            .arg(format!("{DEPENDENCY_PLUGIN}:copy-dependencies"))
            .arg(format!("-DoutputDirectory={}", tmp.join("lib").display()))
            .arg("-DincludeScope=runtime")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .map_err(|e| Error::io(format!("running {}", show(&mvn_path)), e))?;
        if !status.success() {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            return Err(Error::failed(format!(
                "Maven could not fetch Kafka {KAFKA_VERSION} (log above). Is Maven Central reachable?"
            )));
        }
        let tmp_lib = tmp.join("lib");
        for j in required_jars() {
            if !tmp_lib.join(&j).is_file() {
                return Err(Error::failed(format!(
                    "the fetched jars lack {j} (Maven's dependency tree changed?)"
                )));
            }
        }
        let sums = checksum_lines(&tmp_lib)?;
        let sums_path = tmp.join("lib.sha256");
        fs::write(&sums_path, sums).ctx("cannot write", &sums_path)?;
        fs::rename(&pom, tmp.join("kafka-pom.xml")).ctx("cannot rename", &pom)?;
        let _ = fs::remove_file(&log_path);
        let complete = tmp.join("complete");
        fs::write(&complete, format!("{}\n", utc_now())).ctx("cannot write", &complete)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).ctx("cannot chmod", &tmp)?;
        // A half-made cache from an older layout or a crash: replace it.
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).ctx("cannot remove", &self.dir)?;
        }
        fs::rename(&tmp, &self.dir).ctx("cannot move the download to", &self.dir)?;
        guard.0 = None;
        let (count, bytes) = dir_jars(&self.lib);
        r.say(&format!(
            "fetched {count} jars ({} MB) in {}",
            bytes / 1_000_000,
            elapsed(t0)
        ));
        Ok(())
    }

    /// Checks every jar against lib.sha256 and that lib/ holds nothing else; the jar count.
    pub fn verify(&self) -> Result<usize> {
        let sums_path = self.dir.join("lib.sha256");
        let sums = fs::read_to_string(&sums_path).ctx("cannot read", &sums_path)?;
        let broken = || {
            Error::failed(format!(
                "the jar cache {} does not match its checksums; delete {} and run scripts/kafka fetch",
                show(&self.lib),
                show(&self.dir)
            ))
        };
        let mut listed = Vec::new();
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (want, name) = line.split_once("  ").ok_or_else(broken)?;
            let got = sha256_file(&self.lib.join(name)).map_err(|_| {
                eprintln!("sha256sum: {name}: No such file or directory");
                broken()
            })?;
            if got != want {
                eprintln!("{name}: FAILED");
                return Err(broken());
            }
            listed.push(name.to_owned());
        }
        let mut extra: Vec<String> = fs::read_dir(&self.lib)
            .ctx("cannot list", &self.lib)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !listed.contains(n))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            return Err(Error::failed(format!(
                "unexpected jars in {}: {}; delete {} and run scripts/kafka fetch",
                show(&self.lib),
                extra.join(" "),
                show(&self.dir)
            )));
        }
        Ok(listed.len())
    }

    /// The class-data archive for this JDK and jar directory (it may not exist).
    pub fn cds_archive_path(&self, java: &Java) -> PathBuf {
        let key = format!(
            "{}\n{}\n{}\n",
            java.path.display(),
            java.version_text,
            self.lib.display()
        );
        let hex = hex(&Sha256::digest(key.as_bytes()));
        self.dir.join(format!("cds-{}.jsa", &hex[..12]))
    }

    /// The class-data archive if it exists and archives are enabled (never builds it).
    pub fn cds_lookup(&self, java: &Java) -> Option<PathBuf> {
        if !cds_enabled() {
            return None;
        }
        let p = self.cds_archive_path(java);
        p.is_file().then_some(p)
    }
}

/// `KAFKA_INFER_KAFKA_CDS=0` turns the class-data archive off.
pub fn cds_enabled() -> bool {
    std::env::var("KAFKA_INFER_KAFKA_CDS").map_or(true, |v| v != "0")
}

fn pom_xml() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Throw-away pom of scripts/kafka: Apache Kafka {KAFKA_VERSION}'s broker and its runtime jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-infer</groupId>
  <artifactId>kafka-broker-lib</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <!-- Kafka's tarball ships an SLF4J 1.7 -> log4j2 binding; its poms do not (no binding: no broker log). -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"#
    )
}

/// `sha256sum *.jar` output for a directory, sorted by name.
fn checksum_lines(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .ctx("cannot list", dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jar"))
        .collect();
    names.sort();
    let mut out = String::new();
    for n in names {
        let sum = sha256_file(&dir.join(&n)).ctx("cannot read", &dir.join(&n))?;
        out.push_str(&format!("{sum}  {n}\n"));
    }
    Ok(out)
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dir_jars(dir: &Path) -> (usize, u64) {
    let Ok(rd) = fs::read_dir(dir) else {
        return (0, 0);
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jar"))
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map_or(0, |m| m.len()))
        })
}

/// Removes the entries of `dir` whose names start with `prefix`.
pub(crate) fn remove_matching(dir: &Path, prefix: &str) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
}

/// Deletes a directory tree when dropped (unless forgotten).
pub(crate) struct RemoveOnDrop(pub Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}tmp",
        path.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp).ctx("cannot write", &tmp)?;
        f.write_all(text.as_bytes()).ctx("cannot write", &tmp)?;
    }
    fs::rename(&tmp, path).ctx("cannot rename to", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_major_versions() {
        assert_eq!(
            parse_java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"),
            Some(17)
        );
        assert_eq!(parse_java_major("java version \"1.8.0_401\""), Some(1));
        assert_eq!(
            parse_java_major("openjdk version \"21\" 2023-09-19"),
            Some(21)
        );
        assert_eq!(parse_java_major("nonsense"), None);
    }

    #[test]
    fn checksums_verify_and_catch_changes() {
        let d = std::env::temp_dir().join(format!("kafka-local-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let lib = d.join("lib");
        fs::create_dir_all(&lib).expect("mkdir");
        fs::write(lib.join("a.jar"), b"a").expect("write");
        fs::write(lib.join("b.jar"), b"b").expect("write");
        let sums = checksum_lines(&lib).expect("sums");
        assert!(sums.starts_with(
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  a.jar\n"
        ));
        fs::write(d.join("lib.sha256"), &sums).expect("write");
        let c = Cache {
            root: d.clone(),
            dir: d.clone(),
            lib: lib.clone(),
        };
        assert_eq!(c.verify().expect("verifies"), 2);
        fs::write(lib.join("c.jar"), b"c").expect("write");
        assert!(c.verify().is_err(), "an unexpected jar");
        fs::remove_file(lib.join("c.jar")).expect("rm");
        fs::write(lib.join("a.jar"), b"A").expect("write");
        assert!(c.verify().is_err(), "a changed jar");
        let _ = fs::remove_dir_all(&d);
    }
}
