//! The benchmark's Redis client: blocking, one persistent connection per server, every connect,
//! write and read under a short timeout. Requests are encoded and replies parsed by
//! `keel_replication::service::resp` (the managed-Redis adapter's own RESP2 code).
//!
//! [`Discovering`] is the failover client: it asks a Sentinel address for the master
//! (`SENTINEL get-master-addr-by-name`), keeps a connection to the master it was told, and writes
//! there; on any failure (a Sentinel that does not answer or names no master, a master that refuses
//! the connection, times out or answers an error such as `-READONLY` or `-NOREPLICAS`) it drops the
//! connection and asks the next Sentinel in turn.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use keel_replication::service::resp::{encode, parse, Reply};

/// One RESP connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub addr: String,
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no address for {addr}")))
}

impl Conn {
    /// Connect to `addr` within `timeout`; every later read and write has the same timeout.
    pub fn open(addr: &str, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&resolve(addr)?, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(256),
            addr: addr.to_string(),
        })
    }

    /// Send `args` and read one reply (an `-ERR` reply is a reply, not an error).
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.stream.write_all(&encode(args))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            match parse(&self.buf) {
                Ok(Some((reply, _))) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One short-lived call to `addr`.
pub fn call(addr: &str, args: &[&str], timeout: Duration) -> std::io::Result<Reply> {
    Conn::open(addr, timeout)?.call(args)
}

/// `INFO <section>` of the server at `addr` as `key → value`.
pub fn info(addr: &str, section: &str, timeout: Duration) -> Option<std::collections::BTreeMap<String, String>> {
    let text = call(addr, &["INFO", section], timeout).ok()?.text()?;
    Some(
        text.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The `host:port` a `SENTINEL get-master-addr-by-name` reply names, if it names one.
pub fn master_of(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Array(Some(items)) if items.len() == 2 => {
            let host = items[0].text()?;
            let port = items[1].text()?;
            Some(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            })
        }
        _ => None,
    }
}

/// Ask the Sentinel at `sentinel` for the master of `name`.
pub fn ask_master(sentinel: &str, name: &str, timeout: Duration) -> Option<String> {
    let r = call(sentinel, &["SENTINEL", "get-master-addr-by-name", name], timeout).ok()?;
    master_of(&r)
}

/// A write the master acknowledged.
pub struct Ack {
    /// The master that acknowledged it.
    pub master: String,
    pub at: Instant,
}

/// Why one attempt did not get an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Miss {
    /// The Sentinel did not answer in time, or refused the connection.
    SentinelDown,
    /// The Sentinel named no master.
    NoMaster,
    /// The named master (its address) refused the connection or timed out.
    MasterDown(String),
    /// The named master (its address) answered with this error's first word (`READONLY`,
    /// `NOREPLICAS`, ...).
    Refused(String, String),
}

/// A client that finds the master through Sentinel addresses and writes to it.
pub struct Discovering {
    sentinels: Vec<String>,
    name: String,
    next: usize,
    timeout: Duration,
    master: Option<Conn>,
}

impl Discovering {
    pub fn new(sentinels: Vec<String>, name: &str, timeout: Duration) -> Discovering {
        Discovering {
            sentinels,
            name: name.to_string(),
            next: 0,
            timeout,
            master: None,
        }
    }

    fn discover(&mut self) -> Result<(), Miss> {
        let sentinel = self.sentinels[self.next % self.sentinels.len()].clone();
        let reply = call(
            &sentinel,
            &["SENTINEL", "get-master-addr-by-name", &self.name],
            self.timeout,
        )
        .map_err(|_| Miss::SentinelDown)?;
        let addr = master_of(&reply).ok_or(Miss::NoMaster)?;
        self.master = Some(Conn::open(&addr, self.timeout).map_err(|_| Miss::MasterDown(addr.clone()))?);
        Ok(())
    }

    /// One attempt: discover the master if not connected, then `SET key value`. On a miss the
    /// connection is dropped and the next attempt asks the next Sentinel.
    pub fn set(&mut self, key: &str, value: &str) -> Result<Ack, Miss> {
        let result = self.try_set(key, value);
        if result.is_err() {
            self.master = None;
            self.next += 1;
        }
        result
    }

    fn try_set(&mut self, key: &str, value: &str) -> Result<Ack, Miss> {
        if self.master.is_none() {
            self.discover()?;
        }
        let conn = self.master.as_mut().ok_or(Miss::NoMaster)?;
        match conn.call(&["SET", key, value]) {
            Ok(Reply::Status(s)) if s == "OK" => Ok(Ack {
                master: conn.addr.clone(),
                at: Instant::now(),
            }),
            Ok(Reply::Error(e)) => Err(Miss::Refused(
                conn.addr.clone(),
                e.split_whitespace().next().unwrap_or_default().to_string(),
            )),
            Ok(other) => Err(Miss::Refused(conn.addr.clone(), format!("{other:?}"))),
            Err(_) => Err(Miss::MasterDown(conn.addr.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_of_reads_host_and_port() {
        let r = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"127.0.0.1".to_vec())),
            Reply::Bulk(Some(b"6380".to_vec())),
        ]));
        assert_eq!(master_of(&r).as_deref(), Some("127.0.0.1:6380"));
        let v6 = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"::1".to_vec())),
            Reply::Bulk(Some(b"6380".to_vec())),
        ]));
        assert_eq!(master_of(&v6).as_deref(), Some("[::1]:6380"));
        assert_eq!(master_of(&Reply::Array(None)), None);
        assert_eq!(master_of(&Reply::Bulk(None)), None);
    }
}
