//! Loopback ports: is one taken, and a run of free ones for a new cluster.

use std::net::TcpListener;

use crate::error::{Error, Result};

/// Something listens on `port` (any address, from /proc/net/tcp{,6}), or 127.0.0.1:`port`
/// cannot be bound.
pub fn port_busy(port: u16) -> bool {
    if listening_ports().contains(&port) {
        return true;
    }
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Local ports of listening TCP sockets (IPv4 and IPv6).
fn listening_ports() -> Vec<u16> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(parse_listening(&text));
        }
    }
    out
}

/// The ports of the LISTEN (state 0A) lines of a /proc/net/tcp table.
pub fn parse_listening(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = local.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// A first port P such that P..P+span were all free a moment ago (the kernel picks P, so
/// concurrent callers rarely collide; a caller still retries when a start finds one taken).
pub fn free_ports(span: u16) -> Result<u16> {
    for _ in 0..100 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = l.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop(l);
        if port.checked_add(span).is_none() {
            continue;
        }
        if (0..span).all(|i| !port_busy(port + i)) {
            return Ok(port);
        }
    }
    Err(Error::failed(format!(
        "found no {span} free consecutive loopback ports"
    )))
}

/// A port between 20000 and 59999 with `span` free ports from it (the class-data archive's
/// training broker), chosen at random.
pub fn random_free_ports(span: u16) -> Result<u16> {
    for i in 0..50u64 {
        let seed = crate::random_u64() ^ i;
        let port = 20000 + (seed % 40000) as u16;
        if (0..span).all(|k| !port_busy(port + k)) {
            return Ok(port);
        }
    }
    free_ports(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:2384 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listening(table), vec![0x2384]);
    }

    #[test]
    fn free_ports_are_free_and_a_listener_is_busy() {
        let p = free_ports(4).expect("free ports");
        for i in 0..4 {
            assert!(!port_busy(p + i), "port {} should be free", p + i);
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = l.local_addr().expect("addr").port();
        assert!(port_busy(taken));
    }
}
