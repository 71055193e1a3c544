//! Values of settings in human units: sizes (`256MiB`), durations (`7d`), "forever", the fsync policy and
//! the peer list. Each reads a plain number as well as a string, and writes a form it reads back to the
//! same value (`ferryd --print-config` round-trips).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::replica::FsyncPolicy;

/// A size in bytes: a number, or a string with a unit (`64KiB`, `256 MiB`, `1GB`; binary and decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    /// The size as a string with the largest binary unit that divides it exactly.
    fn human(self) -> String {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return format!("{}{unit}", self.0 / size);
            }
        }
        self.0.to_string()
    }

    fn parse(s: &str) -> Result<Bytes, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Bytes(b.as_u64()))
            .map_err(|_| {
                format!(
                    "`{s}` is not a size (a number of bytes, or e.g. `64KiB`, `256MiB`, `1GiB`)"
                )
            })
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.human())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString(Bytes::WHAT, amount::<Bytes>))
    }
}

impl Amount for Bytes {
    const WHAT: &'static str = "a size";
    const WHAT_OR_FOREVER: &'static str = "a size or `forever`";
    fn from_number(n: u64) -> Self {
        Bytes(n)
    }
    fn number(self) -> u64 {
        self.0
    }
    fn parse(s: &str) -> Result<Self, String> {
        Bytes::parse(s)
    }
}

/// A duration (ms as a number; `500ms`, `10s`, `7d`, `2h 30m` as a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Millis {
    fn parse(s: &str) -> Result<Millis, String> {
        // A plain number is ms, from a flag (a string) as from a file (a number).
        if let Ok(ms) = s.trim().parse::<u64>() {
            return Ok(Millis(ms));
        }
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration ({e}; e.g. `500ms`, `10s`, `7d`)"))?;
        u64::try_from(d.as_millis())
            .map(Millis)
            .map_err(|_| format!("`{s}` is too long"))
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(Duration::from_millis(self.0)).to_string())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString(Millis::WHAT, amount::<Millis>))
    }
}

impl Amount for Millis {
    const WHAT: &'static str = "a duration";
    const WHAT_OR_FOREVER: &'static str = "a duration or `forever`";
    fn from_number(n: u64) -> Self {
        Millis(n)
    }
    fn number(self) -> u64 {
        self.0
    }
    fn parse(s: &str) -> Result<Self, String> {
        Millis::parse(s)
    }
}

/// A quantity read as a plain number or as a string with a unit ([`Bytes`], [`Millis`]).
trait Amount: Copy {
    /// What a value must be, for errors: "a size".
    const WHAT: &'static str;
    const WHAT_OR_FOREVER: &'static str;
    fn from_number(n: u64) -> Self;
    fn number(self) -> u64;
    fn parse(s: &str) -> Result<Self, String>;
}

fn amount<T: Amount>(v: Raw<'_>) -> Result<T, String> {
    match v {
        Raw::Unsigned(n) => Ok(T::from_number(n)),
        Raw::Signed(n) => Err(format!("{} cannot be negative ({n})", T::WHAT)),
        Raw::Str(s) => T::parse(s),
    }
}

/// `forever`, `-1` and zero (as a number or with a unit) are forever; anything else an amount.
fn retained<T: Amount>(v: Raw<'_>) -> Result<Retain<T>, String> {
    match v {
        Raw::Signed(-1) => Ok(Retain::Forever),
        Raw::Str(s) if is_forever(s) => Ok(Retain::Forever),
        Raw::Signed(n) => Err(format!(
            "{} cannot be negative ({n}; `-1` means forever)",
            T::WHAT
        )),
        other => amount::<T>(other).map(|a| {
            if a.number() == 0 {
                Retain::Forever
            } else {
                Retain::Up(a)
            }
        }),
    }
}

/// A retention bound: `forever` (also `-1`, and `0` as before) or a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain<T> {
    Forever,
    Up(T),
}

impl<T: Copy> Retain<T> {
    /// The log's form: 0 for "never by this measure".
    pub fn or_zero(self, get: impl Fn(T) -> u64) -> u64 {
        match self {
            Retain::Forever => 0,
            Retain::Up(v) => get(v),
        }
    }
}

impl<T: Serialize> Serialize for Retain<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Retain::Forever => s.serialize_str("forever"),
            Retain::Up(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Retain<Bytes> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString(Bytes::WHAT_OR_FOREVER, retained::<Bytes>))
    }
}

impl<'de> Deserialize<'de> for Retain<Millis> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString(Millis::WHAT_OR_FOREVER, retained::<Millis>))
    }
}

fn is_forever(s: &str) -> bool {
    matches!(s.trim(), "forever" | "-1")
}

/// When to fsync: `batch`, or `interval:<duration>` (`interval:50` is 50 ms, `interval:1s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsync(pub FsyncPolicy);

impl Fsync {
    pub fn parse(s: &str) -> Result<Fsync, String> {
        let bad = || {
            format!("`{s}` is not an fsync policy (`batch` or `interval:<duration>`, e.g. `interval:50ms`)")
        };
        match s.trim() {
            "batch" => Ok(Fsync(FsyncPolicy::PerBatch)),
            other => {
                let every = other.strip_prefix("interval:").ok_or_else(bad)?;
                let ms = every
                    .trim()
                    .parse::<u64>()
                    .or_else(|_| Millis::parse(every).map(|m| m.0))
                    .map_err(|_| bad())?;
                if ms == 0 {
                    return Err(format!("`{s}`: the fsync interval must be at least 1 ms"));
                }
                Ok(Fsync(FsyncPolicy::IntervalMs(ms)))
            }
        }
    }
}

impl Serialize for Fsync {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FsyncPolicy::PerBatch => s.serialize_str("batch"),
            FsyncPolicy::IntervalMs(ms) => s.serialize_str(&format!("interval:{ms}ms")),
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString("an fsync policy", |v| match v {
            Raw::Str(s) => Fsync::parse(s),
            _ => Err("expected `batch` or `interval:<duration>`".into()),
        }))
    }
}

/// The initial voters, `ID=HOST:PORT,...` (a string, as the flag takes it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peers(pub BTreeMap<u64, String>);

impl Serialize for Peers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<String> = self.0.iter().map(|(id, a)| format!("{id}={a}")).collect();
        s.serialize_str(&list.join(","))
    }
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrString("a peer list", |v| match v {
            Raw::Str(s) => crate::config::parse_peers(s).map(Peers),
            _ => Err("expected `ID=HOST:PORT[,ID=HOST:PORT...]`".into()),
        }))
    }
}

/// What a value arrived as.
enum Raw<'a> {
    Unsigned(u64),
    Signed(i64),
    Str(&'a str),
}

/// A visitor taking numbers and strings, each handed to one conversion that names what was expected.
struct NumberOrString<T>(&'static str, fn(Raw<'_>) -> Result<T, String>);

impl<'de, T> Visitor<'de> for NumberOrString<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.1)(Raw::Unsigned(v)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(u) => (self.1)(Raw::Unsigned(u)),
            Err(_) => (self.1)(Raw::Signed(v)),
        }
        .map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(Raw::Str(v)).map_err(E::custom)
    }
}
