use super::*;

/// A CA and a broker certificate it signed, written as PEM files into `dir`.
fn write_pki(dir: &Path, leaf_name: &str) -> TlsFiles {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![leaf_name.to_owned(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("broker.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("broker.key"), key.serialize_pem()).unwrap();
    TlsFiles {
        cert: dir.join("broker.pem"),
        key: dir.join("broker.key"),
        ca: dir.join("ca.pem"),
        client_ca: None,
    }
}

fn names() -> PeerNames {
    PeerNames::parse(names::PEER_NAME_DEFAULT).unwrap()
}

#[test]
fn files_load_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), "broker-1");
    Tls::load(files.clone(), names()).expect("a CA, a certificate and its key load");

    let missing = TlsFiles {
        cert: dir.path().join("nope.pem"),
        ..files.clone()
    };
    let e = Tls::load(missing, names()).unwrap_err().to_string();
    assert!(e.contains("nope.pem") && e.contains("cannot read"), "{e}");

    std::fs::write(dir.path().join("empty.pem"), "no pem here\n").unwrap();
    let empty = TlsFiles {
        ca: dir.path().join("empty.pem"),
        ..files.clone()
    };
    let e = Tls::load(empty, names()).unwrap_err().to_string();
    assert!(
        e.contains("empty.pem") && e.contains("no PEM certificate"),
        "{e}"
    );

    // A key that is not the certificate's.
    let other = tempfile::tempdir().unwrap();
    let other_files = write_pki(other.path(), "broker-2");
    let mismatched = TlsFiles {
        key: other_files.key,
        ..files.clone()
    };
    let e = Tls::load(mismatched, names()).unwrap_err().to_string();
    assert!(e.contains("broker.pem") && e.contains("with key"), "{e}");

    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'a'; PEM_FILE_BYTES_MAX as usize + 1]).unwrap();
    let e = Tls::load(TlsFiles { cert: big, ..files }, names())
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn changed_files_reload_and_broken_ones_keep_the_old_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pki(dir.path(), "broker-1");
    let tls = Tls::load(files.clone(), names()).unwrap();
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");
    let before = tls.current();

    // A half-written certificate: reported, and the previous configuration stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    assert!(tls.reload_if_changed().is_err());
    assert!(Arc::ptr_eq(&before, &tls.current()));
    assert!(
        !tls.reload_if_changed().unwrap(),
        "the same broken files are reported once"
    );

    // A new certificate and key (a rotation): the next handshake uses them.
    write_pki(dir.path(), "broker-1");
    // The stamp is (mtime, length): make sure it differs even on a coarse clock.
    let f = std::fs::File::options()
        .append(true)
        .open(&files.cert)
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    assert!(tls.reload_if_changed().unwrap());
    assert!(!Arc::ptr_eq(&before, &tls.current()));
}
