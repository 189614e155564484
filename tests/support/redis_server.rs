//! A real `redis-server` for tests: started on a free loopback port in its own
//! temporary directory, with persistence off, killed on drop; and, at the end,
//! the few helpers that more than one Redis test file needs (a pool with
//! shared limits, a job held open, a plain connection, the window bound).
//!
//! The server's side uses only `std`. Included by the Redis tests with
//! `#[path]`. Polling with short sleeps is fine here and only here (a test
//! harness waiting for a child process).
//!
//! If `redis-server` is not installed, [`RedisServer::start`] prints one line,
//! `skipping: redis-server not found (apt-get install redis-server)`, and
//! returns `None` (the test returns early), unless `TASKGATE_REQUIRE_REDIS=1`,
//! where it panics: CI sets that so a missing install cannot pass as green.
//! `TASKGATE_REDIS_SERVER` names the binary explicitly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after being started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server` (see the module docs).
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or returns `None` if `redis-server` is missing (see
    /// the module docs). Panics if it is installed but will not start.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments, e.g.
    /// `["--requirepass", "pw"]`.
    pub fn start_with(extra_args: &[&str]) -> Option<RedisServer> {
        let binary = match find_binary() {
            Some(b) => b,
            None => {
                if require_redis() {
                    panic!(
                        "TASKGATE_REQUIRE_REDIS=1 but redis-server was not found on PATH \
                         (apt-get install redis-server, or set TASKGATE_REDIS_SERVER)"
                    );
                }
                eprintln!("skipping: redis-server not found (apt-get install redis-server)");
                return None;
            }
        };
        let dir = temp_dir();
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                dir: dir.clone(),
                extra_args: extra_args.clone(),
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Some(server),
                Err(e) => {
                    last_err = e;
                    server.kill();
                    // The next try reuses the directory: keep it.
                    server.dir = PathBuf::new();
                }
            }
        }
        panic!(
            "redis-server would not start: {last_err}; log: {}",
            dir.join("redis.log").display()
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`];
    /// kills it first if it is running). Its data is gone: persistence is off.
    /// Panics if it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        let mut last_err = String::new();
        // The port was just ours; a brief retry covers a slow release.
        for _ in 0..20 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!(
            "redis-server would not restart on port {}: {last_err}; log: {}",
            self.port,
            self.log_path().display()
        );
    }

    /// Stops the server without killing it (SIGSTOP): connections stay open
    /// but nothing is answered, like a hung or partitioned server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a [`RedisServer::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// `redis-server --version`, e.g. `(7, 0, 15)`.
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        let out = Command::new(&self.binary).arg("--version").output().ok()?;
        parse_version(&String::from_utf8_lossy(&out.stdout))
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid} failed");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("create {:?}: {e}", self.dir))?;
        let log = self.log_path();
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .map_err(|e| e.to_string())?;
        let stderr = stdout.try_clone().map_err(|e| e.to_string())?;
        let child = server_command(&self.binary, self.port, &self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", self.binary))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited early with {status}"));
            }
            if answers_ping(addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no PING answer within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() {
            let log = self.log_path();
            eprintln!(
                "redis-server on port {} log kept at {}; last lines:",
                self.port,
                log.display()
            );
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("  {line}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `redis-server` binary: `TASKGATE_REDIS_SERVER`, or the first on `PATH`
/// (or in the usual system folders).
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TASKGATE_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return is_file(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/local/bin".into(),
            "/usr/sbin".into(),
        ])
        .map(|d| d.join("redis-server"))
        .find(|p| is_file(p))
}

/// Whether `TASKGATE_REQUIRE_REDIS=1`: a test that cannot run fails rather
/// than skips.
pub fn require_redis() -> bool {
    std::env::var("TASKGATE_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// `binary` on 127.0.0.1:`port` (0: no plain port), in the foreground, with
/// persistence off and `dir` as its directory: the arguments every server of
/// these tests has. The caller adds the rest (log, TLS, password) and stdio.
pub fn server_command(binary: &Path, port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    cmd
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// A loopback port nothing listens on now (it may be taken before it is used).
pub fn free_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "taskgate-redis-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Whether something on `addr` answers a RESP PING (`+PONG`, or `-NOAUTH`
/// from a server that wants a password: it is up either way).
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    // "Redis server v=7.0.15 sha=..."
    let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

// ---------------------------------------------------------------------------
// Helpers shared by the Redis test files.
// ---------------------------------------------------------------------------

/// What a pool can be built with: a pool-level shared limit, or per-key limits.
pub trait PoolLimit {
    fn add_to(&self, b: taskgate::Builder) -> taskgate::Builder;
}

impl PoolLimit for taskgate::redis::SharedRate {
    fn add_to(&self, b: taskgate::Builder) -> taskgate::Builder {
        b.shared_rate(self.clone())
    }
}

impl PoolLimit for taskgate::redis::SharedConcurrency {
    fn add_to(&self, b: taskgate::Builder) -> taskgate::Builder {
        b.shared_concurrency(self.clone())
    }
}

impl PoolLimit for taskgate::KeyLimits {
    fn add_to(&self, b: taskgate::Builder) -> taskgate::Builder {
        b.key_limits(self.clone())
    }
}

/// A pool of `workers` workers with `limits`, added in order.
pub fn limited_pool(workers: usize, limits: &[&dyn PoolLimit]) -> taskgate::Pool {
    limits
        .iter()
        .fold(taskgate::Pool::builder().workers(workers), |b, l| {
            l.add_to(b)
        })
        .build()
        .unwrap()
}

/// A job held open: it runs until `end` is sent (or dropped) and returns when
/// it ended; `started` hears when it starts.
pub fn held_job() -> (
    impl std::future::Future<Output = Instant> + Send + 'static,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (end, end_rx) = tokio::sync::oneshot::channel::<()>();
    let job = async move {
        let _ = started_tx.send(());
        let _ = end_rx.await;
        Instant::now()
    };
    (job, started, end)
}

/// A plain connection to `url`, for looking at Redis directly.
pub async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `KEYS pattern`, sorted.
pub async fn keys(c: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(c)
        .await
        .unwrap();
    k.sort();
    k
}

/// The window of sorted `times` where the count most exceeds `rate·t`.
#[derive(Debug)]
pub struct Window {
    /// count − rate·t.
    pub excess: f64,
    pub from: Duration,
    pub len: Duration,
    pub count: usize,
}

/// Over every window [t_i, t_j] (i ≤ j) of the sorted `times`, the largest
/// `(j − i + 1) − rate·(t_j − t_i)`, in one pass: it is
/// `(j + 1 − rate·t_j) − min_{i ≤ j}(i − rate·t_i)`.
pub fn max_excess(times: &[Duration], rate: f64) -> Window {
    assert!(!times.is_empty(), "no arrivals");
    assert!(times.is_sorted());
    let t0 = times[0];
    let x = |k: usize| rate * (times[k] - t0).as_secs_f64();
    let mut best_i = 0;
    let mut best_i_val = 0.0 - x(0);
    let mut best = (f64::MIN, 0, 0);
    for j in 0..times.len() {
        let v = j as f64 - x(j);
        if v < best_i_val {
            best_i_val = v;
            best_i = j;
        }
        let excess = (j + 1) as f64 - x(j) - best_i_val;
        if excess > best.0 {
            best = (excess, best_i, j);
        }
    }
    let (excess, i, j) = best;
    Window {
        excess,
        from: times[i],
        len: times[j] - times[i],
        count: j - i + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version() {
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0"),
            Some((7, 0, 15))
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn start_kill_restart_same_port() {
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(answers_ping(addr));
        let port = server.port();
        server.kill();
        assert!(!answers_ping(addr));
        server.restart();
        assert_eq!(server.port(), port);
        assert!(answers_ping(addr));
        let dir = server.dir.clone();
        drop(server);
        assert!(!answers_ping(addr));
        assert!(!dir.exists(), "temp dir removed on a clean drop");
    }
}
