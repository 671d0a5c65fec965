//! Two Kafka admin requests librdkafka does not offer, spoken directly over a PLAINTEXT
//! connection: ApiVersions v3 (the cluster's finalized features, as `Admin.describeFeatures`
//! reports them) and DescribeQuorum (the active controller of the KRaft quorum, its epoch and
//! voters, as `Admin.describeMetadataQuorum`). Only the fields `describe` prints are kept.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const API_VERSIONS: i16 = 18;
const DESCRIBE_QUORUM: i16 = 55;
const CLIENT_ID: &str = "kafka-local";

/// The KRaft quorum as DescribeQuorum reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub voters: Vec<i32>,
}

/// A finalized feature and its level (`metadata.version=27`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub max_version_level: i16,
}

/// One connection to a broker.
pub struct Conn {
    stream: TcpStream,
    correlation: i32,
    deadline: Instant,
    /// The highest DescribeQuorum version both sides speak (from ApiVersions), if any.
    quorum_version: Option<i16>,
    features: Vec<Feature>,
}

impl Conn {
    /// Connects to the first address of `bootstrap` (a comma-separated list) that answers,
    /// and asks its ApiVersions.
    pub fn connect(bootstrap: &str, timeout: Duration) -> Result<Conn, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no address");
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            let Some(sa) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
                last = format!("{addr}: not an address");
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&sa, left) {
                Ok(stream) => {
                    let mut c = Conn {
                        stream,
                        correlation: 0,
                        deadline,
                        quorum_version: None,
                        features: Vec::new(),
                    };
                    match c.api_versions() {
                        Ok(()) => return Ok(c),
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// The cluster's finalized features, sorted by name.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    fn call(
        &mut self,
        api_key: i16,
        version: i16,
        body: &[u8],
        flexible_response: bool,
    ) -> Result<Vec<u8>, String> {
        self.correlation += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&api_key.to_be_bytes());
        req.extend_from_slice(&version.to_be_bytes());
        req.extend_from_slice(&self.correlation.to_be_bytes());
        req.extend_from_slice(&(CLIENT_ID.len() as i16).to_be_bytes());
        req.extend_from_slice(CLIENT_ID.as_bytes());
        req.push(0); // request header v2: no tagged fields
        req.extend_from_slice(body);
        let mut frame = (req.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&req);
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".to_owned(),
            _ => e.to_string(),
        };
        self.stream.set_write_timeout(Some(left)).map_err(io)?;
        self.stream.set_read_timeout(Some(left)).map_err(io)?;
        self.stream.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len = i32::from_be_bytes(len);
        if !(4..=16 << 20).contains(&len) {
            return Err(format!("bad response size {len}"));
        }
        let mut resp = vec![0u8; len as usize];
        self.stream.read_exact(&mut resp).map_err(io)?;
        let mut r = Reader::new(&resp);
        if r.i32()? != self.correlation {
            return Err("response to another request".into());
        }
        if flexible_response {
            r.skip_tags()?;
        }
        Ok(resp[r.pos..].to_vec())
    }

    fn api_versions(&mut self) -> Result<(), String> {
        let mut body = Vec::new();
        put_compact_str(&mut body, CLIENT_ID);
        put_compact_str(&mut body, env!("CARGO_PKG_VERSION"));
        body.push(0);
        // ApiVersions responses always have header v0 (so old clients can read them).
        let resp = self.call(API_VERSIONS, 3, &body, false)?;
        let (quorum_version, features) = parse_api_versions(&resp)?;
        self.quorum_version = quorum_version;
        self.features = features;
        Ok(())
    }

    /// The KRaft quorum of `__cluster_metadata` (the broker forwards the request to the
    /// active controller).
    pub fn describe_quorum(&mut self) -> Result<Quorum, String> {
        let version = self
            .quorum_version
            .ok_or("the broker does not support DescribeQuorum")?;
        let mut body = Vec::new();
        put_uvarint(&mut body, 2); // one topic
        put_compact_str(&mut body, "__cluster_metadata");
        put_uvarint(&mut body, 2); // one partition
        body.extend_from_slice(&0i32.to_be_bytes());
        body.push(0);
        body.push(0);
        body.push(0);
        let resp = self.call(DESCRIBE_QUORUM, version, &body, true)?;
        parse_describe_quorum(&resp, version)
    }
}

/// From an ApiVersions v3 response body: the DescribeQuorum version to use (at most 2) and the
/// finalized features.
pub fn parse_api_versions(body: &[u8]) -> Result<(Option<i16>, Vec<Feature>), String> {
    let mut r = Reader::new(body);
    let err = r.i16()?;
    if err != 0 {
        return Err(format!("ApiVersions error code {err}"));
    }
    let mut quorum = None;
    for _ in 0..r.compact_len()? {
        let (key, min, max) = (r.i16()?, r.i16()?, r.i16()?);
        r.skip_tags()?;
        if key == DESCRIBE_QUORUM && min <= 2 {
            quorum = Some(max.min(2));
        }
    }
    r.i32()?; // throttle_time_ms
    let mut features = Vec::new();
    for _ in 0..r.uvarint()? {
        let tag = r.uvarint()?;
        let size = r.uvarint()? as usize;
        let field = r.take(size)?;
        if tag == 2 {
            let mut f = Reader::new(field);
            for _ in 0..f.compact_len()? {
                let name = f.compact_str()?;
                let max_version_level = f.i16()?;
                f.i16()?; // min_version_level
                f.skip_tags()?;
                features.push(Feature {
                    name,
                    max_version_level,
                });
            }
        }
    }
    features.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((quorum, features))
}

