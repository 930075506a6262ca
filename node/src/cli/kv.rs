//! `keel kv` and `keel diverged`: the datastore from the command line.

use super::*;

/// The datastore's value limit. Stdin is read up to one byte more, so an oversized value reaches the server
/// as oversized and is refused there (413), never cut silently to fit.
pub(crate) const MAX_VALUE_BYTES: usize = keel_replication::MAX_VALUE_BYTES;

/// Percent-encodes everything in `s` but RFC 3986 unreserved characters, and `/` when `keep_slash`.
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A key the CLI cannot send.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty: give a non-empty key")]
    Empty,
    #[error("the key {0:?} cannot be put in a URL path (clients resolve it away): use another key")]
    DotSegment(String),
}

/// `/v1/kv/{key}` with the key percent-encoded. `/` stays readable unless the key has a `.` or `..`
/// segment, which an HTTP client would resolve away (`a/../b` becomes `b`); then `/` is encoded too.
pub fn kv_path(key: &str) -> Result<String, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key == "." || key == ".." {
        return Err(KeyError::DotSegment(key.to_string()));
    }
    let dot_segment = key.split('/').any(|seg| seg == "." || seg == "..");
    Ok(format!("/v1/kv/{}", percent_encode(key, !dot_segment)))
}

/// `/v1/kv?prefix=&limit=&after=`, leaving out what is not set.
pub fn kv_list_path(prefix: Option<&str>, limit: Option<u32>, after: Option<&str>) -> String {
    let mut params = Vec::new();
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        params.push(format!("prefix={}", percent_encode(p, false)));
    }
    if let Some(l) = limit {
        params.push(format!("limit={l}"));
    }
    if let Some(a) = after {
        params.push(format!("after={}", percent_encode(a, false)));
    }
    if params.is_empty() {
        "/v1/kv".to_string()
    } else {
        format!("/v1/kv?{}", params.join("&"))
    }
}

/// A header as JSON: a number when it is one, else a string, `null` when absent or not text.
pub(crate) fn header_json(headers: &reqwest::header::HeaderMap, name: &str) -> Value {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None => Value::Null,
        Some(s) => s.trim().parse::<u64>().map_or_else(|_| json!(s), |n| json!(n)),
    }
}

/// `keel kv get --output json`: the value (UTF-8, lossy) and the metadata headers of the answer.
pub fn kv_get_json(key: &str, value: &[u8], headers: &reqwest::header::HeaderMap) -> Value {
    json!({
        "key": key,
        "value": String::from_utf8_lossy(value),
        "version": header_json(headers, "keel-version"),
        "epoch": header_json(headers, "keel-epoch"),
        "position": headers.get("keel-position").and_then(|v| v.to_str().ok()),
        "lag_ms": header_json(headers, "keel-lag-ms"),
    })
}

/// Reads `r` to the end, but at most `limit + 1` bytes; `true` when there was more than `limit`.
pub(crate) fn read_bounded(r: impl Read, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut buf)?;
    let over = buf.len() > limit;
    Ok((buf, over))
}

/// The value of `kv put` / `kv cas`: the argument, or stdin when it is absent or `-`. `true` when stdin
/// held more than [`MAX_VALUE_BYTES`] (only the first `MAX_VALUE_BYTES + 1` bytes are returned).
pub(crate) async fn value_arg(value: Option<OsString>) -> Result<(Vec<u8>, bool), CallError> {
    if let Some(v) = value.filter(|v| v != "-") {
        return Ok((v.into_encoded_bytes(), false));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("reading the value from stdin; end it with Ctrl-D");
    }
    tokio::task::spawn_blocking(|| read_bounded(std::io::stdin().lock(), MAX_VALUE_BYTES))
        .await
        .map_err(|e| CallError::Local(format!("read the value from stdin: {e}")))?
        .map_err(|e| CallError::Local(format!("read the value from stdin: {}", error_chain(&e))))
}

/// Up to `max_chars` characters of `bytes` (UTF-8, lossy) with control characters escaped, and `…` when cut.
pub(crate) fn preview(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Standard base64 (padding optional, the `base64` crate); `None` on a character outside the alphabet.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

pub(crate) fn render_kv_list(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| vec![cell(&i["key"]), cell(&i["version"]), cell(&i["size"])])
        .collect();
    render_table(&["KEY", "VERSION", "SIZE"], &rows)
}

/// Longest value preview in `keel diverged list`.
pub(crate) const DIVERGED_VALUE_CHARS: usize = 40;

