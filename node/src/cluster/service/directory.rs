//! What a node knows about the managed services, whatever the datastore: its own service's latest
//! health sample (taken by the duty loop) and the other members' services as they report them in
//! their `/v1/status` (`service` object), polled by [`run`]. Nothing is added to the Raft state or
//! the peer messages, so a mixed-version cluster decodes everything as before; a member of an older
//! release simply has no service address.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_raft::NodeId;
use keel_replication::service::ServiceHealth;
use serde::Serialize;

use super::DrivenService;
use crate::cluster::failover::ServiceView;
use crate::state::Node;

/// How often the directory asks the other members for their service's address.
const DIRECTORY_INTERVAL: Duration = Duration::from_millis(500);
const DIRECTORY_TIMEOUT: Duration = Duration::from_millis(400);
/// A health sample older than this is not trusted by `/primary`.
const SAMPLE_FRESH: Duration = Duration::from_secs(1);

/// What another member said about its service in its `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerService {
    pub addr: String,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub offset: Option<u64>,
    /// `master`, `replica`, `fenced` or `down`, as the member last reported it.
    #[serde(default)]
    pub role: Option<String>,
}

/// This node's latest sample of its own service and the other members' reports.
#[derive(Debug, Default)]
pub struct Directory {
    last: Mutex<Option<(Instant, ServiceHealth)>>,
    peers: Mutex<BTreeMap<NodeId, PeerService>>,
    /// The directory finished its first round since start: the other members' service addresses
    /// that can be known are known. This node's service is not promoted before (it could not see
    /// whether a replica holds more).
    ready: AtomicBool,
}

impl Directory {
    /// The latest health sample of this node's service, if fresh.
    pub fn health(&self) -> Option<ServiceHealth> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < SAMPLE_FRESH)
            .map(|(_, h)| h.clone())
    }

    pub(super) fn record(&self, h: ServiceHealth) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), h));
    }

    /// The other members' services, as they last reported them.
    pub fn peers(&self) -> BTreeMap<NodeId, PeerService> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Has the directory finished its first round?
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(super) fn mark_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// Each member's service address (`host:port`), this node's (`own`) included, for the members whose
/// address is known.
pub(super) fn addrs(node: &Node, dir: &Directory, own: &str) -> BTreeMap<NodeId, String> {
    let members = node.view().state.members.clone();
    let mut out: BTreeMap<NodeId, String> = dir
        .peers()
        .into_iter()
        .filter(|(id, _)| members.contains_key(id))
        .map(|(id, p)| (id, p.addr))
        .collect();
    out.insert(node.id, own.to_string());
    out
}

/// Every member's service as this node last saw it (its own included), for ranking failover
/// candidates.
pub(super) fn views(node: &Node, dir: &Directory) -> BTreeMap<NodeId, ServiceView> {
    let mut out: BTreeMap<NodeId, ServiceView> = dir
        .peers()
        .into_iter()
        .map(|(id, p)| {
            (
                id,
                ServiceView {
                    healthy: p.healthy,
                    offset: p.offset,
                },
            )
        })
        .collect();
    if let Some(h) = dir.health() {
        out.insert(node.id, ServiceView::of(&h));
    }
    out
}

/// Learn the other members' service addresses and health from their `/v1/status`, every 500 ms.
pub(super) async fn run<D: DrivenService>(node: &Node, d: &D) {
    let dir = d.directory();
    let mut tick = crate::util::Ticker::new(DIRECTORY_INTERVAL, node.cancel.clone());
    while tick.tick().await {
        let mut set = tokio::task::JoinSet::new();
        for (id, m) in node.view().state.members.iter() {
            if *id == node.id || m.api_addr.is_empty() {
                continue;
            }
            let (id, url, http) = (
                *id,
                format!("{}/v1/status", node.api_url(&m.api_addr)),
                node.http.clone(),
            );
            set.spawn(async move {
                let r: Result<serde_json::Value, reqwest::Error> =
                    match http.get(&url).timeout(DIRECTORY_TIMEOUT).send().await {
                        Ok(resp) => resp.json().await,
                        Err(e) => Err(e),
                    };
                (
                    id,
                    r.ok()
                        .and_then(|v| serde_json::from_value::<PeerService>(v["service"].clone()).ok()),
                )
            });
        }
        while let Some(r) = set.join_next().await {
            let Ok((id, found)) = r else { continue };
            let mut peers = dir.peers.lock().unwrap_or_else(|e| e.into_inner());
            match found {
                Some(p) => {
                    peers.insert(id, p);
                }
                // Unreachable: keep the address (it rarely changes), but not its health.
                None => {
                    if let Some(p) = peers.get_mut(&id) {
                        p.healthy = false;
                    }
                }
            }
        }
        dir.mark_ready();
    }
}
