//! A Python client generated from the .proto files alone creates a topic, publishes and consumes
//! (tests/python/polyglot.py). The test brings its own Python tools: a virtual environment with
//! `grpcio-tools` from PyPI, made once under `target/` and reused.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::Ferryd;

/// The grpcio-tools the test installs (any release since gRPC 1.60 generates code the script runs).
const GRPCIO_TOOLS: &str = "grpcio-tools>=1.60";

/// The last line of a command's stderr (pip's and venv's errors end with their reason).
fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim()
        .to_owned()
}

/// The Python interpreter of `target/polyglot-venv`, made (once) with grpcio-tools installed. It is built
/// beside and renamed into place, so a half-made environment is never used. `Err` is one line saying what
/// to install.
fn python_with_grpc_tools() -> Result<PathBuf, String> {
    // The tests of this binary run on parallel threads: one makes the environment, the others wait.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = ferry_tests::target_dir().join("polyglot-venv");
    let python = venv.join("bin").join("python");
    if python.exists() {
        return Ok(python);
    }
    let staging = venv.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&staging)
        .output()
        .map_err(|e| format!("python3 is needed for this test (install Python 3): {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "cannot create a Python virtual environment ({}): install Python's venv module \
             (Debian: apt-get install python3-venv)",
            last_line(&made)
        ));
    }
    let pip = Command::new(staging.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(GRPCIO_TOOLS)
        .output()
        .map_err(|e| format!("cannot run the new environment's Python: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "cannot install {GRPCIO_TOOLS} from PyPI ({}): make PyPI reachable, or install it with \
             `python3 -m pip install '{GRPCIO_TOOLS}'` and put it in {}",
            last_line(&pip),
            venv.display()
        ));
    }
    std::fs::rename(&staging, &venv)
        .map_err(|e| format!("cannot move {}: {e}", staging.display()))?;
    Ok(python)
}

fn run_script(python: &Path, addr: &str, secure: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/polyglot.py");
    let topic = if secure.is_empty() {
        "polyglot"
    } else {
        "polyglot-secure"
    };
    Command::new(python)
        .arg(script)
        .arg(addr)
        .arg(topic)
        .args(secure)
        .output()
        .expect("run the Python client")
}

#[test]
fn python_client_from_protos_alone() {
    let python = python_with_grpc_tools().unwrap_or_else(|why| panic!("polyglot test: {why}"));
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let out = run_script(&python, &broker.addr, &[]);
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same client against a three-broker cluster with mTLS between brokers, over TLS with a bearer token,
/// on brokers enforcing ACLs: its principal may create, write and read `polyglot` topics, and that is all it
/// needs. An unknown token gets nothing.
#[test]
fn python_client_on_a_secure_cluster_with_a_token() {
    let python = python_with_grpc_tools().unwrap_or_else(|why| panic!("polyglot test: {why}"));
    let _serial = ferry_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = ferry_tests::pki::Pki::new(dir.path(), "ca");
    let hash = ferry_tests::pki::token_hash;
    let tokens = format!("User:admin={},User:py={}", hash("admin-t"), hash("py-t"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let flags = [
        "--authorization",
        "--superusers",
        "User:admin",
        "--auth-tokens",
        &tokens,
    ];
    let (_, brokers) = ferry_tests::pki::start_secure_cluster(&pki, &dirs, &flags);
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let addrs = addrs.join(",");
    let ca = pki.ca().display().to_string();
    let grant = ferry_tests::run_ferry(
        &addrs,
        &[
            "--tls-ca",
            &ca,
            "--token",
            "admin-t",
            "acl",
            "create",
            "--principal",
            "User:py",
            "--operation",
            "create,write,read",
            "--topic",
            "polyglot",
            "--prefix",
        ],
        None,
    );
    assert!(
        grant.status.success(),
        "{}",
        String::from_utf8_lossy(&grant.stderr)
    );
    // Every broker applies the ACL (controller state) before the client asks it.
    for b in &brokers {
        ferry_tests::wait_until(
            std::time::Duration::from_secs(10),
            "the ACL applied",
            || {
                let out = ferry_tests::run_ferry(
                    &b.addr,
                    &[
                        "--tls-ca",
                        &ca,
                        "--token",
                        "admin-t",
                        "acl",
                        "list",
                        "--principal",
                        "User:py",
                    ],
                    None,
                );
                String::from_utf8_lossy(&out.stdout).lines().count() >= 4
            },
        );
    }
    let out = run_script(&python, &addrs, &[&ca, "py-t"]);
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_script(&python, &addrs, &[&ca, "wrong-token"]);
    assert!(!out.status.success(), "an unknown token is refused");
}
