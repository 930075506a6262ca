//! `--join ADDR`: a node that starts empty asks a member (by its API address) to add it as
//! a learner, then waits for the leader to replicate the cluster state to it. Promotion to
//! voter stays an explicit operator step (`keel members promote`), as with etcd learners.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::state::Node;

const RETRY: Duration = Duration::from_secs(1);

pub async fn join_task(node: Arc<Node>, join: String) {
    let http = match crate::tls::client_builder(node.tls.as_ref())
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return node.fail(format!("join: build http client: {e}")),
    };
    let mut attempt = 0u32;
    loop {
        if node.cancel.is_cancelled() {
            return;
        }
        match try_join(&node, &http, &join).await {
            Ok(Some(msg)) => {
                info!("{msg}");
                return;
            }
            Ok(None) => {}
            Err(JoinError::Fatal(msg)) => {
                error!("{msg}");
                return node.fail(msg);
            }
            Err(JoinError::Retry(msg)) => {
                attempt += 1;
                warn!(attempt, "join via {join}: {msg} (retrying every {}s)", RETRY.as_secs());
            }
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

enum JoinError {
    Retry(String),
    Fatal(String),
}

/// One attempt. `Ok(Some(_))` when this node is a member, `Ok(None)` to keep waiting.
async fn try_join(node: &Node, http: &reqwest::Client, join: &str) -> Result<Option<String>, JoinError> {
    let retry = |e: reqwest::Error| JoinError::Retry(keel_raft::network::error_chain(&e));
    // The remote cluster's id must match ours if this data dir already belongs to a cluster.
    let cluster: Value = http
        .get(format!("{join}/v1/cluster"))
        .send()
        .await
        .map_err(retry)?
        .json()
        .await
        .map_err(retry)?;
    let theirs = cluster["cluster_id"].as_str().map(str::to_string);
    let ours = node.view().state.cluster_id.clone();
    if let (Some(t), Some(o)) = (&theirs, &ours) {
        if t != o {
            return Err(JoinError::Fatal(format!(
                "refusing to join: data dir {} belongs to cluster {o}, but {join} is in cluster {t}; use an empty --data-dir to join this cluster",
                node.config.data_dir.display()
            )));
        }
    }
    if node
        .metrics()
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some()
    {
        return Ok(Some(format!("member of cluster {}", crate::util::opt(theirs.or(ours)))));
    }
    let mut req = http.post(format!("{join}/v1/members")).json(&json!({
        "id": node.id,
        "api_addr": node.config.advertise_api_addr,
        "peer_addr": node.config.advertise_peer_addr,
    }));
    if let Some(t) = &node.tokens.get().admin {
        req = req.bearer_auth(t.expose());
    }
    let resp = req.send().await.map_err(retry)?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match status.as_u16() {
        200 | 201 => {
            info!(via = %join, "added as a learner; waiting for the cluster state to arrive");
            Ok(None)
        }
        400 | 401 | 403 | 409 => Err(JoinError::Fatal(format!(
            "join via {join} refused ({status}): {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        ))),
        _ => Err(JoinError::Retry(format!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        ))),
    }
}
