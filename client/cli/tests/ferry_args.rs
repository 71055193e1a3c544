//! `ferry`'s command line without a broker: usage errors exit 2 with clap's message, a broker that is not
//! there exits 1 with one `error:` line.
//!
//! Being an integration test of this package also makes `cargo test --workspace` build the `ferry` binary
//! itself, which the tests in `tests/` run.

use std::process::Command;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

#[test]
fn usage_errors_exit_2() {
    let out = ferry().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unreachable_broker_is_one_error_line_and_exit_1() {
    // A port nothing listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ferry()
        .args(["--bootstrap", &format!("127.0.0.1:{port}"), "topic", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}
