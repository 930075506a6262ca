//! `GET /v1/backup`: stream a consistent backup of this node (cluster state and datastore at one
//! position), never held in memory.

use super::*;

/// `GET /v1/backup`: stream a backup of this node (admin token required when one is configured).
/// Headers: `Keel-Position` (the snapshot's position) and `Keel-Backup-Keys`.
pub async fn serve_backup(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    match start_backup(node, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn start_backup(node: Arc<Node>, headers: &HeaderMap) -> Result<Response, ApiError> {
    // Reads everything, secrets of the cluster's data included: admin only, like mutating endpoints.
    // Without an admin token it is still a read of the whole data plane, so data-plane tokens guard
    // it then (open only when no token of any kind is set).
    let tokens = node.tokens.get();
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = &tokens.admin {
        if !crate::util::bearer_matches(auth, token.expose()) {
            return Err(ApiError::unauthorized(
                "a backup needs the admin token: send `Authorization: Bearer <token>` (keel --admin-token)",
            ));
        }
    } else if tokens.check(auth, crate::auth::Access::Read) != crate::auth::Verdict::Allow {
        return Err(ApiError::unauthorized(
            "a backup reads the whole datastore: without an admin token configured it needs a data-plane token \
             (the read or client token): send `Authorization: Bearer <token>`",
        ));
    }
    let store = node.repl.store.clone();
    let reader = tokio::task::spawn_blocking(move || store.snapshot())
        .await
        .map_err(|e| ApiError::internal(format!("snapshot task: {e}")))?
        .map_err(|e| ApiError::internal(format!("open a datastore snapshot: {e}")))?;
    let position = reader.position();
    // The cluster state is read after the datastore snapshot, so its epoch is at least the epoch
    // of every entry in the snapshot once this node applied the promotion that opened it.
    let mut state = node.state.clone();
    let deadline = tokio::time::Instant::now() + STATE_CATCH_UP;
    while node.view().state.epoch() < position.epoch {
        if tokio::time::timeout_at(deadline, state.changed()).await.is_err() {
            return Err(ApiError::unavailable(
                "state_behind",
                format!(
                    "this node's cluster state (epoch {}) has not caught up with its datastore (epoch {}); retry, or back up another node",
                    node.view().state.epoch(),
                    position.epoch
                ),
            ));
        }
    }
    let view = node.view();
    let m = node.metrics();
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    let membership = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| BackupMember {
            id: *id,
            peer_addr: n.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let header = BackupHeader {
        created_at_ms: unix_ms(),
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        source_node: node.id,
        position,
        keys: reader.keys(),
        raft_last_applied: view.last_applied.map(|l| l.index),
        cluster: view.state.clone(),
        membership,
    };
    let keys = header.keys;
    info!(%position, keys, "streaming a backup");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cancel = node.cancel.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let started = Instant::now();
        let mut framer = Framer::default();
        let send = |piece: Vec<u8>| tx.blocking_send(Ok(bytes::Bytes::from(piece))).is_ok();
        let fail = |msg: String| {
            warn!(error = %msg, "backup stream aborted");
            // The client sees a broken body (no end frame, no trailer) and refuses the file.
            let _ = tx.blocking_send(Err(std::io::Error::other(msg)));
        };
        if !send(framer.header(&header)) {
            return;
        }
        loop {
            if cancel.is_cancelled() {
                return fail("the node is shutting down".into());
            }
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    if !send(framer.data(&chunk)) {
                        return; // the client went away
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(format!("read the datastore snapshot: {e}")),
            }
        }
        let records = reader.records_sent();
        drop(reader); // ends the read transaction
        let (tail, sum, bytes) = framer.finish(records);
        if send(tail) {
            info!(
                %position,
                records,
                bytes,
                sha256 = %sum,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup streamed"
            );
        }
    });
    let mut r = Response::new(crate::http::body::channel_body(rx));
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        h.insert("keel-position", v);
    }
    if let Ok(v) = HeaderValue::from_str(&keys.to_string()) {
        h.insert("keel-backup-keys", v);
    }
    Ok(r)
}