pub(crate) fn render_diverged(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = array(answer, "diverged")
        .iter()
        .map(|d| {
            let value = match d["value_base64"].as_str() {
                None => "-".to_string(),
                Some(b64) => match base64_decode(b64) {
                    Some(bytes) => preview(&bytes, DIVERGED_VALUE_CHARS),
                    None => "(not base64)".to_string(),
                },
            };
            vec![
                cell(&d["rolled_back_at"]),
                cell(&d["position"]),
                cell(&d["key"]),
                cell(&d["deleted"]),
                value,
            ]
        })
        .collect();
    render_table(&["ROLLED_BACK_AT", "POSITION", "KEY", "DELETED", "VALUE"], &rows)
}

/// `kv put` and `kv cas`: send the value, print `KEY: version V at position P` or the server's JSON.
/// `stdin_over_limit`: the value is the cut-off start of a longer stdin, so a 413 is about all of it.
pub(crate) async fn kv_write(
    api: &Api,
    method: Method,
    path: &str,
    key: &str,
    value: Vec<u8>,
    stdin_over_limit: bool,
    output: OutputFormat,
) -> Result<i32, CallError> {
    let answer = api
        .call_raw(method, path, ReqBody::Bytes(value))
        .await
        .map_err(|e| match e {
            CallError::Status { status, code, .. } if stdin_over_limit && status == StatusCode::PAYLOAD_TOO_LARGE => {
                CallError::Status {
                    status,
                    code,
                    message: format!(
                        "the value on stdin is over the datastore's {MAX_VALUE_BYTES}-byte limit \
                         (keel stopped reading it after {} bytes): store a smaller value",
                        MAX_VALUE_BYTES + 1
                    ),
                }
            }
            other => other,
        })?;
    answered(&answer.json()?, output, |v| {
        format!(
            "{key}: version {} at position {}\n",
            cell(&v["version"]),
            cell(&v["position"])
        )
    })
}

pub(crate) async fn kv(api: &Api, cmd: KvCommand, output: OutputFormat) -> Result<i32, CallError> {
    match cmd {
        KvCommand::Get { key, consistency } => {
            let mut path = kv_path(&key).map_err(|e| CallError::Local(e.to_string()))?;
            if let Some(c) = consistency {
                path.push_str("?consistency=");
                path.push_str(c.as_str());
            }
            let answer = api.call_raw(Method::GET, &path, ReqBody::Empty).await?;
            match output {
                OutputFormat::Json => print_json(&kv_get_json(&key, &answer.body, &answer.headers)),
                OutputFormat::Table => print_bytes(&answer.body),
            }
            Ok(EXIT_OK)
        }
        KvCommand::Put { key, value } => {
            let path = kv_path(&key).map_err(|e| CallError::Local(e.to_string()))?;
            let (value, over) = value_arg(value).await?;
            kv_write(api, Method::PUT, &path, &key, value, over, output).await
        }
        KvCommand::Cas { key, version, value } => {
            let path = format!(
                "{}/cas?version={version}",
                kv_path(&key).map_err(|e| CallError::Local(e.to_string()))?
            );
            let (value, over) = value_arg(value).await?;
            kv_write(api, Method::POST, &path, &key, value, over, output).await
        }
        KvCommand::Del { key } => {
            let path = kv_path(&key).map_err(|e| CallError::Local(e.to_string()))?;
            let answer = api.call_raw(Method::DELETE, &path, ReqBody::Empty).await?;
            answered(&answer.json()?, output, |v| {
                // 201: the key did not exist; the delete is recorded anyway.
                if answer.status == StatusCode::CREATED {
                    format!(
                        "{key}: was not set (delete recorded at position {})\n",
                        cell(&v["position"])
                    )
                } else {
                    format!("{key}: deleted at position {}\n", cell(&v["position"]))
                }
            })
        }
        KvCommand::List { prefix, limit, all } => {
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            let next = loop {
                let path = kv_list_path(prefix.as_deref(), limit, after.as_deref());
                let page = api.call(Method::GET, &path, None).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                let next = page["next"].as_str().map(str::to_string);
                match next {
                    // A `next` that does not move on would loop forever; stop there.
                    Some(n) if all && after.as_ref() != Some(&n) => after = Some(n),
                    other => break other,
                }
            };
            match output {
                OutputFormat::Json => print_json(&json!({"items": items, "next": next})),
                OutputFormat::Table => {
                    print_out(&render_kv_list(&items));
                    if next.is_some() {
                        eprintln!("(more keys follow: add --all to list them all)");
                    }
                }
            }
            Ok(EXIT_OK)
        }
    }
}

pub(crate) async fn diverged(api: &Api, output: OutputFormat) -> Result<i32, CallError> {
    let answer = api.call(Method::GET, "/v1/diverged", None).await?;
    answered(&answer, output, render_diverged)
}
