//! The secured client listeners of `start --sasl … --tls`: a throwaway CA and broker
//! certificate (openssl) for the SSL listener, and the client settings a test needs for each
//! listener (security.protocol, sasl.*, ssl.ca.location).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::which;
use crate::config::{SaslMechanism, User};
use crate::error::{show, Error, IoContext, Result};

/// Where `--tls` keeps its certificates: DIR/tls/{ca.pem, ca.key, broker.pem}.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub fn new(cluster_dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: cluster_dir.join("tls"),
        }
    }

    /// The CA certificate clients trust (`ssl.ca.location`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The broker's PEM key store: its private key (PKCS#8) and certificate chain.
    pub fn keystore(&self) -> PathBuf {
        self.dir.join("broker.pem")
    }

    pub fn exists(&self) -> bool {
        self.ca_cert().is_file() && self.keystore().is_file()
    }

    /// Makes a CA and a broker certificate for 127.0.0.1 and localhost signed by it (10 years;
    /// they live as long as the cluster directory). Kept if they exist.
    pub fn ensure(&self) -> Result<()> {
        if self.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).ctx("cannot create", &self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .ctx("cannot chmod", &self.dir)?;
        let d = &self.dir;
        make_ca(d, "ca", "kafka-local throwaway CA")?;
        let ext = d.join("broker.ext");
        fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .ctx("cannot write", &ext)?;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "broker.key",
                "-out",
                "broker.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "broker.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-sha256",
                "-extfile",
                "broker.ext",
                "-out",
                "broker.crt",
            ],
        )?;
        // The key store Kafka reads (ssl.keystore.type=PEM): key, then the chain.
        let mut pem =
            fs::read_to_string(d.join("broker.key")).ctx("cannot read", &d.join("broker.key"))?;
        pem.push_str(
            &fs::read_to_string(d.join("broker.crt")).ctx("cannot read", &d.join("broker.crt"))?,
        );
        pem.push_str(&fs::read_to_string(self.ca_cert()).ctx("cannot read", &self.ca_cert())?);
        let ks = self.keystore();
        fs::write(&ks, pem).ctx("cannot write", &ks)?;
        fs::set_permissions(&ks, fs::Permissions::from_mode(0o600)).ctx("cannot chmod", &ks)?;
        for f in ["broker.csr", "broker.ext", "ca.srl"] {
            let _ = fs::remove_file(d.join(f));
        }
        Ok(())
    }
}

/// A self-signed CA certificate `dir/NAME.pem` with key `dir/NAME.key` (also for tests that
/// need a CA the broker's certificate is not signed by).
pub fn make_ca(dir: &Path, name: &str, common_name: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir).ctx("cannot create", dir)?;
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subj = format!("/CN={common_name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "3650",
            "-sha256",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    Ok(dir.join(pem))
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let bin = which("openssl").ok_or_else(|| {
        Error::failed("openssl not found (start --tls makes its certificates with it). On Debian: apt-get install openssl")
    })?;
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running openssl", e))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "openssl {} failed in {}: {}",
            args.first().copied().unwrap_or_default(),
            show(dir),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A listener's address list and the client properties that reach it, e.g. for librdkafka:
/// `bootstrap.servers`, `security.protocol`, `sasl.mechanism`, `sasl.username`,
/// `sasl.password`, `ssl.ca.location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub bootstrap: String,
    /// (key, value) besides `bootstrap.servers`.
    pub properties: Vec<(String, String)>,
}

impl ClientSettings {
    pub fn plaintext(bootstrap: String) -> ClientSettings {
        ClientSettings {
            bootstrap,
            properties: vec![("security.protocol".into(), "PLAINTEXT".into())],
        }
    }

    pub fn sasl(bootstrap: String, mech: SaslMechanism, user: &User) -> ClientSettings {
        ClientSettings {
            bootstrap,
            properties: vec![
                ("security.protocol".into(), "SASL_PLAINTEXT".into()),
                ("sasl.mechanism".into(), mech.kafka_name().into()),
                ("sasl.username".into(), user.name.clone()),
                ("sasl.password".into(), user.password.clone()),
            ],
        }
    }

    pub fn tls(bootstrap: String, ca: &Path) -> ClientSettings {
        ClientSettings {
            bootstrap,
            properties: vec![
                ("security.protocol".into(), "SSL".into()),
                ("ssl.ca.location".into(), ca.display().to_string()),
            ],
        }
    }

    /// The value of one property.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The same with one property replaced (e.g. a wrong `sasl.password`).
    pub fn with(mut self, key: &str, value: &str) -> ClientSettings {
        self.properties.retain(|(k, _)| k != key);
        self.properties.push((key.into(), value.into()));
        self
    }

    /// An rdkafka configuration with these settings (add `group.id` etc. as needed).
    pub fn client_config(&self) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// As a Java/librdkafka properties file.
    pub fn properties_file(&self) -> String {
        let mut s = format!("bootstrap.servers={}\n", self.bootstrap);
        for (k, v) in &self.properties {
            s.push_str(&format!("{k}={v}\n"));
        }
        s
    }

    /// One line: `BOOTSTRAP key=value …` (what `start` prints for each secured listener).
    pub fn line(&self) -> String {
        let mut s = self.bootstrap.clone();
        for (k, v) in &self.properties {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings() {
        let u = User {
            name: "alice".into(),
            password: "pw".into(),
        };
        let s = ClientSettings::sasl("127.0.0.1:1".into(), SaslMechanism::ScramSha512, &u);
        assert_eq!(s.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            s.line(),
            "127.0.0.1:1 security.protocol=SASL_PLAINTEXT sasl.mechanism=SCRAM-SHA-512 sasl.username=alice sasl.password=pw"
        );
        let wrong = s.with("sasl.password", "nope");
        assert_eq!(wrong.get("sasl.password"), Some("nope"));
        assert_eq!(wrong.properties.len(), 4);
        let t = ClientSettings::tls("127.0.0.1:2".into(), Path::new("/d/tls/ca.pem"));
        assert_eq!(
            t.properties_file(),
            "bootstrap.servers=127.0.0.1:2\nsecurity.protocol=SSL\nssl.ca.location=/d/tls/ca.pem\n"
        );
    }
}
