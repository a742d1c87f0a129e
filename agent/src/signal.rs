//! Signals: the kernel's numbers inside the agent — the rules compare [`Signal`]s —, their
//! names (`SIGTERM`) only at its edges: the report's JSON, the events' JSON, metric labels,
//! sentences, `--stop-signals`.

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A signal, by its number on Linux.
///
/// Its name ([`Signal::name`]) is `SIGTERM` and the like for 1 to 31, `SIGRTMIN+n` for the
/// real-time signals from 34 (the C libraries' `SIGRTMIN`), and the number itself for a
/// number with no name (0, and 32 and 33, which glibc and musl keep for themselves). Every
/// number has a name of its own and reads back from it ([`Signal::from_name`]), so a report
/// naming any signal round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(u32);

/// The names of signals 1 to 31 (`NAMES[n - 1]`), as Linux's headers spell them.
const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The first real-time signal programs can use (`SIGRTMIN` of glibc and musl).
const RTMIN: u32 = 34;
const RTMIN_PREFIX: &str = "SIGRTMIN+";

impl Signal {
    pub const HUP: Signal = Signal(1);
    pub const INT: Signal = Signal(2);
    pub const QUIT: Signal = Signal(3);
    pub const KILL: Signal = Signal(9);
    pub const USR1: Signal = Signal(10);
    pub const USR2: Signal = Signal(12);
    pub const TERM: Signal = Signal(15);
    pub const WINCH: Signal = Signal(28);
    pub const PWR: Signal = Signal(30);

    /// The signal the kernel numbers `n`.
    pub const fn from_kernel(n: u32) -> Signal {
        Signal(n)
    }

    /// Its number, as the kernel has it.
    pub const fn number(self) -> u32 {
        self.0
    }

    /// Its name (see [`Signal`]).
    pub fn name(self) -> Cow<'static, str> {
        match self.0 {
            n @ 1..=31 => Cow::Borrowed(NAMES[n as usize - 1]),
            n if n >= RTMIN => Cow::Owned(format!("{RTMIN_PREFIX}{}", n - RTMIN)),
            n => Cow::Owned(n.to_string()),
        }
    }

    /// The signal named `name` as [`Signal::name`] writes it (a number is read as the
    /// number); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Signal> {
        if let Some(i) = NAMES.iter().position(|n| *n == name) {
            return Some(Signal(i as u32 + 1));
        }
        if let Some(n) = name.strip_prefix(RTMIN_PREFIX) {
            return digits(n)?.checked_add(RTMIN).map(Signal);
        }
        digits(name).map(Signal)
    }

    /// A signal as a person names it (`--stop-signals`): `TERM`, `sigterm`, `SIGTERM` or
    /// `15`; one the kernel can send (1 to 63), else `None`.
    pub fn parse(arg: &str) -> Option<Signal> {
        let upper = arg.trim().to_ascii_uppercase();
        let signal = if upper.starts_with("SIG") || digits(&upper).is_some() {
            Signal::from_name(&upper)
        } else {
            Signal::from_name(&format!("SIG{upper}"))
        };
        signal.filter(|s| (1..64).contains(&s.0))
    }
}

/// A number written in decimal digits only.
fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// In a report (`stop_signals[].signal`, `exits[].signal`): the name.
impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Signal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a signal's name (SIGTERM, SIGRTMIN+2) or number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Signal, E> {
                Signal::from_name(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Name)
    }
}

/// Serde of a signal as its number (an exit's `signal` in the events' JSON).
pub mod number {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Signal;

    pub fn serialize<S: Serializer>(signal: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(signal.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        u32::deserialize(d).map(Signal)
    }
}

/// Serde of an event's signal, for `#[serde(flatten, with = "...")]`: its number as
/// `signal` and its name beside it as `signal_name` (`docs/events.md`). Read back from the
/// number alone: the name says nothing more.
pub mod number_and_name {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Signal;

    #[derive(Serialize)]
    struct Written<'a> {
        signal: u32,
        signal_name: &'a str,
    }

    #[derive(Deserialize)]
    struct Read {
        signal: u32,
    }