/// From a DescribeQuorum response body (versions 0-2).
pub fn parse_describe_quorum(body: &[u8], version: i16) -> Result<Quorum, String> {
    let mut r = Reader::new(body);
    let err = r.i16()?;
    if version >= 2 {
        r.compact_nullable_str()?;
    }
    if err != 0 {
        return Err(format!("DescribeQuorum error code {err}"));
    }
    for _ in 0..r.compact_len()? {
        r.compact_str()?;
        // The metadata topic has one partition: its quorum is the first partition's.
        if r.compact_len()? > 0 {
            r.i32()?; // partition_index
            let perr = r.i16()?;
            if version >= 2 {
                r.compact_nullable_str()?;
            }
            if perr != 0 {
                return Err(format!("DescribeQuorum partition error code {perr}"));
            }
            let leader_id = r.i32()?;
            let leader_epoch = r.i32()?;
            r.i64()?; // high_watermark
            let mut voters = Vec::new();
            for list in 0..2 {
                for _ in 0..r.compact_len()? {
                    let id = r.i32()?;
                    if version >= 2 {
                        r.take(16)?; // replica_directory_id
                    }
                    r.i64()?; // log_end_offset
                    if version >= 1 {
                        r.i64()?;
                        r.i64()?;
                    }
                    r.skip_tags()?;
                    if list == 0 {
                        voters.push(id);
                    }
                }
            }
            return Ok(Quorum {
                leader_id,
                leader_epoch,
                voters,
            });
        }
    }
    Err("DescribeQuorum answered without the metadata partition".into())
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_compact_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64 + 1);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or("response too short")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn uvarint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("bad varint".into())
    }

    /// A compact array's length (null counts as empty).
    fn compact_len(&mut self) -> Result<u64, String> {
        Ok(self.uvarint()?.saturating_sub(1))
    }

    fn compact_str(&mut self) -> Result<String, String> {
        Ok(self.compact_nullable_str()?.unwrap_or_default())
    }

    fn compact_nullable_str(&mut self) -> Result<Option<String>, String> {
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(None);
        }
        let b = self.take(n as usize - 1)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }

    fn skip_tags(&mut self) -> Result<(), String> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_with_features() {
        let mut b = Vec::new();
        b.extend_from_slice(&0i16.to_be_bytes());
        put_uvarint(&mut b, 3); // two APIs
        for (k, min, max) in [(0i16, 0i16, 11i16), (55, 0, 2)] {
            b.extend_from_slice(&k.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
            b.push(0);
        }
        b.extend_from_slice(&0i32.to_be_bytes());
        let mut finalized = Vec::new();
        put_uvarint(&mut finalized, 3);
        for (name, level) in [("metadata.version", 27i16), ("group.version", 1)] {
            put_compact_str(&mut finalized, name);
            finalized.extend_from_slice(&level.to_be_bytes());
            finalized.extend_from_slice(&1i16.to_be_bytes());
            finalized.push(0);
        }
        put_uvarint(&mut b, 2); // tags: epoch (1) and finalized features (2)
        put_uvarint(&mut b, 1);
        put_uvarint(&mut b, 8);
        b.extend_from_slice(&5i64.to_be_bytes());
        put_uvarint(&mut b, 2);
        put_uvarint(&mut b, finalized.len() as u64);
        b.extend_from_slice(&finalized);
        let (q, f) = parse_api_versions(&b).expect("parses");
        assert_eq!(q, Some(2));
        assert_eq!(
            f.iter()
                .map(|f| format!("{}={}", f.name, f.max_version_level))
                .collect::<Vec<_>>(),
            ["group.version=1", "metadata.version=27"]
        );
    }

    #[test]
    fn describe_quorum_v2() {
        let mut b = Vec::new();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.push(0); // null error message
        put_uvarint(&mut b, 2);
        put_compact_str(&mut b, "__cluster_metadata");
        put_uvarint(&mut b, 2);
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.push(0);
        b.extend_from_slice(&2i32.to_be_bytes()); // leader
        b.extend_from_slice(&7i32.to_be_bytes()); // epoch
        b.extend_from_slice(&100i64.to_be_bytes());
        put_uvarint(&mut b, 4); // three voters
        for id in [1i32, 2, 3] {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&[0u8; 16]);
            b.extend_from_slice(&[0u8; 24]);
            b.push(0);
        }
        put_uvarint(&mut b, 1); // no observers
        b.push(0);
        b.push(0);
        put_uvarint(&mut b, 1); // nodes
        b.push(0);
        let q = parse_describe_quorum(&b, 2).expect("parses");
        assert_eq!(
            q,
            Quorum {
                leader_id: 2,
                leader_epoch: 7,
                voters: vec![1, 2, 3]
            }
        );
        assert!(parse_describe_quorum(&b[..20], 2).is_err());
    }
}
