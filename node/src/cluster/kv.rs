//! The built-in key-value store as a managed service: the node's side of
//! [`keel_replication::service::kv::KvService`] ([`KvHost`] on [`Node`]).
//!
//! The store's roles are not driven by the duty loop of `cluster/service/` (managed Redis): the
//! lease and replication tasks already run its promote (the catch-up in
//! [`crate::cluster::primary::renew_task`]), follow (the view feeder in [`crate::repl::replicate`])
//! and fence (the lease check in [`crate::cluster::write`]) at once on every state or lease
//! change, and the failover timing is measured with them. What goes through the trait is the
//! replication task itself ([`apply_task`] runs `KvService::run`), the health the
//! `/v1/status` `datastore` object shows ([`health`]) and the coordinator's own position in the
//! failover ranking ([`position`]).

use std::sync::Arc;

use keel_replication::service::kv::{KvHost, KvService};
use keel_replication::service::{ManagedService, ServiceHealth};
use keel_replication::{PrimaryRef, Repl, ReplError};
use tokio_util::sync::CancellationToken;

use crate::state::Node;

impl KvHost for Node {
    fn node_id(&self) -> keel_replication::NodeId {
        self.id
    }

    fn repl(&self) -> &Repl {
        &self.repl
    }

    fn primary(&self) -> Option<PrimaryRef> {
        self.view().state.primary.map(|p| PrimaryRef {
            node: p.node,
            epoch: p.epoch,
        })
    }

    fn write_epoch(&self) -> Option<u64> {
        crate::cluster::write::write_epoch(self)
    }

    fn stream_addr(&self, node: keel_replication::NodeId) -> Option<String> {
        if node == self.id {
            Some(self.config.advertise_peer_addr.clone())
        } else {
            self.peer_addr_of(node)
        }
    }

    async fn replicate(&self, cancel: CancellationToken) {
        crate::repl::replicate(self, cancel).await
    }

    async fn catch_up(&self, epoch: u64) -> Result<(), ReplError> {
        crate::cluster::primary::catch_up(self, epoch).await
    }

    fn drop_lease(&self) {
        self.lease.drop_now(None)
    }

    async fn renew_lease(&self, epoch: u64) {
        let lease_len = crate::cluster::primary::effective_lease(self);
        crate::cluster::primary::renew_once(self, epoch, lease_len).await
    }
}

/// The replica apply worker and the view feeder ([`crate::repl::replicate`]), run as the store's
/// [`ManagedService::run`]; stops when the node does.
pub async fn apply_task(node: Arc<Node>) {
    let cancel = node.cancel.clone();
    Arc::new(service(&node)).run(cancel).await
}

/// This node's store as a [`ManagedService`].
pub fn service(node: &Arc<Node>) -> KvService<Node> {
    KvService::new(node.clone())
}

/// One health sample of this node's store (`/v1/status` `datastore`).
pub async fn health(node: &Arc<Node>) -> ServiceHealth {
    service(node).health().await
}

/// This node's position for the failover ranking (the seq the other members report too).
pub async fn position(node: &Arc<Node>) -> u64 {
    // The built-in store's position cannot fail to read (it is in memory).
    service(node)
        .position()
        .await
        .unwrap_or_else(|_| node.repl.position().seq)
}
