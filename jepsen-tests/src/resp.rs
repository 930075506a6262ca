//! A small blocking RESP2 client for the Redis workloads: requests encoded and replies parsed by
//! keel-codec's pure RESP2 half ([`encode`], [`parse`]), and [`Conn`], one TCP connection whose
//! every connect, read and write has a timeout. The harness drives Redis and Sentinel as
//! black boxes, so it has its own blocking client rather than the node's async one; only the
//! protocol's bytes are shared.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use keel_codec::resp::{encode, Reply};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Could not connect: the request certainly never reached the server.
    #[error("connect {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    /// Sent (or partly sent) and no whole reply within the timeout, or the connection broke.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl RespError {
    /// True when the request may have reached the server (so a write may have happened).
    pub fn maybe_sent(&self) -> bool {
        !matches!(self, RespError::Connect { .. })
    }
}

/// One reply from the start of `buf` ([`keel_codec::resp::parse`], no bound on a bulk reply):
/// `Ok(None)` when more bytes are needed, else the reply and the bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    keel_codec::resp::parse(buf, usize::MAX).map_err(|e| RespError::Protocol(e.0))
}

/// One connection. Every call is bounded by the timeout given at connect.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub addr: String,
}

impl Conn {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn, RespError> {
        let err = |source| RespError::Connect {
            addr: addr.to_string(),
            source,
        };
        let sa = addr
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("no address")))?;
        let stream = TcpStream::connect_timeout(&sa, timeout).map_err(err)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::new(),
            addr: addr.to_string(),
        })
    }

    /// Changes the read timeout (a `WAIT` needs longer than its own timeout).
    pub fn set_timeout(&self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
    }

    /// Sends several requests at once and reads as many replies.
    pub fn pipeline(&mut self, reqs: &[&[&str]]) -> Result<Vec<Reply>, RespError> {
        let mut out = Vec::new();
        for r in reqs {
            out.extend(encode(r));
        }
        self.stream.write_all(&out)?;
        let mut replies = Vec::with_capacity(reqs.len());
        let mut chunk = [0u8; 16 * 1024];
        while replies.len() < reqs.len() {
            if let Some((r, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                replies.push(r);
                continue;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(RespError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(replies)
    }

    pub fn call(&mut self, args: &[&str]) -> Result<Reply, RespError> {
        Ok(self.pipeline(&[args])?.remove(0))
    }
}

/// One request on a fresh connection.
pub fn call(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply, RespError> {
    Conn::connect(addr, timeout)?.call(args)
}

/// `INFO <section>` (or any `k:v` text) as key → value.
pub fn info_fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_replies_are_protocol_errors() {
        for bad in [&b"?x\r\n"[..], b":12a\r\n", b"$3\r\nabcd\r\n", b"*x\r\n"] {
            assert!(matches!(parse(bad), Err(RespError::Protocol(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_connection_was_never_sent() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = call(&addr, &["PING"], Duration::from_millis(300)).unwrap_err();
        assert!(!e.maybe_sent(), "{e}");
    }

    #[test]
    fn info_text_to_fields() {
        let f = info_fields("# Replication\r\nrole:master\r\nconnected_slaves:2\r\n");
        assert_eq!(f["role"], "master");
        assert_eq!(f["connected_slaves"], "2");
    }
}
