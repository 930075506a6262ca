//! RESP2, the Redis protocol, as bytes: a request encoded as an array of bulk strings
//! ([`encode`]) and one reply parsed from the front of a buffer ([`parse`], incremental: it asks
//! for more bytes rather than failing on a partial reply) into a [`Reply`]. Pure: no IO and no
//! timeouts, which stay with each client.

/// A RESP2 reply.
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
    /// A bulk or status reply as text (INFO and status answers).
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

/// Bytes that are not a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

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

/// One reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the reply and
/// how many bytes it took. A bulk string longer than `max_bulk` is refused.
pub fn parse(buf: &[u8], max_bulk: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let err = |m: String| Err(ProtocolError(m));
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        return err("empty reply line".into());
    };
    let Ok(line) = std::str::from_utf8(rest) else {
        return err("reply line is not UTF-8".into());
    };
    let head = end + 2;
    let int = || {
        line.parse::<i64>()
            .map_err(|_| ProtocolError(format!("bad length or integer {line:?}")))
    };
    match kind {
        b'+' => Ok(Some((Reply::Status(line.to_string()), head))),
        b'-' => Ok(Some((Reply::Error(line.to_string()), head))),
        b':' => Ok(Some((Reply::Int(int()?), head))),
        b'$' => {
            let Ok(n) = usize::try_from(int()?) else {
                return Ok(Some((Reply::Bulk(None), head)));
            };
            if n > max_bulk {
                return err(format!("bulk reply of {n} bytes is too large"));
            }
            if buf.len() < head + n + 2 {
                return Ok(None);
            }
            if &buf[head + n..head + n + 2] != b"\r\n" {
                return err("bulk reply not terminated by CRLF".into());
            }
            Ok(Some((Reply::Bulk(Some(buf[head..head + n].to_vec())), head + n + 2)))
        }
        b'*' => {
            let Ok(n) = usize::try_from(int()?) else {
                return Ok(Some((Reply::Array(None), head)));
            };
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = head;
            for _ in 0..n {
                let Some((r, used)) = parse(&buf[at..], max_bulk)? else {
                    return Ok(None);
                };
                items.push(r);
                at += used;
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => err(format!("unknown reply type byte {other:#04x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
        parse(buf, 16)
    }

    #[test]
    fn encodes_arrays_of_bulk_strings() {
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec());
        assert_eq!(
            encode(&["REPLICAOF", "NO", "ONE"]),
            b"*3\r\n$9\r\nREPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE\r\n".to_vec()
        );
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
                assert_eq!(parsed(&bytes[..cut]).unwrap(), None, "{bytes:?} cut at {cut}");
            }
            let mut more = bytes.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(parsed(&more).unwrap(), Some((want, bytes.len())), "{bytes:?}");
        }
    }

    #[test]
    fn malformed_or_oversized_input_is_an_error() {
        for bad in ["?x\r\n", ":12a\r\n", "$3\r\nabcd\r\n", "*x\r\n", "\r\n", "$17\r\n"] {
            assert!(parsed(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
