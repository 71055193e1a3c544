//! Signed JWTs as bearer tokens (docs/security.md): a token from the configured issuer for this cluster's
//! audience names its principal (`User:` + `sub`), within the clock-skew leeway; an expired token, one for
//! another tenant's audience, one from another issuer and one signed by another key are refused with
//! UNAUTHENTICATED and one line saying which.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_tests::{run_ferry, Ferryd};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://login.example.com";
const AUDIENCE: &str = "ferry-prod";
const ADMIN: &str = "admin-static-token";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(key: &rcgen::KeyPair, sub: &str, iss: &str, aud: &str, exp: i64) -> String {
    let claims = serde_json::json!({"sub": sub, "iss": iss, "aud": aud, "exp": exp, "iat": now()});
    let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
}

fn ferry(b: &Ferryd, token: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    run_ferry(&b.addr, &all, stdin)
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refused(out: &std::process::Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(why), "says {why}: {err}");
}

#[test]
fn jwts_from_the_issuer_for_this_cluster_name_their_principal() {
    let _serial = ferry_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let issuer_key = rcgen::KeyPair::generate().unwrap();
    let public = dir.path().join("issuer.pub.pem");
    std::fs::write(&public, issuer_key.public_key_pem()).unwrap();
    let hash = ferry_tests::pki::token_hash(ADMIN);
    let tokens = format!("User:admin={hash}");
    let data = dir.path().join("data");
    let public = public.display().to_string();
    let b = Ferryd::start(
        &data,
        &[
            "--authorization",
            "--superusers",
            "User:admin",
            "--auth-tokens",
            &tokens,
            "--jwt-public-keys",
            &public,
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
        ],
    );
    ok(&ferry(
        &b,
        ADMIN,
        &["topic", "create", "orders.created", "--partitions", "1"],
        None,
    ));
    ok(&ferry(
        &b,
        ADMIN,
        &[
            "acl",
            "create",
            "--principal",
            "User:orders-svc",
            "--operation",
            "write",
            "--topic",
            "orders.",
            "--prefix",
        ],
        None,
    ));

    let valid = jwt(&issuer_key, "orders-svc", ISSUER, AUDIENCE, now() + 300);
    ok(&ferry(
        &b,
        &valid,
        &["produce", "orders.created"],
        Some(b"a\nb\n"),
    ));
    // Expired 30 s ago: within the default minute of leeway.
    let skewed = jwt(&issuer_key, "orders-svc", ISSUER, AUDIENCE, now() - 30);
    ok(&ferry(
        &b,
        &skewed,
        &["produce", "orders.created"],
        Some(b"c\n"),
    ));
    // Another subject is another principal, with no ACL.
    let other = jwt(&issuer_key, "billing", ISSUER, AUDIENCE, now() + 300);
    let out = ferry(&b, &other, &["produce", "orders.created"], Some(b"x\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("User:billing may not"));

    let expired = jwt(&issuer_key, "orders-svc", ISSUER, AUDIENCE, now() - 3_600);
    refused(
        &ferry(&b, &expired, &["topic", "list"], None),
        "the token expired",
    );
    let tenant = jwt(
        &issuer_key,
        "orders-svc",
        ISSUER,
        "ferry-staging",
        now() + 300,
    );
    refused(
        &ferry(&b, &tenant, &["topic", "list"], None),
        "not for this cluster",
    );
    let foreign = jwt(
        &issuer_key,
        "orders-svc",
        "https://evil.example.com",
        AUDIENCE,
        now() + 300,
    );
    refused(
        &ferry(&b, &foreign, &["topic", "list"], None),
        "was not issued by",
    );
    let forged = jwt(
        &rcgen::KeyPair::generate().unwrap(),
        "orders-svc",
        ISSUER,
        AUDIENCE,
        now() + 300,
    );
    refused(
        &ferry(&b, &forged, &["topic", "list"], None),
        "signature does not verify",
    );
}
