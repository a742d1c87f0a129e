//! Clocks: the kernel stamps events with `CLOCK_BOOTTIME`; reports speak wall-clock time.

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock of every event's `ts_ns`.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// `CLOCK_REALTIME` now, in nanoseconds since the epoch.
pub fn wall_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Converts boot-time stamps to wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    /// The offset between the two clocks as of now.
    pub fn now() -> Self {
        Self::with_offset(i128::from(wall_ns()) - i128::from(boot_ns()))
    }

    /// A clock where boot time `b` is wall time `b + offset_ns` (tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }

    /// RFC 3339 UTC of a boot-time stamp.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        rfc3339(self.wall_ns(boot_ns))
    }

    /// The wall-clock instant of a boot-time stamp, to the microsecond (what reports keep).
    pub fn timestamp(&self, boot_ns: u64) -> jiff::Timestamp {
        timestamp(self.wall_ns(boot_ns))
    }
}

/// The instant of Unix-epoch nanoseconds, to the microsecond: reports write microseconds, so
/// an instant read back from one is the same.
pub fn timestamp(unix_ns: u64) -> jiff::Timestamp {
    let micros = i64::try_from(unix_ns / 1_000).unwrap_or(i64::MAX);
    jiff::Timestamp::from_microsecond(micros).unwrap_or(jiff::Timestamp::MAX)
}

/// The RFC 3339 UTC text of an instant, as reports write it.
pub fn text(t: jiff::Timestamp) -> String {
    rfc3339(unix_ns(t))
}

/// Unix-epoch nanoseconds of an instant (0 before the epoch).
pub fn unix_ns(t: jiff::Timestamp) -> u64 {
    u64::try_from(t.as_nanosecond()).unwrap_or(0)
}

/// Serde for report times: an instant travels as the RFC 3339 UTC text [`rfc3339`] writes,
/// and is read back from it (`#[serde(with = "crate::clock::serde_rfc3339")]`).
pub mod serde_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(super::unix_ns(*t)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<jiff::Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_rfc3339(&text)
            .map(super::timestamp)
            .ok_or_else(|| D::Error::custom(format!("not an RFC 3339 UTC time: {text:?}")))
    }

    /// The same for an optional time (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(
            t: &Option<jiff::Timestamp>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::rfc3339(super::super::unix_ns(*t))),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<jiff::Timestamp>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    super::super::parse_rfc3339(&text)
                        .map(super::super::timestamp)
                        .ok_or_else(|| {
                            D::Error::custom(format!("not an RFC 3339 UTC time: {text:?}"))
                        })
                })
                .transpose()
        }
    }
}

/// Formats Unix-epoch nanoseconds as RFC 3339 UTC with microseconds
/// (`2026-11-21T04:53:11.123456Z`).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3_600,
        (rem % 3_600) / 60,
        rem % 60
    )
}

/// Parses the RFC 3339 UTC form [`rfc3339`] writes (and `Z`-suffixed times with fewer
/// fraction digits) back to Unix-epoch nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u64>().ok()?;
    // Days since the epoch (inverse of the civil algorithm above).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Report times are instants inside and the same RFC 3339 text outside: microseconds,
    /// `Z`; read back to the same instant; anything else is refused.
    #[test]
    fn report_times_serialize_as_before() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "serde_rfc3339")]
            at: jiff::Timestamp,
            #[serde(default, with = "serde_rfc3339::option")]
            maybe: Option<jiff::Timestamp>,
        }
        let ns = 1_795_236_791_123_456_789;
        let t = T {
            at: timestamp(ns),
            maybe: None,
        };
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(json, r#"{"at":"2026-11-21T04:53:11.123456Z","maybe":null}"#);
        assert_eq!(text(t.at), rfc3339(ns));
        assert_eq!(unix_ns(t.at), ns - 789);
        let back: T = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, t);
        let some: T = serde_json::from_str(
            r#"{"at":"2026-11-21T04:53:11Z","maybe":"2026-11-21T04:53:12.5Z"}"#,
        )
        .expect("parses");
        assert_eq!(some.maybe.map(unix_ns), Some(1_795_236_792_500_000_000));
        assert!(serde_json::from_str::<T>(r#"{"at":"yesterday"}"#).is_err());
    }

    #[test]
    fn formats_wall_clock_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(1_795_236_791_123_456_789),
            "2026-11-21T04:53:11.123456Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ns in [0, 951_782_400_000_000_000, 1_795_236_791_123_456_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-11-21T04:53:11Z"),
            Some(1_795_236_791_000_000_000)
        );
        assert_eq!(parse_rfc3339("2026-13-21T04:53:11Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn boot_to_wall() {
        let c = WallClock::with_offset(1_000);
        assert_eq!(c.wall_ns(5), 1_005);
        assert_eq!(WallClock::with_offset(-10).wall_ns(5), 0);
    }
}
