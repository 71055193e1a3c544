//! A Python client generated from the .proto files alone creates a topic, publishes and consumes
//! (tests/python/polyglot.py; needs python3 with grpcio-tools, which .ci/run installs).

use ferry_tests::Ferryd;

#[test]
fn python_client_from_protos_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/polyglot.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&broker.addr)
        .arg("polyglot")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
