//! Small pieces every layer uses, in a leaf module that imports nothing of ours but the
//! time-zone parser: secrets, reconnect backoff, and the config checks the connectors'
//! sections share. Connectors and protocols take these from here, so none of them
//! imports `config`, `mqtt`, `hass` or `bridge` (no import circle, no arrow back up).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A secret string: usable, never printed. `Debug` shows [`Secret::MASK`]; `Serialize`
/// writes the value (the config's layers are built by serialising it), except inside
/// [`Secret::masked`], where it writes the mask: `check-config` masks by type, whatever
/// the key is called. An unquoted number in a file (`command_pin = 97531`) is taken as
/// its text; a value that is not usable as text is refused without being shown.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// How every `Secret` serialises on this thread (see [`Secret::masked`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    Value,
    Mask,
    /// Every secret, set or not, as [`Secret::MARKER`]: tests find the secrets by it.
    #[cfg(test)]
    Marker,
}

thread_local! {
    static SHOWN: std::cell::Cell<Shown> = const { std::cell::Cell::new(Shown::Value) };
}

/// Runs `f` with secrets shown as `shown` on this thread; the previous way is back
/// afterwards, even when `f` panics. Serialisation is synchronous, so nothing else (no
/// other thread, nothing after `f`) sees masked values.
fn showing<R>(shown: Shown, f: impl FnOnce() -> R) -> R {
    struct Restore(Shown);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHOWN.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SHOWN.with(|s| s.replace(shown)));
    f()
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match SHOWN.with(|s| s.get()) {
            Shown::Value => s.serialize_str(&self.0),
            Shown::Mask => s.serialize_str(self.mask()),
            #[cfg(test)]
            Shown::Marker => s.serialize_str(Secret::MARKER),
        }
    }
}

/// Why a secret's value was refused; the value itself is never part of the error.
const REFUSED: &str = "not usable as text (the value is a secret and not shown)";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a text or a number")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            // Everything else is refused. serde's own errors would quote the value
            // ("found float 97531.5"), so these say only that it is not usable.
            fn visit_bool<E: Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(REFUSED))
            }
            fn visit_f64<E: Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(REFUSED))
            }
            fn visit_bytes<E: Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(E::custom(REFUSED))
            }
            fn visit_unit<E: Error>(self) -> Result<Secret, E> {
                Err(E::custom(REFUSED))
            }
            fn visit_none<E: Error>(self) -> Result<Secret, E> {
                Err(E::custom(REFUSED))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, _: D) -> Result<Secret, D::Error> {
                Err(D::Error::custom(REFUSED))
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                _: D,
            ) -> Result<Secret, D::Error> {
                Err(D::Error::custom(REFUSED))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(A::Error::custom(REFUSED))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(A::Error::custom(REFUSED))
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(A::Error::custom(REFUSED))
            }
        }
        d.deserialize_any(Text)
    }
}

impl Secret {
    /// What a secret that is set shows instead of its value; an unset one shows "".
    pub const MASK: &'static str = "********";
    /// What every secret serialises as inside [`Secret::marked`].
    #[cfg(test)]
    pub const MARKER: &'static str = "\u{1}secret\u{1}";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// [`Secret::MASK`], or "" when the secret is not set.
    pub fn mask(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            Secret::MASK
        }
    }

    /// Runs `f` (a serialisation) with every `Secret` serialising as its [`mask`]
    /// instead of its value, on this thread, wherever it sits and whatever its key is.
    ///
    /// [`mask`]: Secret::mask
    pub fn masked<R>(f: impl FnOnce() -> R) -> R {
        showing(Shown::Mask, f)
    }

    /// Runs `f` with every `Secret`, set or not, serialising as [`Secret::MARKER`]: a
    /// test finds every secret of a value by it.
    #[cfg(test)]
    pub fn marked<R>(f: impl FnOnce() -> R) -> R {
        showing(Shown::Marker, f)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.mask())
    }
}

/// Parses the `timezone` setting: an IANA zone from the tz database or a fixed offset.
pub fn parse_timezone(tz: &str) -> Option<crate::zone::Zone> {
    crate::zone::Zone::parse(tz)
}

/// A connector's `timezone` setting (validation already refused bad ones; this guards
/// connectors built from an unvalidated config).
pub fn require_timezone(section: &str, timezone: &str) -> anyhow::Result<crate::zone::Zone> {
    parse_timezone(timezone)
        .ok_or_else(|| anyhow::anyhow!("{section}.timezone `{timezone}` is not supported"))
}

