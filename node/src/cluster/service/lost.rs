//! What this node's Redis lost when, as an old master, it was demoted to a replica of a new one,
//! kept on disk (`<data-dir>/redis-lost.jsonl`, one JSON record a line, appended and synced before
//! the demotion goes on), so that a restart does not forget it. Node-local on purpose: the
//! failover history is replicated state in a format the previous release must keep reading
//! (docs/upgrading.md, rule 2), so the records stay with the node that lost the data, and
//! `GET /v1/history` gathers every member's over the peer port (`/peer/redis/lost`) and shows
//! each under the failover (epoch) it belongs to.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use keel_raft::NodeId;
use keel_replication::service::Loss;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Records kept in memory (the newest); the totals count every record in the file.
const KEEP: usize = 1000;

/// The totals of `/v1/status` `service.lost`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LostWrites {
    /// Demotions that lost data (a known number of bytes, or an unknown amount).
    pub events: u64,
    /// Bytes of the replication stream lost, summed over the events whose amount is known.
    pub bytes: u64,
    /// Events whose amount could not be computed (unrelated histories).
    pub unknown: u64,
    /// The latest demotion that lost data.
    pub last: Option<LostReport>,
}

impl LostWrites {
    fn add(&mut self, r: &LostReport) {
        match r.loss {
            Loss::None => return,
            Loss::Bytes(b) => self.bytes += b,
            Loss::Unknown(_) => self.unknown += 1,
        }
        self.events += 1;
        self.last = Some(r.clone());
    }
}

/// One demotion that lost data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostReport {
    /// Unix time (ms).
    pub at_ms: u64,
    /// The epoch of the primary it now follows: the failover whose history entry this loss
    /// belongs to.
    pub epoch: u64,
    /// That primary.
    pub primary: NodeId,
    /// The new master's Redis it now follows (`host:port`).
    pub master: String,
    /// Its offset when it was demoted.
    pub offset: u64,
    pub loss: Loss,
}

/// The records on disk and their totals.
#[derive(Debug, Default)]
pub struct LostLog {
    /// `None`: nothing is written (tests).
    path: Option<PathBuf>,
    totals: LostWrites,
    newest: VecDeque<LostReport>,
    /// The file ends in a torn line: the next record starts on a line of its own.
    torn: bool,
}

impl LostLog {
    /// Read the records at `path` (none when the file does not exist). A line that does not parse
    /// (the last one, torn by a crash while it was written) is skipped with a warning.
    pub fn open(path: PathBuf) -> LostLog {
        let mut log = LostLog {
            path: Some(path.clone()),
            ..LostLog::default()
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return log,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the redis lost-writes log; its earlier records are not counted");
                return log;
            }
        };
        log.torn = !text.is_empty() && !text.ends_with('\n');
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<LostReport>(line) {
                Ok(r) => log.keep(r),
                Err(e) => {
                    warn!(path = %path.display(), line = i + 1, error = %e, "skipping a record of the redis lost-writes log")
                }
            }
        }
        log
    }

    fn keep(&mut self, r: LostReport) {
        self.totals.add(&r);
        if self.newest.len() == KEEP {
            self.newest.pop_front();
        }
        self.newest.push_back(r);
    }

    /// Add `r` (a demotion that lost data; `Loss::None` is not recorded): appended to the file and
    /// synced, then counted. A failed write is logged and the record still counted in memory.
    pub fn record(&mut self, r: LostReport) {
        if r.loss == Loss::None {
            return;
        }
        if let Some(path) = &self.path {
            let written = serde_json::to_string(&r)
                .map_err(std::io::Error::other)
                .and_then(|line| {
                    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                    let sep = if self.torn { "\n" } else { "" };
                    f.write_all(format!("{sep}{line}\n").as_bytes())?;
                    f.sync_data()
                });
            match written {
                Ok(()) => self.torn = false,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot write the redis lost-writes log; the loss is counted until this node stops")
                }
            }
        }
        self.keep(r);
    }

    pub fn totals(&self) -> LostWrites {
        self.totals.clone()
    }

    /// The newest records (at most 1,000), oldest first.
    pub fn records(&self) -> Vec<LostReport> {
        self.newest.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epoch: u64, loss: Loss) -> LostReport {
        LostReport {
            at_ms: 1,
            epoch,
            primary: 2,
            master: "127.0.0.1:6380".into(),
            offset: 1000,
            loss,
        }
    }

    #[test]
    fn records_survive_a_restart_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis-lost.jsonl");
        let mut log = LostLog::open(path.clone());
        assert_eq!(log.totals(), LostWrites::default());
        log.record(report(3, Loss::Bytes(234)));
        log.record(report(4, Loss::None));
        log.record(report(5, Loss::Unknown(50)));
        // A crash while the next record was written.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"at_ms\":1,\"epo").unwrap();

        let mut again = LostLog::open(path.clone());
        let t = again.totals();
        assert_eq!((t.events, t.bytes, t.unknown), (2, 234, 1));
        assert_eq!(t.last.map(|l| l.epoch), Some(5));
        let epochs: Vec<u64> = again.records().iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [3, 5], "Loss::None is not a record");
        // The next record goes on a line of its own, after the torn one.
        again.record(report(6, Loss::Bytes(6)));
        let third = LostLog::open(path);
        let epochs: Vec<u64> = third.records().iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [3, 5, 6]);
        assert_eq!(third.totals().bytes, 240);
    }
}
