//! `ferryd`'s command line as a user meets it: `--version`, and bad flags refused at start with one
//! readable line and a non-zero exit, before anything is created on disk.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the `ferryd`
//! binary itself, which the multi-broker tests in `tests/` start.

use std::process::Command;

fn ferryd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferryd"))
}

#[test]
fn version_names_the_binary() {
    let out = ferryd().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ferryd "), "{text}");
}

#[test]
fn bad_flags_fail_with_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flag, value) in [
        ("--fsync", "sometimes"),
        ("--segment-bytes", "10"),
        ("--batch-bytes-max", "1"),
        ("--node-id", "0"),
        ("--peers", "1=nohostport"),
    ] {
        let out = ferryd()
            .args(["--data-dir", data.to_str().unwrap(), flag, value])
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag.trim_start_matches('-')) || err.contains(value),
            "{flag} {value}: the message names neither: {err}"
        );
        assert!(!data.exists(), "{flag} {value}: the data dir was created");
    }
}
