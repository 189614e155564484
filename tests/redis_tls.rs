#![cfg(feature = "redis-tls")]
//! `taskgate::redis` over TLS (`rediss://`, feature `redis-tls`) against a real
//! `redis-server` listening on a TLS port, with the test CA and server
//! certificate in `tests/data/tls/` (test-only; see its README).
//!
//! Run: `cargo test --features redis-tls --test redis_tls -- --nocapture`.
//!
//! Each test starts its own server through the shared harness
//! (`support/redis_server.rs`), which passes `--port N` itself and knows the
//! server is up when the plain port answers PING. So the server keeps that
//! plain port (for the readiness check, and for looking at Redis directly) and
//! gets `--tls-port M` on a second free port; both listeners are bound before
//! the server answers anything, so a PING on the plain one means the TLS one is
//! up too.
//!
//! Without redis-server on the PATH the harness prints its "skipping" line; if
//! the binary was built without TLS, each test prints one "skipping" line
//! saying so. Either way the test returns, unless `TASKGATE_REQUIRE_REDIS=1`,
//! where it fails.

mod support;

#[path = "support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{Client, TlsCertificates};
use redis_server::{
    RedisServer, connection, free_port, held_job, keys, limited_pool, require_redis, server_command,
};
use support::{Gauge, held};
use taskgate::Rate;
use taskgate::redis::{RedisErrorKind, RedisLimits, SharedConcurrency, SharedRate};

/// The password of the `requirepass` tests (and of URLs that must not leak it).
const PASSWORD: &str = "tls-Secret-pw-4411";

// ---------------------------------------------------------------------------
// A redis-server with a TLS port
// ---------------------------------------------------------------------------

/// A file of the test CA and server certificate.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// The test CA, PEM.
fn ca_pem() -> Vec<u8> {
    std::fs::read(data("ca.crt")).expect("tests/data/tls/ca.crt")
}

/// The `redis-server` arguments that turn TLS on, on `tls_port`, with the
/// test certificate and no client certificates asked for.
fn tls_args(tls_port: u16) -> Vec<String> {
    vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path_str(&data("server.crt")),
        "--tls-key-file".into(),
        path_str(&data("server.key")),
        "--tls-ca-cert-file".into(),
        path_str(&data("ca.crt")),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// Whether `binary` was built with TLS: `Err(why not)` if it was not. Decided
/// once per run by starting it with only a TLS port: it either listens there
/// or exits saying it does not know TLS (`Bad directive` for `tls-port` up to
/// Redis 7.0; `Failed finding TLS support` from 7.2). Panics if it exits for
/// another reason (a broken certificate file, say): that is a failure, not a
/// skip.
fn tls_support(binary: &Path) -> &'static Result<(), String> {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let mut last = String::new();
        // The probe's port can be taken before the server binds it: retry.
        for _ in 0..3 {
            match probe_tls(binary) {
                Probe::Listens => return Ok(()),
                Probe::NoTls(why) => return Err(why),
                Probe::PortTaken(out) => last = out,
            }
        }
        panic!("redis-server with only a TLS port would not start: {last}");
    })
}

enum Probe {
    Listens,
    NoTls(String),
    PortTaken(String),
}

fn probe_tls(binary: &Path) -> Probe {
    let dir = std::env::temp_dir().join(format!(
        "taskgate-redis-tls-probe-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create the probe's directory");
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).expect("create the probe's log");
    let tls_port = free_port();
    let mut child = server_command(binary, 0, &dir)
        .args(tls_args(tls_port))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the log's handle"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary:?}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lower = text.to_lowercase();
            if (lower.contains("bad directive") && lower.contains("tls"))
                || lower.contains("tls support")
                || lower.contains("connection type tls")
            {
                let line = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                break Probe::NoTls(line);
            }
            if lower.contains("address already in use") {
                break Probe::PortTaken(text);
            }
            let _ = std::fs::remove_dir_all(&dir);
            panic!("redis-server with a TLS port exited with {status}:\n{text}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break Probe::Listens;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("redis-server with a TLS port did not listen within 10 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    probe
}

/// A harness server with a TLS port as well as its plain one.
struct TlsServer {
    server: RedisServer,
    tls_port: u16,
}

impl TlsServer {
    /// Starts one (with `extra` arguments), or returns `None` where the test
    /// is skipped: no redis-server (the harness's rule), or one without TLS.
    fn start(extra: &[&str]) -> Option<TlsServer> {
        if let Some(binary) = redis_server::find_binary()
            && let Err(why) = tls_support(&binary)
        {
            if require_redis() {
                panic!("TASKGATE_REQUIRE_REDIS=1 but {binary:?} has no TLS support: {why}");
            }
            eprintln!(
                "skipping: {} was built without TLS ({why})",
                binary.display()
            );
            return None;
        }
        // The harness may pick this port for its own `--port` only by a
        // one-in-thousands chance (both come from the kernel's ephemeral
        // range); a clash would fail the start, not pass wrongly.
        let tls_port = free_port();
        let mut args = tls_args(tls_port);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(&args)?;
        assert_ne!(server.port(), tls_port);
        Some(TlsServer { server, tls_port })
    }

    /// `rediss://{userinfo}127.0.0.1:{tls_port}/`.
    fn tls_url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}127.0.0.1:{}/", self.tls_port)
    }

    /// A plain connection on the non-TLS port, for looking at Redis directly.
    async fn plain(&self, password: Option<&str>) -> MultiplexedConnection {
        let url = match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.server.port()),
            None => self.server.url(),
        };
        connection(&url).await
    }
}

