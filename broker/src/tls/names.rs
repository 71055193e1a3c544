//! Which broker a certificate belongs to: a template such as `broker-{id}` (or `ferry-{ordinal}.ferry`,
//! the StatefulSet pod names, where broker id = ordinal + 1) matched exactly against the certificate's
//! DNS and URI subject alternative names and its subject common name. No wildcard expands: a wildcard
//! certificate shared by all brokers names none of them, so one broker cannot speak as another.

use rustls::pki_types::CertificateDer;

/// The default template: a broker's certificate names it `broker-<id>`.
pub const PEER_NAME_DEFAULT: &str = "broker-{id}";
/// Longest template (bytes).
const TEMPLATE_BYTES_MAX: usize = 253;
/// Most names read from one certificate: past it, the rest are ignored.
const CERT_NAMES_MAX: usize = 64;

/// How a broker's certificate names its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNames {
    prefix: String,
    suffix: String,
    /// `{ordinal}`: the name holds id - 1.
    ordinal: bool,
}

impl PeerNames {
    /// Parses a template holding `{id}` or `{ordinal}` exactly once.
    pub fn parse(template: &str) -> Result<PeerNames, String> {
        if template.is_empty() || template.len() > TEMPLATE_BYTES_MAX {
            return Err(format!("must be 1-{TEMPLATE_BYTES_MAX} bytes"));
        }
        let (at, ordinal, hole) = match (template.find("{id}"), template.find("{ordinal}")) {
            (Some(i), None) => (i, false, "{id}"),
            (None, Some(i)) => (i, true, "{ordinal}"),
            _ => return Err("must hold exactly one of {id} and {ordinal}".into()),
        };
        let (prefix, suffix) = (&template[..at], &template[at + hole.len()..]);
        if suffix.contains('{') || prefix.contains('{') {
            return Err("must hold {id} or {ordinal} only once, and no other {…}".into());
        }
        Ok(PeerNames {
            prefix: prefix.to_ascii_lowercase(),
            suffix: suffix.to_ascii_lowercase(),
            ordinal,
        })
    }

    /// The name broker `id` has.
    pub fn name_of(&self, id: u64) -> String {
        let n = if self.ordinal {
            id.saturating_sub(1)
        } else {
            id
        };
        format!("{}{n}{}", self.prefix, self.suffix)
    }

    /// The broker id `name` names, if it fits the template (digits without a leading zero).
    pub fn id_in(&self, name: &str) -> Option<u64> {
        let name = name.to_ascii_lowercase();
        let digits = name
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let id = if self.ordinal { n.checked_add(1)? } else { n };
        (id != 0).then_some(id)
    }

    /// The broker ids a certificate names (usually one).
    pub fn ids_of(&self, cert: &CertificateDer<'_>) -> Vec<u64> {
        self.ids_in(&CertNames::of(cert))
    }

    /// The broker ids among a certificate's names.
    pub fn ids_in(&self, cert: &CertNames) -> Vec<u64> {
        let mut ids: Vec<u64> = cert.names.iter().filter_map(|n| self.id_in(n)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether a certificate names broker `id`, and no other.
    pub fn names_only(&self, cert: &CertificateDer<'_>, id: u64) -> bool {
        self.ids_of(cert) == [id]
    }
}

/// What a certificate calls its holder, read once (a connection parses its peer's certificate when it is
/// accepted, not on every request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The DNS and URI subject alternative names, then the subject common names (at most
    /// [`CERT_NAMES_MAX`]).
    pub names: Vec<String>,
    /// The first subject common name.
    pub common_name: Option<String>,
}

impl CertNames {
    /// The names of `cert` (none if it does not parse: rustls verified its chain already, so that does
    /// not happen in a handshake).
    pub fn of(cert: &CertificateDer<'_>) -> CertNames {
        use x509_parser::extensions::GeneralName;
        let Ok((_, c)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return CertNames::default();
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = c.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) => names.push((*s).to_owned()),
                    _ => {}
                }
            }
        }
        let cns: Vec<String> = c
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        let common_name = cns.first().cloned();
        names.extend(cns);
        names.truncate(CERT_NAMES_MAX);
        CertNames { names, common_name }
    }

    /// The name a client certificate gives its holder: the subject's common name, else its first DNS or
    /// URI subject alternative name.
    pub fn holder(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or_else(|| self.names.first().map(String::as_str))
    }
}

/// The DNS and URI subject alternative names and subject common names of a certificate.
pub fn names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    CertNames::of(cert).names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_ids_and_only_them() {
        let t = PeerNames::parse("broker-{id}").unwrap();
        assert_eq!(t.name_of(3), "broker-3");
        assert_eq!(t.id_in("broker-3"), Some(3));
        assert_eq!(t.id_in("BROKER-12"), Some(12));
        for bad in [
            "broker-",
            "broker-03",
            "broker-0",
            "broker-3x",
            "xbroker-3",
            "*",
            "broker-*",
        ] {
            assert_eq!(t.id_in(bad), None, "{bad}");
        }
        let k = PeerNames::parse("ferry-{ordinal}.ferry.default.svc").unwrap();
        assert_eq!(k.name_of(1), "ferry-0.ferry.default.svc");
        assert_eq!(k.id_in("ferry-0.ferry.default.svc"), Some(1));
        assert_eq!(k.id_in("ferry-2.ferry.default.svc"), Some(3));
        assert_eq!(k.id_in("ferry-2.ferry.other.svc"), None);
        for bad in ["", "broker", "{id}-{id}", "{id}{ordinal}", "a{id}{b}"] {
            assert!(PeerNames::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_names_are_read_from_sans_and_the_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["broker-2".into(), "localhost".into()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "broker-7");
        let cert = p.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let names = names_of(&der);
        assert!(names.contains(&"broker-2".to_owned()), "{names:?}");
        assert!(names.contains(&"broker-7".to_owned()), "{names:?}");
        let t = PeerNames::parse(PEER_NAME_DEFAULT).unwrap();
        assert_eq!(t.ids_of(&der), vec![2, 7]);
        // A certificate naming two brokers speaks for neither.
        assert!(!t.names_only(&der, 2));
        let wildcard = rcgen::CertificateParams::new(vec!["broker-*".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(t.ids_of(wildcard.der()).is_empty());
    }
}
