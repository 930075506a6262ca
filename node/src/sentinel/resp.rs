//! RESP, the Redis wire protocol, as pure functions: [`parse_request`] reads one request (a
//! multibulk array of bulk strings, or an inline line as `redis-cli` and telnet send) from the
//! bytes received so far, and [`Reply::encode`] writes a reply in RESP2 or RESP3.

/// Largest request accepted, in bytes: Sentinel commands are a few short words.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most arguments in one request.
pub const MAX_ARGS: usize = 1024;

/// A request that cannot be read; the connection answers the error and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("Protocol error: request over {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLen,
    #[error("Protocol error: invalid bulk length")]
    BadBulkLen,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: bulk string not terminated by CRLF")]
    BadTerminator,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One parsed request: its arguments and how many bytes of the buffer it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// The first complete request in `buf`, `Ok(None)` when more bytes are needed. An empty inline
/// line parses to no arguments (the caller skips it, as Redis does).
pub fn parse_request(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

/// The position of the first CRLF at or after `from`, or an error if none fits in the limit.
fn line_end(buf: &[u8], from: usize) -> Result<Option<usize>, RespError> {
    match buf[from..].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if buf.len() > MAX_REQUEST_BYTES => Err(RespError::TooLarge),
        None => Ok(None),
    }
}

fn parse_len(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    let Some(end) = line_end(buf, 1)? else {
        return Ok(None);
    };
    let n = parse_len(&buf[1..end]).ok_or(RespError::BadArrayLen)?;
    if n > MAX_ARGS as i64 {
        return Err(RespError::BadArrayLen);
    }
    let mut pos = end + 2;
    let mut args = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(RespError::ExpectedBulk(buf[pos] as char));
        }
        let Some(end) = line_end(buf, pos + 1)? else {
            return Ok(None);
        };
        let len = parse_len(&buf[pos + 1..end]).ok_or(RespError::BadBulkLen)?;
        if !(0..=MAX_REQUEST_BYTES as i64).contains(&len) {
            return Err(RespError::BadBulkLen);
        }
        let start = end + 2;
        let stop = start + len as usize;
        if stop + 2 > MAX_REQUEST_BYTES {
            return Err(RespError::TooLarge);
        }
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(RespError::BadTerminator);
        }
        args.push(buf[start..stop].to_vec());
        pos = stop + 2;
    }
    Ok(Some((args, pos)))
}

