//! Time zones of the devices' local clocks: a fixed offset ("+08:00", "UTC") or an IANA
//! zone from the tz database (chrono-tz), so that zones with daylight saving or unusual
//! offsets (Asia/Urumqi is +06:00, not China's +08:00) convert correctly.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl Zone {
    /// "UTC", "Z", "±HH:MM", or an IANA name such as "Asia/Shanghai".
    pub fn parse(text: &str) -> Option<Zone> {
        let text = text.trim();
        match text {
            "UTC" | "Z" | "GMT" => return FixedOffset::east_opt(0).map(Zone::Fixed),
            _ => {}
        }
        if let Some((sign, rest)) = match text.as_bytes().first()? {
            b'+' => Some((1, &text[1..])),
            b'-' => Some((-1, &text[1..])),
            _ => None,
        } {
            let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
            let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..=14).contains(&h) || !(0..60).contains(&m) {
                return None;
            }
            return FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Zone::Fixed);
        }
        chrono_tz::Tz::from_str(text).ok().map(Zone::Named)
    }

    /// The wall-clock time of day in this zone at `utc`.
    pub fn local_time(&self, utc: DateTime<Utc>) -> chrono::NaiveTime {
        match self {
            Zone::Fixed(z) => utc.with_timezone(z).time(),
            Zone::Named(z) => utc.with_timezone(z).time(),
        }
    }

    /// A local wall-clock time as UTC. A time that a daylight-saving change skips is
    /// `None`; one it repeats is taken at its first occurrence.
    pub fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Fixed(z) => z
                .from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Named(z) => z
                .from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn zones_from_the_tz_database() {
        let utc = |z: &str, t: &str| Zone::parse(z).unwrap().to_utc(at(t)).unwrap().to_rfc3339();
        assert_eq!(
            utc("Asia/Shanghai", "2025-06-01 08:00:00"),
            "2025-06-01T00:00:00+00:00"
        );
        // Xinjiang's tz database zone is +06:00.
        assert_eq!(
            utc("Asia/Urumqi", "2025-06-01 08:00:00"),
            "2025-06-01T02:00:00+00:00"
        );
        // Daylight saving: summer +02:00, winter +01:00.
        assert_eq!(
            utc("Europe/Berlin", "2025-07-01 12:00:00"),
            "2025-07-01T10:00:00+00:00"
        );
        assert_eq!(
            utc("Europe/Berlin", "2025-01-01 12:00:00"),
            "2025-01-01T11:00:00+00:00"
        );
        // A skipped hour has no UTC time; a repeated one takes its first occurrence.
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        assert!(berlin.to_utc(at("2025-03-30 02:30:00")).is_none());
        assert_eq!(
            berlin
                .to_utc(at("2025-10-26 02:30:00"))
                .unwrap()
                .to_rfc3339(),
            "2025-10-26T00:30:00+00:00"
        );
        assert_eq!(
            utc("+05:30", "2025-06-01 05:30:00"),
            "2025-06-01T00:00:00+00:00"
        );
        assert_eq!(
            utc("UTC", "2025-06-01 05:30:00"),
            "2025-06-01T05:30:00+00:00"
        );
        assert!(Zone::parse("Mars/Olympus").is_none());
        assert!(Zone::parse("+15:00").is_none());
    }

    #[test]
    fn the_local_time_of_day() {
        let utc = DateTime::from_timestamp(1_750_000_000, 0).unwrap(); // 15:06:40 UTC
        let local = |z: &str| Zone::parse(z).unwrap().local_time(utc).to_string();
        assert_eq!(local("UTC"), "15:06:40");
        assert_eq!(local("+08:00"), "23:06:40");
        assert_eq!(local("Europe/Berlin"), "17:06:40");
    }
}
