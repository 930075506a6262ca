//! A minimal RESP2 client: enough to drive a managed `redis-server` (PING, INFO, REPLICAOF,
//! CONFIG SET, CLIENT PAUSE). One short-lived connection per call, every call under a timeout: the
//! server is on the same host and the duty loop calls it a few times a second, so connection
//! reuse would buy little and cost a reconnect path.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use keel_codec::resp::ProtocolError;
pub use keel_codec::resp::{encode, Reply};

use super::ServiceError;

/// Largest reply accepted (INFO replication is a few hundred bytes).
const MAX_REPLY: usize = 1 << 20;

impl From<ProtocolError> for ServiceError {
    fn from(e: ProtocolError) -> Self {
        ServiceError::Protocol(e.0)
    }
}

/// Parse one reply from the front of `buf` ([`keel_codec::resp::parse`], bulk replies up to 1 MiB):
/// `Ok(None)` when more bytes are needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ServiceError> {
    Ok(keel_codec::resp::parse(buf, MAX_REPLY)?)
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
    fn parses_into_this_reply_type_and_refuses_oversized_bulk_replies() {
        let (r, used) = parse(b"*2\r\n$6\r\nmaster\r\n:7\r\nrest").unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![Reply::Bulk(Some(b"master".to_vec())), Reply::Int(7)]))
        );
        assert_eq!(used, 20);
        assert_eq!(parse(b"+OK").unwrap(), None);
        let huge = format!("${}\r\n", MAX_REPLY + 1);
        assert!(matches!(parse(huge.as_bytes()), Err(ServiceError::Protocol(_))));
    }
}
