//! The load generator's HTTP/1.1 client for the measured writes (Keel's `PUT /v1/kv/...` and
//! etcd's `POST /v3/kv/put` alike): keep-alive connections to one server, a connection per
//! write in flight, taken from and returned to an idle list. It writes each request in one
//! `write` (head and body together) and reads the answer by its `content-length` (or chunked
//! encoding), nothing more: no URL parsing, no header map, no background connection task. On
//! the 2-core machine the generator shares with the three servers it measures, reqwest used
//! about 26 µs of CPU per write at 128 B x 64 clients (35 % of a core at 13,500 writes/s), all
//! of it taken from the servers. Management calls and the lag probe's reads still use reqwest.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::REQUEST_TIMEOUT;

/// Largest answer head or body accepted (answers to writes are a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

pub struct Client {
    /// `host:port`, also sent as the `host` header.
    addr: String,
    idle: Mutex<Vec<TcpStream>>,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// One request; the answer's status and body, or the kind of transport failure
    /// (`timeout (10 s)`, `connect error`, `transport error`). The whole exchange,
    /// connecting included, has `REQUEST_TIMEOUT`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let reused = self.idle.lock().unwrap().pop();
        let was_reused = reused.is_some();
        match self.exchange(reused, method, path, content_type, body).await {
            // An idle connection the server closed meanwhile: once more on a new one (every
            // measured write is a PUT of a new key, so sending it again changes nothing).
            Err(e) if was_reused && e.starts_with("transport error") => {
                self.exchange(None, method, path, content_type, body).await
            }
            r => r,
        }
    }

    async fn exchange(
        &self,
        conn: Option<TcpStream>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let exchange = async {
            let mut conn = match conn {
                Some(c) => c,
                None => {
                    let c = TcpStream::connect(&self.addr)
                        .await
                        .map_err(|_| "connect error".to_string())?;
                    c.set_nodelay(true).map_err(|_| "connect error".to_string())?;
                    c
                }
            };
            let mut req = Vec::with_capacity(160 + body.len());
            req.extend_from_slice(method.as_bytes());
            req.push(b' ');
            req.extend_from_slice(path.as_bytes());
            req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
            req.extend_from_slice(self.addr.as_bytes());
            if let Some(ct) = content_type {
                req.extend_from_slice(b"\r\ncontent-type: ");
                req.extend_from_slice(ct.as_bytes());
            }
            req.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(body);
            conn.write_all(&req).await.map_err(|_| "transport error".to_string())?;
            let (status, answer, keep) = read_answer(&mut conn)
                .await
                .map_err(|e| format!("transport error{e}"))?;
            Ok::<_, String>((status, answer, keep.then_some(conn)))
        };
        let (status, answer, conn) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("timeout ({} s)", REQUEST_TIMEOUT.as_secs()))??;
        if let Some(c) = conn {
            self.idle.lock().unwrap().push(c);
        }
        Ok((status, answer))
    }
}

/// Reads one answer: status, body, and whether the connection may be used again. The error
/// is a suffix for "transport error" (empty, or what was malformed).
async fn read_answer(conn: &mut TcpStream) -> Result<(u16, Vec<u8>, bool), String> {
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_ANSWER {
            return Err(": answer head too large".into());
        }
        read_more(conn, &mut buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ": answer head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(": no status line")?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| ": bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = !value.eq_ignore_ascii_case("close");
        }
    }
    let mut rest = buf.split_off(head_end);
    let body = if chunked {
        read_chunked(conn, rest).await?
    } else if let Some(len) = length {
        if len > MAX_ANSWER {
            return Err(": answer body too large".into());
        }
        while rest.len() < len {
            read_more(conn, &mut rest).await?;
        }
        if rest.len() > len {
            return Err(": bytes after the answer".into());
        }
        rest
    } else {
        // Neither: the body runs to the end of the connection.
        keep = false;
        while conn.read_buf(&mut rest).await.map_err(|_| String::new())? > 0 {
            if rest.len() > MAX_ANSWER {
                return Err(": answer body too large".into());
            }
        }
        rest
    };
    Ok((status, body, keep))
}

/// A chunked body (`rest`: what was read after the head so far).
async fn read_chunked(conn: &mut TcpStream, mut rest: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&rest, b"\r\n") {
                break i;
            }
            read_more(conn, &mut rest).await?;
        };
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or(": bad chunk size")?;
        if body.len() + size > MAX_ANSWER {
            return Err(": answer body too large".into());
        }
        // The chunk, then its CRLF (after the last, empty chunk: the final CRLF, no trailers).
        while rest.len() < line_end + 2 + size + 2 {
            read_more(conn, &mut rest).await?;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Ok(body);
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(4096);
    match conn.read_buf(buf).await {
        Ok(0) => Err(": connection closed".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(String::new()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
