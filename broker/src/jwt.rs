//! Signed JWTs as bearer tokens: verified against configured public keys (RSA, EC or Ed25519 PEM) with the
//! configured issuer and audience, expiry and not-before within a leeway; the principal is `User:` and the
//! `sub` claim. `jsonwebtoken` (over *ring*) does the cryptography.

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Most public keys.
const JWT_KEYS_MAX: usize = 16;
/// Largest public key file (bytes).
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Longest `sub` claim (bytes), as any principal name.
const SUBJECT_BYTES_MAX: usize = crate::acl::ACL_FIELD_BYTES_MAX - "User:".len();

/// A key and the algorithms it verifies.
struct Key {
    key: DecodingKey,
    family: &'static [Algorithm],
}

const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

/// The verifier of JWT bearer tokens.
pub struct Jwt {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Jwt {
    /// Reads the public keys; the issuer and audience every token must carry; `leeway_ms` of clock skew
    /// allowed on expiry and not-before.
    pub fn load(
        paths: &[PathBuf],
        issuer: &str,
        audience: &str,
        leeway_ms: u64,
    ) -> Result<Jwt, String> {
        if paths.is_empty() || paths.len() > JWT_KEYS_MAX {
            return Err(format!("give 1 to {JWT_KEYS_MAX} public keys"));
        }
        if issuer.is_empty() || audience.is_empty() {
            return Err(
                "JWTs need an issuer and an audience to check (jwt_issuer, jwt_audience)".into(),
            );
        }
        let keys = paths
            .iter()
            .map(|p| read_key(p))
            .collect::<Result<_, _>>()?;
        Ok(Jwt {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs: leeway_ms.div_ceil(1000),
        })
    }

    /// Whether `token` is shaped like a JWT (three dot-separated parts), not a static token.
    pub fn looks_like(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// The principal a valid token names, or why it is not valid (one line, no secret in it).
    pub fn verify(&self, token: &str) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let mut last = "no configured key verifies this token's algorithm".to_owned();
        for k in self.keys.iter().filter(|k| k.family.contains(&header.alg)) {
            let mut v = Validation::new(header.alg);
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            v.leeway = self.leeway_secs;
            v.validate_nbf = true;
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    let sub = data.claims.sub;
                    if sub.is_empty()
                        || sub.len() > SUBJECT_BYTES_MAX
                        || sub.contains(char::is_control)
                    {
                        return Err(format!(
                            "the token's subject must be 1-{SUBJECT_BYTES_MAX} bytes"
                        ));
                    }
                    return Ok(format!("User:{sub}"));
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => {
                            "the token's signature does not verify".into()
                        }
                        ErrorKind::ExpiredSignature => "the token expired".into(),
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                        ErrorKind::InvalidAudience => {
                            format!(
                                "the token is not for this cluster (audience is not `{}`)",
                                self.audience
                            )
                        }
                        ErrorKind::InvalidIssuer => {
                            format!("the token was not issued by `{}`", self.issuer)
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            format!("the token has no `{c}` claim")
                        }
                        other => format!("the token is not valid: {other:?}"),
                    };
                    // A signature that does not verify may verify with the next key; anything else is final.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn read_key(path: &Path) -> Result<Key, String> {
    let bad = |why: String| format!("JWT key {}: {why}", path.display());
    let pem =
        crate::tls::read_bounded(path, KEY_FILE_BYTES_MAX, "a public key file").map_err(bad)?;
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key { key, family: EC });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key { key, family: RSA });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok(Key { key, family: ED });
    }
    Err(bad("not a PEM public key (RSA, EC or Ed25519)".into()))
}
