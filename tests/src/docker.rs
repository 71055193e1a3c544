//! Docker from the container tests (`tests/tests/containers.rs`, `tests/tests/kubernetes.rs`): bounded
//! commands, and the image they run.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The image under test: `FERRY_IMAGE`, else `ferry:dev` (what `deploy/image.sh` builds).
pub fn image() -> String {
    std::env::var("FERRY_IMAGE").unwrap_or_else(|_| "ferry:dev".into())
}

/// Runs `cmd` with `stdin` fed to it, bounded: a hung docker call fails the test instead of hanging it.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, bound: Duration) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    crate::output_within(child, bound, "docker")
}

/// `docker ARGS`, which must succeed within 90 s.
pub fn docker(args: &[&str]) -> Output {
    let out = run(
        Command::new("docker").args(args),
        None,
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `docker ARGS`, whatever it answers (cleanup).
pub fn docker_quiet(args: &[&str]) {
    let _ = run(
        Command::new("docker").args(args),
        None,
        Duration::from_secs(90),
    );
}

/// Like [`crate::wait_until`], for conditions that run docker commands: polled every 250 ms, not 20 ms (each
/// `docker exec` costs a process and a round trip to the daemon).
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