    pub fn serialize<S: Serializer>(signal: &Signal, s: S) -> Result<S::Ok, S::Error> {
        Written {
            signal: signal.0,
            signal_name: &signal.name(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        Read::deserialize(d).map(|r| Signal(r.signal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Signal::TERM.name(), "SIGTERM");
        assert_eq!(Signal::QUIT.to_string(), "SIGQUIT");
        assert_eq!(Signal::from_kernel(31).name(), "SIGSYS");
        assert_eq!(Signal::from_kernel(34).name(), "SIGRTMIN+0");
        assert_eq!(Signal::from_kernel(64).name(), "SIGRTMIN+30");
        // Numbers with no name are written as the number.
        assert_eq!(Signal::from_kernel(0).name(), "0");
        assert_eq!(Signal::from_kernel(32).name(), "32");
        assert_eq!(Signal::from_kernel(33).name(), "33");
        for (sig, n) in [
            (Signal::HUP, 1),
            (Signal::INT, 2),
            (Signal::QUIT, 3),
            (Signal::KILL, 9),
            (Signal::USR1, 10),
            (Signal::USR2, 12),
            (Signal::TERM, 15),
            (Signal::WINCH, 28),
            (Signal::PWR, 30),
        ] {
            assert_eq!(sig.number(), n);
            assert_eq!(sig, Signal::from_kernel(n));
        }
    }

    /// Every number's name is its own and reads back to it, as text and as JSON.
    #[test]
    fn every_number_round_trips_through_its_name() {
        let mut seen = std::collections::HashSet::new();
        for n in (0..=130).chain([1000, u32::MAX]) {
            let s = Signal::from_kernel(n);
            let name = s.name().into_owned();
            assert!(seen.insert(name.clone()), "{name} named twice");
            assert_eq!(Signal::from_name(&name), Some(s), "{name}");
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Signal>(&json).expect("read"), s);
        }
    }

    #[test]
    fn only_names_are_read() {
        for bad in [
            "",
            "SIGNOPE",
            "sigterm",
            "SIGRTMIN+",
            "SIGRTMIN+x",
            "-1",
            "1.5",
        ] {
            assert_eq!(Signal::from_name(bad), None, "{bad:?}");
        }
        let err = serde_json::from_str::<Signal>(r#""SIGNOPE""#).expect_err("not a signal");
        assert!(err.to_string().contains("a signal's name"), "{err}");
        // A number as JSON is not a name.
        assert!(serde_json::from_str::<Signal>("15").is_err());
    }

    #[test]
    fn people_name_signals_loosely() {
        assert_eq!(Signal::parse("TERM"), Some(Signal::TERM));
        assert_eq!(Signal::parse("sigquit"), Some(Signal::QUIT));
        assert_eq!(Signal::parse(" SIGKILL "), Some(Signal::KILL));
        assert_eq!(Signal::parse("9"), Some(Signal::KILL));
        assert_eq!(Signal::parse("rtmin+2"), Some(Signal::from_kernel(36)));
        assert_eq!(Signal::parse("NOPE"), None);
        assert_eq!(Signal::parse("0"), None);
        assert_eq!(Signal::parse("64"), None);
        assert_eq!(Signal::parse("SIGRTMIN+30"), None);
    }

    #[test]
    fn events_carry_the_number_and_the_name() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Ev {
            ts_ns: u64,
            #[serde(flatten, with = "number_and_name")]
            signal: Signal,
            code: i32,
            #[serde(with = "number")]
            exit_signal: Signal,
        }
        let ev = Ev {
            ts_ns: 7,
            signal: Signal::TERM,
            code: 0,
            exit_signal: Signal::KILL,
        };
        let json = serde_json::to_string(&ev).expect("json");
        assert_eq!(
            json,
            r#"{"ts_ns":7,"signal":15,"signal_name":"SIGTERM","code":0,"exit_signal":9}"#
        );
        assert_eq!(serde_json::from_str::<Ev>(&json).expect("read"), ev);
        // The number says which signal; a name written by another agent is not read.
        let other = json.replace("SIGTERM", "SIGRTMIN+0");
        assert_eq!(serde_json::from_str::<Ev>(&other).expect("read"), ev);
    }
}
