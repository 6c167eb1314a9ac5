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
                .map(|m| describe_metadata(m, &key))
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
                // A `Secret` refuses a value without quoting it: no error shows a secret,
                // whatever its key is called.
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

/// `value` as TOML with every [`Secret`] in it masked, whatever its key is called.
pub(super) fn masked_toml<T: Serialize + ?Sized>(value: &T) -> String {
    let value = match Secret::masked(|| toml::Value::try_from(value)) {
        Ok(v) => v,
        Err(e) => return format!("# could not render config: {e}\n"),
    };
    toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
}

/// The environment variable(s) that set `key` (dotted, as figment names it): the one
/// for the key itself, for a table it is in (a value written as `[..]` or `{..}`), or
/// for keys in it (an unknown section). Each is named as it is written in the
/// environment; when none is set (any more), by the name it would usually have.
pub(super) fn describe_env_var(key: &str) -> String {
    let key = key.to_lowercase();
    let below = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| {
            let name = name.to_string_lossy().into_owned();
            let var_key = current_key(&env_key(&name)?);
            (var_key == key || below(&var_key, &key) || below(&key, &var_key)).then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    match names.as_slice() {
        [] => format!("environment variable `{}`", env_var_for(&key)),
        [one] => format!("environment variable `{one}`"),
        many => format!(
            "environment variables {}",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The key an environment variable sets, as figment's `Env::prefixed(ENV_PREFIX)
/// .split(ENV_SEPARATOR)` makes it (prefix in any case, trimmed, lowercased); `None`
/// for a variable it ignores.
pub(super) fn env_key(name: &str) -> Option<String> {
    let name = name.trim();
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let key = name[ENV_PREFIX.len()..].replace(ENV_SEPARATOR, ".");
    let key = key.trim();
    if key.split('.').any(str::is_empty) {
        return None;
    }
    Some(key.to_ascii_lowercase())
}
