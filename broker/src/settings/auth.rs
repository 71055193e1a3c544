//! The authentication settings' own types: a list of names (`superusers`) and the static tokens
//! (`auth_tokens`, each `PRINCIPAL=sha256:HEX`: only the token's hash is ever written down).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most static tokens.
const TOKENS_MAX: usize = 1024;
/// Most superusers.
const SUPERUSERS_MAX: usize = 256;
/// Longest principal (bytes).
const PRINCIPAL_BYTES_MAX: usize = crate::acl::ACL_FIELD_BYTES_MAX;

/// A list of strings: a TOML array, or one string of comma-separated items (a flag, a variable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl List {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for List {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = List;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list, or a string of comma-separated items")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<List, E> {
                Ok(List(
                    s.split(',')
                        .map(str::trim)
                        .filter(|i| !i.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List, A::Error> {
                let mut v = Vec::new();
                while let Some(i) = seq.next_element::<String>()? {
                    v.push(i.trim().to_owned());
                }
                Ok(List(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a principal name cannot be used.
fn check_principal(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > PRINCIPAL_BYTES_MAX || !p.contains(':') {
        return Err(format!(
            "`{p}` is not a principal TYPE:NAME of at most {PRINCIPAL_BYTES_MAX} bytes (e.g. User:admin)"
        ));
    }
    Ok(())
}

/// The superusers, checked.
pub fn superusers(list: &List) -> Result<BTreeSet<String>, String> {
    if list.0.len() > SUPERUSERS_MAX {
        return Err(format!("more than {SUPERUSERS_MAX} superusers"));
    }
    list.0.iter().try_for_each(|p| check_principal(p))?;
    Ok(list.0.iter().cloned().collect())
}

/// The static tokens by hash: each entry `PRINCIPAL=sha256:HEX` (64 hex digits, the SHA-256 of the
/// token; `ferry token hash` prints it).
pub fn tokens(list: &List) -> Result<BTreeMap<[u8; 32], String>, String> {
    if list.0.len() > TOKENS_MAX {
        return Err(format!("more than {TOKENS_MAX} tokens"));
    }
    let mut out = BTreeMap::new();
    for entry in &list.0 {
        let (principal, hash) = entry
            .rsplit_once('=')
            .ok_or_else(|| format!("`{entry}` is not PRINCIPAL=sha256:HEX"))?;
        check_principal(principal)?;
        let hex_digits = hash
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("the hash of {principal}'s token must start with `sha256:`"))?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut digest).map_err(|_| {
            format!("the hash of {principal}'s token is not 64 hex digits (a SHA-256)")
        })?;
        if out.insert(digest, principal.to_owned()).is_some() {
            return Err(format!("two principals have the same token ({principal})"));
        }
    }
    Ok(out)
}

/// Most quota entries.
const QUOTAS_MAX: usize = 1024;

/// The quotas: each entry `PRINCIPAL=publish:RATE` or `PRINCIPAL=fetch:RATE` (RATE bytes per second, a
/// size such as `10MiB`; PRINCIPAL `*` is the default of every principal without its own).
pub fn quotas(list: &List) -> Result<crate::quota::QuotaConfig, String> {
    use crate::quota::QuotaKind;
    if list.0.len() > QUOTAS_MAX {
        return Err(format!("more than {QUOTAS_MAX} quotas"));
    }
    let mut c = crate::quota::QuotaConfig::default();
    for entry in &list.0 {
        let bad = || {
            format!("`{entry}` is not PRINCIPAL=publish:RATE or PRINCIPAL=fetch:RATE (RATE a size per second, e.g. 10MiB)")
        };
        let (principal, rest) = entry.rsplit_once('=').ok_or_else(bad)?;
        if principal != "*" {
            check_principal(principal)?;
        }
        let (kind, rate) = rest.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "publish" => QuotaKind::Publish,
            "fetch" => QuotaKind::Fetch,
            _ => return Err(bad()),
        };
        let rate: bytesize::ByteSize = rate.trim().parse().map_err(|_| bad())?;
        if rate.0 == 0 {
            return Err(format!("`{entry}`: a quota is at least 1 byte per second"));
        }
        c.rates.insert((principal.to_owned(), kind), rate.0);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashes_with_principals() {
        let h = "a".repeat(64);
        let t = tokens(&List(vec![format!("User:orders=sha256:{h}")])).unwrap();
        assert_eq!(t[&[0xaa; 32]], "User:orders");
        for bad in [
            format!("orders=sha256:{h}"),
            format!("User:orders={h}"),
            "User:orders=sha256:abc".to_owned(),
            "User:orders".to_owned(),
        ] {
            assert!(tokens(&List(vec![bad.clone()])).is_err(), "{bad}");
        }
        let dup = List(vec![
            format!("User:a=sha256:{h}"),
            format!("User:b=sha256:{h}"),
        ]);
        assert!(tokens(&dup).is_err());
        assert!(superusers(&List(vec!["admin".into()])).is_err());
        let q = quotas(&List(vec![
            "User:a=publish:1MiB".into(),
            "*=fetch:10KiB".into(),
        ]))
        .unwrap();
        assert_eq!(
            q.rate("User:a", crate::quota::QuotaKind::Publish),
            Some(1 << 20)
        );
        assert_eq!(
            q.rate("User:b", crate::quota::QuotaKind::Fetch),
            Some(10 << 10)
        );
        for bad in [
            "User:a=publish",
            "User:a=write:1MiB",
            "a=fetch:1MiB",
            "User:a=fetch:0",
        ] {
            assert!(quotas(&List(vec![bad.into()])).is_err(), "{bad}");
        }
    }
}
