//! Named client listeners beside the main one (`listen`/`advertise`, named `internal`): each binds its own
//! address and tells the clients that came in on it its own advertised addresses of every broker, so
//! clients inside a Kubernetes cluster and clients outside it are both served (docs/configuration.md,
//! "Listeners").
//!
//! In a TOML file a table per listener:
//!
//! ```toml
//! [listeners.external]
//! listen = "0.0.0.0:9400"
//! advertise = "ferry-0.example.com:9400"
//! ```
//!
//! As a flag or `FERRY_LISTENERS`: `NAME=LISTEN[@ADVERTISE][,NAME=LISTEN[@ADVERTISE]...]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The main client listener's name (`listen`, `advertise`): the address brokers and clients use unless a
/// client came in on a named listener.
pub const INTERNAL: &str = "internal";
pub use crate::metadata::{LISTENERS_MAX, LISTENER_NAME_LEN_MAX};

/// One named listener: where it binds and what it advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// host:port to bind.
    pub listen: SocketAddr,
    /// Host or host:port its clients are told to use for this broker. Unset: the bound address, which then
    /// must not be unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

/// The named listeners, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Listeners(pub BTreeMap<String, Listener>);

impl Listeners {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the flag's form, `NAME=LISTEN[@ADVERTISE][,...]`.
    pub fn parse(s: &str) -> Result<Listeners, String> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rest) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not NAME=LISTEN[@ADVERTISE]"))?;
            let (listen, advertise) = match rest.split_once('@') {
                Some((l, a)) => (l, Some(a.trim().to_owned())),
                None => (rest, None),
            };
            let listen = listen
                .trim()
                .parse()
                .map_err(|_| format!("`{listen}` (listener `{name}`) is not HOST:PORT"))?;
            let l = Listener { listen, advertise };
            if out.insert(name.trim().to_owned(), l).is_some() {
                return Err(format!("listener `{name}` is named twice"));
            }
        }
        Ok(Listeners(out))
    }

    /// Checks names, the count and every advertised address; `check_advertise` is the main listener's
    /// check (not unspecified, a valid port).
    pub fn validate(&self, check_advertise: fn(&str) -> Result<(), String>) -> Result<(), String> {
        if self.0.len() > LISTENERS_MAX {
            return Err(format!(
                "at most {LISTENERS_MAX} named listeners (got {})",
                self.0.len()
            ));
        }
        for (name, l) in &self.0 {
            check_name(name)?;
            match &l.advertise {
                Some(a) => check_advertise(a).map_err(|r| format!("listener `{name}`: {r}"))?,
                None if l.listen.ip().is_unspecified() => {
                    return Err(format!(
                        "listener `{name}` needs an advertised address: it listens on {} \
                         (clients cannot connect to an unspecified address)",
                        l.listen
                    ))
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// A listener name: 1 to 32 bytes of `a-z`, `0-9` and `-`, starting with a letter, not `internal`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= LISTENER_NAME_LEN_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(format!(
            "listener name `{name}`: 1 to {LISTENER_NAME_LEN_MAX} of a-z, 0-9 and `-`, starting with a letter"
        ));
    }
    if name == INTERNAL {
        return Err(format!(
            "listener name `{INTERNAL}` is the main listener's (`listen`, `advertise`)"
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Listeners {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListenersVisitor)
    }
}

/// A table of listeners (a file) or the flag's string form (a flag, `FERRY_LISTENERS`).
struct ListenersVisitor;

impl<'de> Visitor<'de> for ListenersVisitor {
    type Value = Listeners;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of listeners or `NAME=LISTEN[@ADVERTISE][,...]`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Listeners, E> {
        Listeners::parse(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listeners, A::Error> {
        BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(Listeners)
    }
}
