//! A small blocking RESP2 client for the Redis workloads: requests encoded as arrays of bulk
//! strings, replies parsed by [`parse`] (pure, incremental), and [`Conn`], one TCP connection
//! whose every connect, read and write has a timeout. The harness drives Redis and Sentinel as
//! black boxes, so it has its own client rather than a Keel crate's.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`: the whole error line.
    Error(String),
    Int(i64),
    /// `$n` (None: `$-1`, nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None: `*-1`, nil).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A bulk or status reply as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Status(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The error line, if this is an error reply.
    pub fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }
}

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

/// A request as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from the start of `buf`: `Ok(None)` when more bytes are needed, else the reply and
/// the bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if buf.is_empty() {
        return Ok(None);
    }
    let line = std::str::from_utf8(&buf[1..end]).map_err(|_| RespError::Protocol("line is not UTF-8".into()))?;
    let after = end + 2;
    let int = || {
        line.parse::<i64>()
            .map_err(|_| RespError::Protocol(format!("bad length or integer {line:?}")))
    };
    match buf[0] {
        b'+' => Ok(Some((Reply::Status(line.to_string()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_string()), after))),
        b':' => Ok(Some((Reply::Int(int()?), after))),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string not ended by CRLF".into()));
            }
            Ok(Some((Reply::Bulk(Some(buf[after..after + n].to_vec())), after + n + 2)))
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::with_capacity(n.min(1024) as usize);
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(RespError::Protocol(format!("unknown reply type byte {other:#x}"))),
    }
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
    fn encodes_arrays_of_bulk_strings() {
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec());
        assert_eq!(encode(&[]), b"*0\r\n".to_vec());
    }

    #[test]
    fn parses_every_reply_type_and_waits_for_whole_replies() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Status("OK".into())),
            (
                b"-NOREPLICAS Not enough good replicas\r\n",
                Reply::Error("NOREPLICAS Not enough good replicas".into()),
            ),
            (b":-3\r\n", Reply::Int(-3)),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"$5\r\na\r\nbc\r\n", Reply::Bulk(Some(b"a\r\nbc".to_vec()))),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n",
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"127.0.0.1".to_vec())),
                    Reply::Bulk(Some(b"6379".to_vec())),
                ])),
            ),
            (
                b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n",
                Reply::Array(Some(vec![
                    Reply::Array(Some(vec![Reply::Int(1)])),
                    Reply::Bulk(Some(vec![])),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]).unwrap(), None, "{bytes:?} cut at {cut}");
            }
            let mut more = bytes.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(parse(&more).unwrap(), Some((want, bytes.len())), "{bytes:?}");
        }
    }

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
