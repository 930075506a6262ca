//! The merged log of `keel up`: each child's tracing JSON line as one compact text line.

use serde_json::Value;

/// `HH:MM:SS.mmm` from an RFC 3339 timestamp such as `2024-05-01T10:11:12.123456Z`.
fn clock_time(timestamp: &str) -> Option<String> {
    let (_, rest) = timestamp.split_once('T')?;
    let hms = rest.get(..8)?;
    let well_formed = hms.bytes().enumerate().all(|(i, b)| {
        if i == 2 || i == 5 {
            b == b':'
        } else {
            b.is_ascii_digit()
        }
    });
    if !well_formed {
        return None;
    }
    let mut millis: String = match rest[8..].strip_prefix('.') {
        Some(frac) => frac.chars().take_while(char::is_ascii_digit).take(3).collect(),
        None => String::new(),
    };
    while millis.len() < 3 {
        millis.push('0');
    }
    Some(format!("{hms}.{millis}"))
}

/// Top-level keys of a tracing JSON line that are not event fields.
const TRACING_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "target",
    "span",
    "spans",
    "threadName",
    "threadId",
    "filename",
    "line_number",
    "fields",
];

/// A field value for `key=value`: bare when it is a plain word, JSON-quoted otherwise.
fn field_value(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') => {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// One child log line in the merged log: `[n1] 12:34:56.789 INFO  message key=value ...` for a tracing JSON
/// line, the line as is after the prefix otherwise. `log.*` fields (added by the `log` bridge) are dropped.
pub(super) fn format_log_line(node: u64, line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    let raw = || format!("[n{node}] {line}").trim_end().to_string();
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return raw();
    };
    let Some(level) = obj.get("level").and_then(Value::as_str) else {
        return raw();
    };
    let fields: Vec<(&String, &Value)> = match obj.get("fields") {
        Some(Value::Object(fields)) => fields.iter().collect(),
        // With `flatten_event` the fields sit at the top level.
        _ => obj
            .iter()
            .filter(|(k, _)| !TRACING_KEYS.contains(&k.as_str()))
            .collect(),
    };

    let mut out = format!("[n{node}]");
    if let Some(time) = obj.get("timestamp").and_then(Value::as_str).and_then(clock_time) {
        out.push(' ');
        out.push_str(&time);
    }
    out.push_str(&format!(" {level:<5}"));
    if let Some((_, message)) = fields.iter().find(|(k, _)| k.as_str() == "message") {
        out.push(' ');
        out.push_str(&message.as_str().map_or_else(|| message.to_string(), str::to_string));
    }
    for (key, value) in fields
        .iter()
        .filter(|(k, _)| k.as_str() != "message" && !k.starts_with("log."))
    {
        out.push_str(&format!(" {key}={}", field_value(value)));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_times() {
        let cases = [
            ("2024-05-01T10:11:12.123456Z", Some("10:11:12.123")),
            ("2024-05-01T10:11:12.1Z", Some("10:11:12.100")),
            ("2024-05-01T10:11:12Z", Some("10:11:12.000")),
            ("2024-05-01T10:11:12.987+02:00", Some("10:11:12.987")),
            ("2024-05-01 10:11:12", None),
            ("2024-05-01T10:1", None),
            ("2024-05-01Tab:cd:ef.1", None),
        ];
        for (input, want) in cases {
            assert_eq!(clock_time(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn log_lines() {
        let cases = [
            (
                r#"{"timestamp":"2024-05-01T10:11:12.123456Z","level":"INFO","fields":{"message":"became leader","term":3},"target":"keel_node::raft"}"#,
                "[n1] 10:11:12.123 INFO  became leader term=3",
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12.5Z","level":"WARN","fields":{"message":"peer down","peer":"127.0.0.1:7202","error":"connection refused","log.target":"x"},"target":"t","spans":[]}"#,
                r#"[n1] 10:11:12.500 WARN  peer down error="connection refused" peer=127.0.0.1:7202"#,
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12Z","level":"ERROR","fields":{"ok":false}}"#,
                "[n1] 10:11:12.000 ERROR ok=false",
            ),
            (
                r#"{"timestamp":"2024-05-01T10:11:12Z","level":"DEBUG","message":"flat","id":7,"target":"t"}"#,
                "[n1] 10:11:12.000 DEBUG flat id=7",
            ),
            (
                r#"{"level":"INFO","fields":{"message":"no time","empty":""}}"#,
                r#"[n1] INFO  no time empty="""#,
            ),
            (
                "thread 'main' panicked at src/main.rs:1:1:\n",
                "[n1] thread 'main' panicked at src/main.rs:1:1:",
            ),
            (r#"{"not":"tracing"}"#, r#"[n1] {"not":"tracing"}"#),
            ("", "[n1]"),
        ];
        for (input, want) in cases {
            assert_eq!(format_log_line(1, input), want, "{input}");
        }
    }
}
