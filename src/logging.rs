//! The broker's log lines, in one of two shapes (`--log-format`).
//!
//! Every line the broker logs is written as `event=<name> key=value ...`, with values that
//! hold spaces or quotes written as quoted Rust strings (`reason="cannot list cores"`). That
//! one convention gives both formats:
//!
//! - `text`: the line as written, after env_logger's timestamp and level;
//! - `json`: one JSON object per line, `{"ts": ..., "level": ..., "event": ..., <fields>}`,
//!   the fields parsed back out of the line ([`fields`]): whole numbers become JSON numbers,
//!   everything else a string. Words that are not `key=value` (a line that breaks the
//!   convention) are kept, joined, under `"message"`, so nothing a line says is lost.

use std::io::Write;

use serde_json::Value;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[timestamp LEVEL event=... key=value ...]`, for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the logger for `serve` (stderr).
pub fn init(level: log::LevelFilter, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format_target(false);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let line = json_line(&ts, record.level(), &record.args().to_string());
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// Counters as `key=value` fields separated by spaces, the way log lines write them (the
/// shutdown summaries).
pub fn key_values(fields: &[(String, u64)]) -> String {
    let mut text = String::new();
    for (key, value) in fields {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(key);
        text.push('=');
        text.push_str(&value.to_string());
    }
    text
}

/// One log line as a JSON object: `ts`, `level` and `event` first, then the line's fields in
/// the order it wrote them.
pub fn json_line(ts: &str, level: log::Level, message: &str) -> String {
    let mut object: Vec<(&str, Value)> = vec![
        ("ts", Value::from(ts)),
        ("level", Value::from(level.as_str().to_ascii_lowercase())),
    ];
    let mut words = Vec::new();
    let fields = fields(message);
    // `event` leads whatever its place on the line.
    let event = fields
        .iter()
        .position(|f| matches!(f, Field::Pair("event", _)));
    let ordered = event
        .into_iter()
        .chain((0..fields.len()).filter(|&i| Some(i) != event));
    for index in ordered {
        match &fields[index] {
            Field::Pair(key, value) => {
                // A key the line repeats keeps its first value; ts and level are ours.
                if object.iter().any(|(k, _)| k == key) {
                    continue;
                }
                let value = match value.parse::<u64>() {
                    // Only canonical numbers: `007` stays the string it was.
                    Ok(number) if number.to_string() == *value => Value::from(number),
                    _ => Value::from(value.as_str()),
                };
                object.push((key, value));
            }
            Field::Word(word) => words.push(*word),
        }
    }
    if !words.is_empty() && !object.iter().any(|(k, _)| *k == "message") {
        object.push(("message", Value::from(words.join(" "))));
    }
    let mut line = String::from("{");
    for (i, (key, value)) in object.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Value::from(*key).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push('}');
    line
}

/// One piece of a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// `key=value` (a quoted value unquoted).
    Pair(&'a str, String),
    /// Anything else, as written.
    Word(&'a str),
}

/// Splits `event=x key=value key="quoted \"value\""` into its fields.
pub fn fields(line: &str) -> Vec<Field<'_>> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let token_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let key_end = rest[..token_end].find('=');
        match key_end {
            Some(eq) if eq > 0 && is_key(&rest[..eq]) => {
                let key = &rest[..eq];
                let after = &rest[eq + 1..];
                let (value, used) = if after.starts_with('"') {
                    unquote(after)
                } else {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (after[..end].to_owned(), end)
                };
                out.push(Field::Pair(key, value));
                rest = &after[used..];
            }
            _ => {
                out.push(Field::Word(&rest[..token_end]));
                rest = &rest[token_end..];
            }
        }
        rest = rest.trim_start();
    }
    out
}

fn is_key(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// A quoted value as Rust's `Debug` writes strings: the value and the bytes it took. An
/// unterminated quote takes the rest of the line.
fn unquote(text: &str) -> (String, usize) {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (value, i + 1),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, '0')) => value.push('\0'),
                Some((_, other)) => value.push(other),
                None => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    (value, text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_fields() {
        let check = |line: &str, expect: &[Field<'_>]| assert_eq!(fields(line), expect, "{line}");
        check(
            "event=connection_closed shard=1 conn=3.0 peer=127.0.0.1:5 reason=peer_closed",
            &[
                Field::Pair("event", "connection_closed".into()),
                Field::Pair("shard", "1".into()),
                Field::Pair("conn", "3.0".into()),
                Field::Pair("peer", "127.0.0.1:5".into()),
                Field::Pair("reason", "peer_closed".into()),
            ],
        );
        check(
            r#"event=x reason="cannot \"list\" cores" n=2"#,
            &[
                Field::Pair("event", "x".into()),
                Field::Pair("reason", "cannot \"list\" cores".into()),
                Field::Pair("n", "2".into()),
            ],
        );
        check(
            "free text a=b =c",
            &[
                Field::Word("free"),
                Field::Word("text"),
                Field::Pair("a", "b".into()),
                Field::Word("=c"),
            ],
        );
        check("k=\"open", &[Field::Pair("k", "open".into())]);
        check(
            "k= j=1",
            &[Field::Pair("k", "".into()), Field::Pair("j", "1".into())],
        );
        check("", &[]);
    }

    #[test]
    fn json_lines_carry_ts_level_event_and_typed_fields() {
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            log::Level::Info,
            r#"event=stopped published=12 conn=3.0 code=007 hint="a b" stray"#,
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "ts": "2026-01-01T00:00:00.000Z",
                "level": "info",
                "event": "stopped",
                "published": 12,
                "conn": "3.0",
                "code": "007",
                "hint": "a b",
                "message": "stray",
            })
        );
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"ts":"2026-01-01T00:00:00.000Z","level":"info","event":"stopped","published":12,"#),
            "{line}"
        );
    }
}
