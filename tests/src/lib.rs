//! Support code for Ferry's integration tests: start real `ferryd` processes on 127.0.0.1 with free
//! ports and temporary data dirs, run the real `ferry` CLI, and wait on conditions with deadlines.
//!
//! The binaries are built by `cargo test --workspace` (the README's test command): `ferryd` and `ferry` have
//! integration tests of their own, which makes cargo build them; they are found next to the test
//! executable's directory (`target/<profile>/`).
//!
//! Modules, lower first: [`ports`] (loopback ports a restarted broker can bind again), this file (one
//! `ferryd`, the `ferry` CLI, waits), [`cluster`] (three-broker clusters), [`pki`] (certificate
//! authorities and certificates made in the test, HTTPS probes), [`layout`] (the source-tree check, apart).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use tonic::transport::Channel;

pub mod cluster;
pub mod docker;
pub mod layout;
pub mod pki;
pub mod ports;

/// How long a broker may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a workspace binary (`ferryd`, `ferry`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from target/<profile>/deps; a harness binary (ferry-chaos) from target/<profile>.
    let here = exe.parent().expect("executable directory");
    let dir = if here.join(name).exists() {
        here
    } else {
        here.parent().expect("target/<profile>/deps/..")
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --workspace --bins` first)",
        p.display()
    );
    p
}

/// The cargo target directory these binaries were built into (`target/`): where tests cache tools they
/// fetch for themselves (a Python environment, libfaketime).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable directory");
    // target/<profile>/deps/x or target/<profile>/x
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    dir.parent().expect("target/").to_owned()
}

/// Serializes the tests that hold it: one process-wide lock. The multi-broker tests (cluster, membership,
/// chaos, group takeover) time failovers and sessions against Raft's election timeout, so they must not
/// share the two cores with another test of their own binary. Plain `cargo test` runs the tests of one
/// binary on parallel threads; this lock makes it behave like nextest's `threads-required` override
/// (`.config/nextest.toml`), where each test is its own process and the lock is uncontended.
/// For a synchronous test; [`serial_async`] in a `#[tokio::test]`. The lock never poisons: a test that
/// panicked while holding it does not fail the ones after it.
pub fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// [`serial`] for an async test.
pub async fn serial_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static BROKER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Lines mentioning a panic that brokers started by this process wrote to stderr (a panicked task, or a
/// replica task fenced after one).
pub fn broker_panics() -> usize {
    BROKER_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A loopback address for a listener that [`Ferryd::restart_in_place`] binds again (see
/// [`ports::free_port`]).
fn restartable() -> String {
    format!("127.0.0.1:{}", ports::free_port())
}

/// The fault file (`FERRY_FAULT_FILE`) of the broker on `data_dir`.
pub fn fault_file(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map_or("ferryd".into(), |n| n.to_string_lossy().into_owned());
    data_dir.with_file_name(format!("{name}.faults"))
}

/// A running `ferryd`.
pub struct Ferryd {
    pub child: Child,
    pub data_dir: PathBuf,
    /// host:port of the client listener.
    pub addr: String,
    /// host:port of the HTTP listener.
    pub http: String,
    /// Bound host:port of each named client listener (`listener.NAME=` in its listening line).
    pub listeners: std::collections::BTreeMap<String, String>,
    extra: Vec<String>,
    /// Environment variables it was started with (kept across restarts).
    env: Vec<(String, String)>,
}

impl Ferryd {
    /// Starts a broker on `data_dir` with ephemeral ports and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Ferryd {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (listen, http) = (restartable(), restartable());
        Ferryd::spawn(data_dir, &listen, &http, extra)
    }

    /// The value of one of the flags it was started with (`--peers`, say).
    pub fn flag(&self, name: &str) -> Option<String> {
        let i = self.extra.iter().position(|a| a == name)?;
        self.extra.get(i + 1).cloned()
    }

    /// Like [`Ferryd::start`], but a broker that exits before listening (a port taken meanwhile, say) is an
    /// error rather than a panic.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Ferryd, String> {
        Ferryd::try_start_with_env(data_dir, extra, &[])
    }

    /// [`Ferryd::try_start`] with environment variables, kept for every restart.
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Ferryd, String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Ferryd::try_spawn(data_dir, &restartable(), &restartable(), extra, env)
    }

    /// The process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Starts `ferryd` on the given listeners and waits until it prints its listening line.
    fn spawn(data_dir: &Path, listen: &str, http_listen: &str, extra: Vec<String>) -> Ferryd {
        Ferryd::try_spawn(data_dir, listen, http_listen, extra, &[])
            .expect("ferryd did not start listening in time")
    }

    fn try_spawn(
        data_dir: &Path,
        listen: &str,
        http_listen: &str,
        extra: Vec<String>,
        env: &[(&str, &str)],
    ) -> Result<Ferryd, String> {
        let kept: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut child = Command::new(bin("ferryd"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--http-listen", http_listen])
            .args(&extra)
            .env("FERRY_LOG", "warn")
            // Network faults for ferry-chaos: a file beside the data dir, absent unless a run writes it.
            .env("FERRY_FAULT_FILE", fault_file(data_dir))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferryd");
        // Its log goes on to ours, and every panic it reports is counted (`broker_panics`).
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("panicked") {
                    BROKER_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                eprintln!("{line}");
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("ferryd listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.ends_with(" faults=on") => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} was built without the fault-injection feature (`cargo build -p ferry-broker` \
                     builds it so): build it with `cargo test --workspace` or `cargo build --workspace --bins`",
                    bin("ferryd").display()
                );
            }
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("ferryd did not start listening: {e}"));
            }
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .expect("listening line field")
                .to_owned()
        };
        let listeners = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("listener."))
            .filter_map(|w| w.split_once('='))
            .map(|(name, addr)| (name.to_owned(), addr.to_owned()))
            .collect();
        Ok(Ferryd {
            addr: field("client="),
            http: field("http="),
            listeners,
            child,
            data_dir: data_dir.to_owned(),
            extra,
            env: kept,
        })
    }

    /// Kills the broker with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the broker with SIGTERM and waits for it to exit (bounded); returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill9();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a broker again on the same data dir (with new ports).
    pub fn restart(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        *self = Ferryd::try_spawn(
            &self.data_dir.clone(),
            &restartable(),
            &restartable(),
            self.extra.clone(),
            &env,
        )
        .expect("ferryd did not start listening in time");
    }

    /// Starts the broker again on the same data dir and the same ports, as a restarted server would be:
    /// clients that know its address can reconnect. Call after [`Ferryd::kill9`] or [`Ferryd::stop`].
    pub fn restart_in_place(&mut self) {
        self.restart_in_place_with_env(&[]);
    }

    /// [`Ferryd::restart_in_place`] with extra environment variables for the new process (ferry-chaos
    /// starts a broker under libfaketime this way).
    pub fn restart_in_place_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "the old broker must have exited"
        );
        let (addr, http) = (self.addr.clone(), self.http.clone());
        let mut all: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend(env.iter().copied());
        *self = Ferryd::try_spawn(
            &self.data_dir.clone(),
            &addr,
            &http,
            self.extra.clone(),
            &all,
        )
        .expect("ferryd did not start listening in time");
    }

    /// Freezes the broker with SIGSTOP: it keeps its sockets but answers nothing until [`Ferryd::resume`].
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    /// The value of an unlabelled sample on `/metrics` (for a summary, `<name>_count` and `<name>_sum`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(&self.http, "/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    /// A gRPC channel to the client port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// The client service.
    pub async fn client(&self) -> v1::ferry_client::FerryClient<Channel> {
        v1::ferry_client::FerryClient::new(self.channel().await)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The admin service.
    pub async fn admin(&self) -> v1::admin_client::AdminClient<Channel> {
        v1::admin_client::AdminClient::new(self.channel().await)
    }

    /// Runs the `ferry` CLI against this broker.
    pub fn ferry(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        run_ferry(&self.addr, args, stdin)
    }

    /// Whether the broker became ready, with every partition led, within `timeout` (see
    /// [`Ferryd::wait_ready`], which fails the test instead).
    pub fn ready_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if http_get(&self.http, "/readyz").0 == 200 && self.leaders_known() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the broker process has exited (a zombie not yet reaped counts), without reaping it; `None`
    /// when `/proc` cannot tell.
    pub fn child_exited(&self) -> Option<bool> {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
            Err(_) => None,
        }
    }

    /// Waits until `/readyz` answers 200 and, as this broker sees the cluster (`/health/cluster`), the
    /// controller and every partition have a leader (under-replication is allowed: a test may have stopped
    /// a broker).
    pub fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(20),
            "broker ready, every partition led",
            || http_get(&self.http, "/readyz").0 == 200 && self.leaders_known(),
        );
    }

    /// The controller and every partition have a leader, as `/health/cluster` says.
    pub fn leaders_known(&self) -> bool {
        let (_, body) = http_get(&self.http, "/health/cluster");
        let Ok(h) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        h["controller_leader"].as_u64().is_some_and(|l| l != 0)
            && h["leaderless"].as_array().is_some_and(|a| a.is_empty())
    }
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ferry` with `--bootstrap addr`, feeding `stdin`.
pub fn run_ferry(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    run_ferry_env(addr, args, stdin, &[("FERRY_CLI_CONFIG", "/dev/null")])
}

/// [`run_ferry`] with `env` set for the CLI (`FERRY_CLI_CONFIG` among them: [`run_ferry`] sets it to
/// `/dev/null`, so no context of this machine's CLI config file applies). An empty `addr` gives no
/// `--bootstrap` flag.
pub fn run_ferry_env(
    addr: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> std::process::Output {
    use std::io::Write;
    let bootstrap: &[&str] = if addr.is_empty() {
        &[]
    } else {
        &["--bootstrap", addr]
    };
    let mut child = Command::new(bin("ferry"))
        .args(bootstrap)
        .args(args)
        .envs(env.iter().copied())
        // The SDK logs to stderr only when RUST_LOG asks, and tests assert on stderr.
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = output_within(
        child,
        FERRY_CLI_DEADLINE,
        &format!("ferry {}", args.join(" ")),
    );
    let _ = writer.join();
    out
}

/// Longest a `ferry` command run by a test may take: a hung CLI fails its test rather than CI.
const FERRY_CLI_DEADLINE: Duration = Duration::from_secs(120);

/// Waits (at most `deadline`) for `child` and collects its piped stdout and stderr; a process still running
/// then is killed and the test fails, naming `what`.
pub fn output_within(mut child: Child, deadline: Duration, what: &str) -> std::process::Output {
    use std::io::Read;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = exit_within(&mut child, deadline, what);
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A loopback `host:port` nobody listens on (bound, noted and released), for unreachable-broker cases.
pub fn unused_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").to_string()
}

/// Waits up to `timeout` for `child` to exit, killing it and panicking if it does not.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    exit_within(child, timeout, "process")
}

/// [`wait_exit`], naming `what` when it does not exit in time.
fn exit_within(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    http_response(&buf)
}

/// The status and body of a whole HTTP/1.1 response (0 and empty when it is not one).
pub fn http_response(buf: &str) -> (u16, String) {
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `cond` until it holds or `timeout` passes (then panics naming `what`).
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `.log` files of a partition directory, oldest first.
pub fn segment_files(data_dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let topics = data_dir.join("topics");
    let topic_dir = std::fs::read_dir(&topics)
        .expect("topics dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split_once('-').is_some_and(|(_, t)| t == topic))
        })
        .expect("topic dir");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(topic_dir.join(partition.to_string()))
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// One keyless batch holding `values`, as a client builds it.
pub fn batch_of(values: &[String]) -> bytes::Bytes {
    let mut b = ferry_protocol::batch::BatchBuilder::new(1);
    for v in values {
        b.push(1, None, v.as_bytes(), &[]);
    }
    b.finish()
}
