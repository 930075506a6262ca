//! Requests to a node's API from tests, one call each instead of a builder chain: a request to
//! node `id` at a path, a key written or read, a value waited for on a replica, a config patch,
//! and an answer taken apart into its status and JSON. A transport error fails the test.

use std::future::Future;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use crate::Cluster;

/// Sending a built request in a test: the answer, or the test fails on a transport error.
pub trait Sent {
    fn sent(self) -> impl Future<Output = Response> + Send;
}

impl Sent for RequestBuilder {
    async fn sent(self) -> Response {
        self.send().await.expect("send the request")
    }
}

/// The answer to `req` sent with `timeout`, if one came with a success status.
pub async fn success(req: RequestBuilder, timeout: Duration) -> Option<Response> {
    let r = req.timeout(timeout).send().await.ok()?;
    r.status().is_success().then_some(r)
}

/// An answer's status and JSON body (`Value::Null` when the body is not JSON).
pub async fn status_json(r: Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// An answer's status and error code (`{"error": {"code": ...}}`; `<not JSON>` when there is none).
pub async fn error_code(r: Response) -> (u16, String) {
    let (s, v) = status_json(r).await;
    (s, v["error"]["code"].as_str().unwrap_or("<not JSON>").to_string())
}

impl Cluster {
    /// `method` on node `id`'s API at `path` (with the query), through the fixture's client.
    pub fn req(&self, method: Method, id: u64, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.node(id).url()))
    }

    /// `PUT /v1/kv/{key}` with `value` on node `id`.
    pub async fn put(&self, id: u64, key: &str, value: &str) -> Response {
        self.req(Method::PUT, id, &format!("/v1/kv/{key}"))
            .body(value.to_string())
            .sent()
            .await
    }

    /// Node `id`'s own copy of `key` (`?consistency=local`): its value on a 200, else None.
    pub async fn get_local(&self, id: u64, key: &str) -> Option<String> {
        let path = format!("/v1/kv/{key}?consistency=local");
        let r = self.req(Method::GET, id, &path).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.text().await.ok()
    }

    /// Wait until node `id` serves `key` = `value` from its own copy.
    pub async fn wait_value(&self, timeout: Duration, id: u64, key: &str, value: &str) {
        self.wait_for(timeout, &format!("node {id} to have {key}={value}"), || async {
            (self.get_local(id, key).await? == value).then_some(())
        })
        .await
    }

    /// Write `key` = `value` through node `via` (a 2xx, or the test fails) and wait until every
    /// node in `ids` serves it from its own copy.
    pub async fn put_everywhere(&self, timeout: Duration, via: u64, ids: &[u64], key: &str, value: &str) {
        let r = self.put(via, key, value).await;
        assert!(
            r.status().is_success(),
            "write {key} through node {via}: {}",
            r.status()
        );
        for id in ids {
            self.wait_value(timeout, *id, key, value).await;
        }
    }

    /// `PATCH /v1/config` with `body` on node `id`; the answer must be a 200.
    pub async fn patch_config(&self, id: u64, body: Value) {
        let r = self.req(Method::PATCH, id, "/v1/config").json(&body).sent().await;
        let status = r.status();
        assert_eq!(
            status,
            200,
            "PATCH /v1/config {body} on node {id}: {:?}",
            r.text().await
        );
    }

    /// The keys in node `id`'s diverged table (`GET /v1/diverged`), and the table itself for
    /// failure messages.
    pub async fn diverged_keys(&self, id: u64) -> (Vec<String>, Value) {
        let d = self.get(id, "/v1/diverged").await.expect("GET /v1/diverged");
        let keys = d["diverged"].as_array().expect("a diverged list").iter();
        (keys.filter_map(|e| e["key"].as_str().map(String::from)).collect(), d)
    }

    /// `n` nodes as child processes with `common` flags, all started, once one of them is
    /// primary (within `timeout`); the fixture and the primary's id.
    pub async fn started(n: u64, common: &[&str], timeout: Duration) -> (Cluster, u64) {
        let mut c = Cluster::new(n, common);
        c.start_all();
        let p = c.wait_primary(&[], timeout).await;
        (c, p)
    }

    /// `n` nodes as child processes with `common` flags, all started, once all of them agree on
    /// a leader (within `timeout`); the fixture and the leader's id.
    pub async fn started_with_leader(n: u64, common: &[&str], timeout: Duration) -> (Cluster, u64) {
        let mut c = Cluster::new(n, common);
        c.start_all();
        let ids: Vec<u64> = (1..=n).collect();
        let leader = c.wait_leader(&ids, timeout).await;
        (c, leader)
    }
}
