//! Plain-text rendering shared by the commands: tables, JSON, raw bytes.

use super::*;

/// Writes raw bytes to stdout, like [`print_out`].
pub(crate) fn print_bytes(bytes: &[u8]) {
    if cfg!(test) {
        print!("{}", String::from_utf8_lossy(bytes));
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

pub(crate) fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    print_out(&format!("{text}\n"));
}

/// Prints a command's `answer`, as JSON or as `table` renders it; the command succeeded.
pub(crate) fn answered(
    answer: &Value,
    output: OutputFormat,
    table: impl FnOnce(&Value) -> String,
) -> Result<i32, CallError> {
    match output {
        OutputFormat::Json => print_json(answer),
        OutputFormat::Table => print_out(&table(answer)),
    }
    Ok(EXIT_OK)
}

/// Renders rows under headers, columns separated by two spaces and as wide as their widest cell. The last
/// column is not padded, so no line has trailing whitespace. Missing cells are blank; extra cells dropped.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One table cell from a JSON value: `-` for null, missing or empty string, `yes`/`no` for booleans.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `members` array of a `/v1/cluster` or `/v1/members` answer, sorted by id.
/// The array under `key` of a JSON answer (empty when absent or not an array).
pub(crate) fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

pub(crate) fn member_list(v: &Value) -> Vec<&Value> {
    let mut members: Vec<&Value> = array(v, "members").iter().collect();
    members.sort_by_key(|m| m["id"].as_u64().unwrap_or(u64::MAX));
    members
}

/// "1", "1 and 2", "1, 2 and 3".
pub(crate) fn join_ids(ids: &[u64]) -> String {
    match ids {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => {
            format!(
                "{} and {last}",
                rest.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            )
        }
    }
}
