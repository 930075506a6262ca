//! A minimal RESP2 client: enough to drive a managed `redis-server` (PING, INFO, REPLICAOF,
//! CONFIG SET, CLIENT PAUSE). One short-lived connection per call, every call under a timeout: the
//! server is on the same host and the duty loop calls it a few times a second, so connection
//! reuse would buy little and cost a reconnect path.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ServiceError;

/// Largest reply accepted (INFO replication is a few hundred bytes).
const MAX_REPLY: usize = 1 << 20;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple string or bulk), for INFO and status answers.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Encode a command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parse one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the reply
/// and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ServiceError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        return Err(ServiceError::Protocol("empty reply line".into()));
    };
    let line = std::str::from_utf8(rest).map_err(|_| ServiceError::Protocol("reply line is not utf-8".into()))?;
    let head = end + 2;
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| ServiceError::Protocol(format!("bad length or integer {s:?}")))
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(line.to_string()), head))),
        b'-' => Ok(Some((Reply::Error(line.to_string()), head))),
        b':' => Ok(Some((Reply::Integer(int(line)?), head))),
        b'$' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), head)));
            }
            let n = n as usize;
            if n > MAX_REPLY {
                return Err(ServiceError::Protocol(format!("bulk reply of {n} bytes is too large")));
            }
            if buf.len() < head + n + 2 {
                return Ok(None);
            }
            if &buf[head + n..head + n + 2] != b"\r\n" {
                return Err(ServiceError::Protocol("bulk reply not terminated by CRLF".into()));
            }
            Ok(Some((Reply::Bulk(Some(buf[head..head + n].to_vec())), head + n + 2)))
        }
        b'*' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), head)));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut at = head;
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
        other => Err(ServiceError::Protocol(format!("unknown reply type byte {other:#04x}"))),
    }
}

/// Send one command to `addr` and read its reply, all within `timeout`. A `-ERR` reply is
/// returned as [`ServiceError::Command`].
pub async fn call(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply, ServiceError> {
    let run = async {
        let mut s = TcpStream::connect(addr).await.map_err(ServiceError::Io)?;
        let _ = s.set_nodelay(true);
        s.write_all(&encode(args)).await.map_err(ServiceError::Io)?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = parse(&buf)? {
                return match reply {
                    Reply::Error(e) => Err(ServiceError::Command {
                        command: args.first().copied().unwrap_or_default().to_string(),
                        message: e,
                    }),
                    r => Ok(r),
                };
            }
            if buf.len() > MAX_REPLY {
                return Err(ServiceError::Protocol("reply too large".into()));
            }
            let n = s.read(&mut chunk).await.map_err(ServiceError::Io)?;
            if n == 0 {
                return Err(ServiceError::Protocol("connection closed before the reply".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| ServiceError::Timeout {
            command: args.first().copied().unwrap_or_default().to_string(),
            timeout_ms: timeout.as_millis() as u64,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_command_as_bulk_strings() {
        assert_eq!(encode(&["PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
        assert_eq!(
            encode(&["REPLICAOF", "NO", "ONE"]),
            b"*3\r\n$9\r\nREPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE\r\n".to_vec()
        );
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Reply::Simple("OK".into()), 5)));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Some((Reply::Error("ERR no".into()), 9)));
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Reply::Integer(42), 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").unwrap(),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        let (r, used) = parse(b"*2\r\n$6\r\nmaster\r\n:7\r\nrest").unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![Reply::Bulk(Some(b"master".to_vec())), Reply::Integer(7)]))
        );
        assert_eq!(used, 20);
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [&b""[..], b"+OK", b"$5\r\nab", b"*2\r\n:1\r\n", b"$3\r\nabc\r"] {
            assert_eq!(parse(partial).unwrap(), None, "{partial:?}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [&b"?x\r\n"[..], b":abc\r\n", b"$3\r\nabcd\r\n", b"\r\n"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