/// An inline request: words separated by spaces, ended by `\n` (with or without `\r`); double
/// quotes group words.
fn parse_inline(buf: &[u8]) -> Result<Option<Parsed>, RespError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_REQUEST_BYTES {
            Err(RespError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if nl > MAX_REQUEST_BYTES {
        return Err(RespError::TooLarge);
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let mut args = Vec::new();
    let mut word: Option<Vec<u8>> = None;
    let mut quoted = false;
    for &b in line {
        match b {
            b'"' => {
                quoted = !quoted;
                word.get_or_insert_with(Vec::new);
            }
            b' ' | b'\t' if !quoted => {
                if let Some(w) = word.take() {
                    args.push(w);
                }
            }
            _ => word.get_or_insert_with(Vec::new).push(b),
        }
    }
    if quoted {
        return Err(RespError::UnbalancedQuotes);
    }
    args.extend(word);
    if args.len() > MAX_ARGS {
        return Err(RespError::BadArrayLen);
    }
    Ok(Some((args, nl + 1)))
}

/// A reply. `Map` and `Push` are RESP3 types that RESP2 sends as flat arrays; `Nil` is `_` in
/// RESP3 and a nil bulk string in RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn bulk(s: impl AsRef<str>) -> Reply {
        Reply::Bulk(s.as_ref().as_bytes().to_vec())
    }

    pub fn err(s: impl Into<String>) -> Reply {
        Reply::Error(s.into())
    }

    /// A map of bulk strings to bulk strings, as Sentinel answers `SENTINEL master`.
    pub fn fields<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Reply {
        Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                .collect(),
        )
    }

    /// Append this reply to `out`, in RESP3 when `resp3` is set, else RESP2.
    pub fn encode(&self, resp3: bool, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, prefix: u8, s: &str) {
            out.push(prefix);
            // A simple string or error must stay on one line.
            out.extend(s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        }
        match self {
            Reply::Simple(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Int(i) => line(out, b':', &i.to_string()),
            Reply::Bulk(b) => {
                line(out, b'$', &b.len().to_string());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', &items.len().to_string());
                items.iter().for_each(|r| r.encode(resp3, out));
            }
            Reply::Push(items) => {
                line(out, if resp3 { b'>' } else { b'*' }, &items.len().to_string());
                items.iter().for_each(|r| r.encode(resp3, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(2 * pairs.len()).to_string());
                }
                for (k, v) in pairs {
                    k.encode(resp3, out);
                    v.encode(resp3, out);
                }
            }
        }
    }

    /// The encoded bytes (for tests and one-off replies).
    pub fn to_bytes(&self, resp3: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(resp3, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_request() {
        let req = b"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n";
        assert_eq!(parse_request(req), Ok(Some((args(&["PING", "hello"]), req.len()))));
    }

    #[test]
    fn two_pipelined_requests_parse_one_at_a_time() {
        let req = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nROLE\r\n";
        let (a, used) = parse_request(req).unwrap().unwrap();
        assert_eq!(a, args(&["PING"]));
        assert_eq!(
            parse_request(&req[used..]),
            Ok(Some((args(&["ROLE"]), req.len() - used)))
        );
    }

    #[test]
    fn every_prefix_of_a_request_asks_for_more() {
        let req = b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$4\r\nkeel\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        let (a, used) = parse_request(req).unwrap().unwrap();
        assert_eq!(used, req.len());
        assert_eq!(a, args(&["SENTINEL", "get-master-addr-by-name", "keel"]));
    }

    #[test]
    fn inline_requests() {
        assert_eq!(parse_request(b"PING\r\n"), Ok(Some((args(&["PING"]), 6))));
        assert_eq!(
            parse_request(b"sentinel  masters\n"),
            Ok(Some((args(&["sentinel", "masters"]), 18)))
        );
        assert_eq!(
            parse_request(b"CLIENT SETNAME \"a b\"\r\n"),
            Ok(Some((args(&["CLIENT", "SETNAME", "a b"]), 22)))
        );
        assert_eq!(parse_request(b"\r\n"), Ok(Some((vec![], 2))));
        assert_eq!(parse_request(b"PIN"), Ok(None));
        assert_eq!(parse_request(b"X \"a\n"), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn malformed_multibulk_is_an_error() {
        assert_eq!(parse_request(b"*x\r\n"), Err(RespError::BadArrayLen));
        assert_eq!(parse_request(b"*1\r\n+PING\r\n"), Err(RespError::ExpectedBulk('+')));
        assert_eq!(parse_request(b"*1\r\n$-3\r\n"), Err(RespError::BadBulkLen));
        assert_eq!(parse_request(b"*1\r\n$2\r\nabcd\r\n"), Err(RespError::BadTerminator));
        assert_eq!(
            parse_request(format!("*{}\r\n", MAX_ARGS + 1).as_bytes()),
            Err(RespError::BadArrayLen)
        );
    }

    #[test]
    fn oversized_input_is_refused_before_it_is_all_read() {
        // A bulk string announced over the limit is refused at its header.
        let big = format!("*1\r\n${}\r\n", MAX_REQUEST_BYTES + 1);
        assert_eq!(parse_request(big.as_bytes()), Err(RespError::BadBulkLen));
        // An inline line with no end, past the limit.
        let long = vec![b'a'; MAX_REQUEST_BYTES + 1];
        assert_eq!(parse_request(&long), Err(RespError::TooLarge));
        // A header line with no end, past the limit.
        let mut header = b"*".to_vec();
        header.extend(std::iter::repeat_n(b'1', MAX_REQUEST_BYTES + 1));
        assert_eq!(parse_request(&header), Err(RespError::TooLarge));
    }

    #[test]
    fn encodes_resp2_and_resp3() {
        let r = Reply::Array(vec![Reply::bulk("sentinel"), Reply::Array(vec![Reply::bulk("keel")])]);
        assert_eq!(r.to_bytes(false), b"*2\r\n$8\r\nsentinel\r\n*1\r\n$4\r\nkeel\r\n");
        assert_eq!(Reply::Nil.to_bytes(false), b"$-1\r\n");
        assert_eq!(Reply::Nil.to_bytes(true), b"_\r\n");
        let m = Reply::fields([("ip", "127.0.0.1")]);
        assert_eq!(m.to_bytes(false), b"*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n");
        assert_eq!(m.to_bytes(true), b"%1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n");
        let p = Reply::Push(vec![Reply::Int(1)]);
        assert_eq!(p.to_bytes(false), b"*1\r\n:1\r\n");
        assert_eq!(p.to_bytes(true), b">1\r\n:1\r\n");
        assert_eq!(Reply::err("ERR a\r\nb").to_bytes(false), b"-ERR a  b\r\n");
        assert_eq!(Reply::ok().to_bytes(true), b"+OK\r\n");
    }
}
