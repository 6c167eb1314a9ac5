//! Errors and output in words a user recognises: where a value came from, what was
//! meant by a typo, secrets masked.

use super::*;

/// One line per problem: the dotted key, where its value came from, and why it is wrong.
pub(super) fn describe_figment(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let source = e
                .metadata
                .as_ref()
                .map(describe_metadata)
                .unwrap_or_else(|| "unknown source".into());
            match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    // The error's path ends in the unknown key itself.
                    let section = key
                        .rsplit_once('.')
                        .map(|(s, _)| format!("{s}."))
                        .unwrap_or_default();
                    let hint = nearest(field, expected)
                        .map(|n| format!("; did you mean `{section}{n}`?"))
                        .unwrap_or_default();
                    format!("unknown key `{section}{field}` (from {source}){hint}")
                }
                kind if key.is_empty() => format!("{kind} (from {source})"),
                _ if is_secret_key(&key) => format!(
                    "invalid value for key `{key}` (from {source}): not usable as text (the value is a secret and not shown)"
                ),
                kind => format!("invalid value for key `{key}` (from {source}): {kind}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The expected key closest to a misspelt one (edit distance at most 3).
pub(super) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut row = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != cb);
                row.push((prev[j] + cost).min(prev[j + 1] + 1).min(row[j] + 1));
            }
            prev = row;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (distance(&word.to_lowercase(), c), *c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn valid_topic_segment(topic: &str, allow_slash: bool) -> bool {
    !topic.is_empty()
        && !topic.contains(['+', '#', '\0', '.'])
        && !topic.chars().any(char::is_whitespace)
        && (allow_slash || !topic.contains('/'))
        && !topic.starts_with('/')
        && !topic.ends_with('/')
}

pub(super) fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) {
                    if let toml::Value::String(s) = v {
                        if !s.is_empty() {
                            *s = "********".into();
                        }
                    }
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}