/// A client for `url` that trusts the test CA (and nothing else).
fn client_trusting_test_ca(url: &str) -> Client {
    Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem()),
        },
    )
    .unwrap()
}

/// Whether `key` is the `tls` limit's key of `kind` (`r` rate, `c`
/// concurrency) under the default prefix.
fn is_key_of(key: &str, kind: &str) -> bool {
    key.starts_with(&format!("taskgate:{kind}:")) && key.contains(":tls:")
}

/// Polls `KEYS taskgate:*` in the background and collects every key seen.
struct KeyWatcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeSet<String>>,
}

impl KeyWatcher {
    fn start(mut conn: MultiplexedConnection) -> KeyWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            loop {
                // One more look after being told to stop.
                let last = flag.load(Ordering::SeqCst);
                seen.extend(keys(&mut conn, "taskgate:*").await);
                if last {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        KeyWatcher { stop, task }
    }

    async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// The local ports the server's clients are connected to (`laddr` of each
/// line of `CLIENT LIST`).
async fn client_local_ports(c: &mut MultiplexedConnection) -> Vec<u16> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(c)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("laddr="))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
        })
        .collect()
}

/// Runs jobs through `pool` and checks the shared limits did their work over
/// TLS: their keys in Redis, the limits' connection on the TLS port, never
/// more than 2 jobs at once, every call answered.
async fn run_jobs_and_check(
    server: &TlsServer,
    plain: &mut MultiplexedConnection,
    rate: &SharedRate,
    conc: &SharedConcurrency,
) {
    let pool = limited_pool(8, &[rate, conc]);

    // One job held open: by the time it runs, a token was leased and a slot
    // taken, through the limits' TLS connection.
    let (job, started_rx, finish_tx) = held_job();
    let held_open = pool.submit(job).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), started_rx)
        .await
        .expect("the first job did not start within 10 s")
        .unwrap();
    // Its slot is held (and renewed) until it ends: the concurrency key is
    // there now, whatever the timing.
    let found = keys(plain, "taskgate:*").await;
    eprintln!("keys while a job holds a slot: {found:?}");
    assert!(
        found.iter().any(|k| is_key_of(k, "c")),
        "no concurrency key in {found:?}"
    );
    let ports = client_local_ports(plain).await;
    assert!(
        ports.contains(&server.tls_port),
        "no client on the TLS port {}: {ports:?}",
        server.tls_port
    );
    finish_tx.send(()).unwrap();
    held_open.await.unwrap();

    // The rate's key lives only while the bucket's TAT is ahead of Redis's
    // clock (it expires once idle, ~10 ms after a lone lease at this rate), so
    // it is looked for while these jobs, which ask for more than the rate,
    // keep it ahead.
    let watcher = KeyWatcher::start(plain.clone());
    let in_flight = Gauge::default();
    let mut handles = Vec::new();
    for _ in 0..24 {
        handles.push(
            pool.submit(held(&in_flight, Duration::from_millis(5)))
                .await
                .unwrap(),
        );
    }
    let t = Instant::now();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("a job did not finish within 20 s")
            .unwrap();
    }
    let (rs, cs) = (rate.stats(), conc.stats());
    eprintln!(
        "24 jobs in {:?}, at most {} at once; rate {rs:?}; concurrency {cs:?}",
        t.elapsed(),
        in_flight.peak()
    );
    assert!(in_flight.peak() <= 2);
    for (what, s) in [("rate", rs), ("concurrency", cs)] {
        assert!(s.round_trips > 0, "{what}: {s:?}");
        assert_eq!(s.errors, 0, "{what}: {s:?}");
        assert_eq!(s.started_on_error, 0, "{what}: {s:?}");
        assert!(s.granted > 0, "{what}: {s:?}");
    }
    let seen = watcher.stop().await;
    eprintln!("keys seen while the jobs ran: {seen:?}");
    for kind in ["r", "c"] {
        assert!(
            seen.iter().any(|k| is_key_of(k, kind)),
            "no {kind} key seen in {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A: a connection manager made with the test CA as the only root, handed to
/// `RedisLimits::from_connection`, carries a shared rate and a shared
/// concurrency limit over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_over_tls_with_a_custom_ca() {
    let Some(server) = TlsServer::start(&[]) else {
        return;
    };
    let client = client_trusting_test_ca(&server.tls_url(""));
    // `new` connects now: the handshake (the certificate checked against the
    // test CA, for 127.0.0.1) happens here.
    let conn = ConnectionManager::new(client)
        .await
        .expect("TLS connection with the test CA");
    let redis = RedisLimits::from_connection(conn);
    redis.ping().await.unwrap();

    let mut plain = server.plain(None).await;
    let rate = redis.rate("tls", Rate::per_second(100).burst(10));
    let conc = redis.concurrency("tls", 2);
    run_jobs_and_check(&server, &mut plain, &rate, &conc).await;
}

/// B: `RedisLimits::connect` trusts the system's roots only, where the test CA
/// is not: it fails, with an error (not a panic, not a timeout) that says why
/// and never holds the URL's password. `#insecure` needs the redis crate's
/// `tls-rustls-insecure` feature, which `redis-tls` does not enable: a
/// configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_system_roots_rejects_the_test_ca() {
    let Some(server) = TlsServer::start(&[]) else {
        return;
    };
    for userinfo in [String::new(), format!(":{PASSWORD}@")] {
        let url = server.tls_url(&userinfo);
        let t = Instant::now();
        let err = RedisLimits::connect(&url).await.unwrap_err();
        let (display, debug) = (format!("{err}"), format!("{err:?}"));
        eprintln!("connect({url:?}) failed in {:?}: {debug}", t.elapsed());
        assert_ne!(err.kind(), RedisErrorKind::Timeout, "{debug}");
        assert!(
            display.to_lowercase().contains("certificate"),
            "the error should say the certificate was refused: {display}"
        );
        assert!(!display.contains(PASSWORD), "{display}");
        assert!(!debug.contains(PASSWORD), "{debug}");
    }

    let url = format!("{}#insecure", server.tls_url(&format!(":{PASSWORD}@")));
    let err = RedisLimits::connect(&url).await.unwrap_err();
    let (display, debug) = (format!("{err}"), format!("{err:?}"));
    eprintln!("connect(\"...#insecure\") failed: {debug}");
    assert_eq!(err.kind(), RedisErrorKind::Config, "{debug}");
    assert!(display.contains("tls-rustls-insecure"), "{display}");
    assert!(!display.contains(PASSWORD), "{display}");
    assert!(!debug.contains(PASSWORD), "{debug}");

    // The server is fine: the test CA gets through to it.
    let mut conn = client_trusting_test_ca(&server.tls_url(""))
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// C: a server with `requirepass`: the password in a `rediss://` URL is sent
/// over TLS and taken; without it, calls fail as `Auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_over_tls() {
    let Some(server) = TlsServer::start(&["--requirepass", PASSWORD]) else {
        return;
    };
    let mut plain = server.plain(Some(PASSWORD)).await;

    // No password: the TLS connection is made, and PING is refused.
    let conn = ConnectionManager::new(client_trusting_test_ca(&server.tls_url("")))
        .await
        .expect("TLS connection with the test CA");
    let err = RedisLimits::from_connection(conn).ping().await.unwrap_err();
    eprintln!("PING without the password: {err:?}");
    assert_eq!(err.kind(), RedisErrorKind::Auth, "{err:?}");

    let client = client_trusting_test_ca(&server.tls_url(&format!(":{PASSWORD}@")));
    let conn = ConnectionManager::new(client)
        .await
        .expect("TLS connection with the password");
    let redis = RedisLimits::from_connection(conn);
    redis.ping().await.unwrap();
    assert!(!format!("{redis:?}").contains(PASSWORD));

    let rate = redis.rate("tls", Rate::per_second(100).burst(10));
    let conc = redis.concurrency("tls", 2);
    run_jobs_and_check(&server, &mut plain, &rate, &conc).await;
}