/// Checks shared by the listening connectors; the error names the key (relative to the
/// connector's section) and why.
pub fn check_listener(timezone: &str, max_links: usize) -> Result<(), (String, String)> {
    if parse_timezone(timezone).is_none() {
        return Err((
            "timezone".into(),
            format!("`{timezone}`: use a tz database name (Asia/Shanghai), UTC or ±HH:MM"),
        ));
    }
    if max_links == 0 {
        return Err(("max_links".into(), "must be at least 1".into()));
    }
    Ok(())
}

/// The interval a cloud connector polls at while a vehicle is active, when the user did
/// not set one: 1 min, or `poll_interval` when that is shorter, so that any single
/// interval a user sets makes a valid config.
pub const DEFAULT_ACTIVE_INTERVAL: Duration = Duration::from_secs(60);

pub fn active_interval(
    poll_interval: Duration,
    poll_interval_active: Option<Duration>,
) -> Duration {
    poll_interval_active.unwrap_or(DEFAULT_ACTIVE_INTERVAL.min(poll_interval))
}

/// Checks shared by the polling (cloud) connectors; the error names the key (relative to
/// the connector's section) and why.
pub fn check_polling(
    base_url: &str,
    poll_interval: Duration,
    poll_interval_active: Option<Duration>,
    request_timeout: Duration,
) -> Result<(), (String, String)> {
    let err = |k: &str, r: String| Err((k.to_string(), r));
    let url = base_url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return err("base_url", "must be an http:// or https:// address".into());
    }
    if poll_interval < Duration::from_secs(1) {
        return err("poll_interval", "must be at least 1s".into());
    }
    if let Some(active) = poll_interval_active {
        if active < Duration::from_secs(1) {
            return err("poll_interval_active", "must be at least 1s".into());
        }
        if active > poll_interval {
            return err(
                "poll_interval_active",
                format!(
                    "{} is longer than poll_interval ({}): the active interval is the faster one; \
                     shorten it or leave it out (it then follows poll_interval)",
                    humantime::format_duration(active),
                    humantime::format_duration(poll_interval)
                ),
            );
        }
    }
    if request_timeout < Duration::from_secs(1) || request_timeout > Duration::from_secs(120) {
        return err("request_timeout", "must be 1s to 120s".into());
    }
    Ok(())
}

/// Exponential backoff with full jitter: 0.5 s doubling to 30 s.
pub fn backoff_delay(attempt: u32) -> Duration {
    let cap_ms = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

/// Reconnect backoff for upstream sessions: a session that lasted a minute resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt, given how long the last session lasted.
    pub fn next(&mut self, session: Duration) -> Duration {
        if session > Duration::from_secs(60) {
            self.attempt = 0;
        }
        let delay = backoff_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_backoff_resets_after_a_long_session() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next(Duration::from_secs(1));
        }
        assert!(
            b.next(Duration::from_secs(1)) >= Duration::from_secs(15),
            "grown"
        );
        assert!(
            b.next(Duration::from_secs(120)) <= Duration::from_millis(500),
            "reset by a long session"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff_delay(attempt);
            let cap = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
            assert!(
                d.as_millis() as u64 >= cap / 2 && d.as_millis() as u64 <= cap,
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff_delay(30) <= Duration::from_secs(30));
    }
}

/// One shared copy of each distinct list, for lists that 10 000 vehicles hold alike
/// (capabilities differ only where the config differs). Past [`Interner::MAX_SETS`]
/// distinct lists a list is simply not shared.
pub struct Interner<T> {
    sets: std::sync::Mutex<Vec<std::sync::Arc<[T]>>>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            sets: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<T: PartialEq> Interner<T> {
    pub const MAX_SETS: usize = 64;

    /// The shared list equal to `items`.
    pub fn shared(&self, items: Vec<T>) -> std::sync::Arc<[T]> {
        let Ok(mut sets) = self.sets.lock() else {
            return items.into();
        };
        if let Some(known) = sets.iter().find(|s| ***s == *items) {
            return known.clone();
        }
        let set: std::sync::Arc<[T]> = items.into();
        if sets.len() < Self::MAX_SETS {
            sets.push(set.clone());
        }
        set
    }
}

#[cfg(test)]
mod interner_tests {
    use super::Interner;

    #[test]
    fn equal_lists_share_one_copy_and_the_table_is_bounded() {
        let interner = Interner::default();
        let a = interner.shared(vec![1, 2, 3]);
        let b = interner.shared(vec![1, 2, 3]);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let c = interner.shared(vec![1, 2]);
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, &[1, 2]);
        for n in 0..200 {
            assert_eq!(&*interner.shared(vec![n; 4]), &[n; 4]);
        }
        assert_eq!(
            interner.sets.lock().unwrap().len(),
            Interner::<i32>::MAX_SETS
        );
    }
}
