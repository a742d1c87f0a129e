//! Enums of names: the flags, timeline step kinds and openers of a report, the results of its
//! stop signals (`crate::decode::SignalResult`, the events' too), how its processes ended and
//! the kinds of preStop hooks are enums inside the agent and their snake_case names in JSON
//! (`docs/report.md`). [`named_enum!`] writes
//! one: its known variants, an `Other` variant for a name this agent does not know, the
//! names, `Display`, and serde as the name.
//!
//! A name this agent does not know — written by a newer agent (or an older one, for a name
//! since dropped) into a report log or sent by another agent's API — is kept verbatim as the
//! `Other` variant rather than rejected: rejecting it would make a reader of the report log
//! ([`crate::outputs::log::read_log`], `termscope report`) skip the whole report as a
//! malformed line. Kept, it is shown and written out again as the same string; no rule of
//! the engine acts on it.

/// A name this agent does not know. Only a named enum's `from_name` makes one, so a known name is always its own variant and two equal values always compare
/// equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownName(String);

impl UnknownName {
    /// Only for [`named_enum!`]'s `from_name`, after no known name matched: crate-private so
    /// that no other code can wrap a known name in `Other`.
    pub(crate) fn new(name: &str) -> Self {
        UnknownName(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An enum of known names plus `Other(UnknownName)`, with its names, `Display`, and serde as
/// the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident expecting $expecting:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A name this agent does not know, kept as it was read (see the module docs).
            Other($crate::terminations::named::UnknownName),
        }

        impl $name {
            /// Every value this agent knows.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name in JSON (and in `docs/report.md`).
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Other(u) => u.as_str(),
                }
            }

            /// The value named `name`: a known one, or `Other` keeping the name as it is.
            pub fn from_name(name: &str) -> $name {
                match name {
                    $( $text => $name::$variant, )+
                    _ => $name::Other($crate::terminations::named::UnknownName::new(name)),
                }
            }

            /// Whether this agent knows the name.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from_name(v))
                    }
                }
                d.deserialize_str(Name)
            }
        }
    };
}

pub(crate) use named_enum;

/// Checks, for a test, that each of `all` has the name at the same place in `names`, and
/// round-trips through it (as text and as JSON).
#[cfg(test)]
pub(crate) fn assert_round_trips<T>(all: &[T], names: &[&str], from_name: fn(&str) -> T)
where
    T: std::fmt::Display
        + std::fmt::Debug
        + PartialEq
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    assert_eq!(names.len(), all.len());
    for (value, name) in all.iter().zip(names) {
        assert_eq!(value.to_string(), *name);
        let json = serde_json::to_string(value).expect("json");
        assert_eq!(json, format!("\"{name}\""));
        let back: T = serde_json::from_str(&json).expect("a known name");
        assert_eq!(&back, value);
        assert_eq!(&from_name(name), value);
    }
}
