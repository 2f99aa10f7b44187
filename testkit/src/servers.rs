//! Private PostgreSQL and Redis servers, for tests that restart or flush
//! them: doing that to the machine's shared servers would break every test
//! running beside them. Each runs as a child process on a free port, with
//! its data in a temporary directory, and is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::free_port;

fn temp_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("assay-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A redis-server of the test's own.
pub struct PrivateRedis {
    pub url: String,
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl PrivateRedis {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let dir = temp_dir("redis")?;
        let child = Self::spawn(port, &dir)?;
        Ok(Self {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child,
            dir,
        })
    }

    fn spawn(port: u16, dir: &Path) -> anyhow::Result<Child> {
        let port_text = port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port_text, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is Redis installed? `make deps`)")?;
        wait_for_port(port, "redis-server")?;
        Ok(child)
    }

    /// Kills the server: clients see connections refused until
    /// [`PrivateRedis::start_again`].
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the server again on the same port, empty.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self.port, &self.dir)?;
        Ok(())
    }

    /// Deletes every key of every database: Redis loses everything.
    pub fn flush_all(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        redis::cmd("FLUSHALL").query::<()>(&mut conn)?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Calls served per command (`INFO commandstats`) by the Redis at `url`,
/// for tests and benchmarks that count what a component sends.
pub fn redis_command_calls(url: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn)?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own, which the test may restart.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The directory of `initdb` and `pg_ctl` (Debian keeps them off the PATH).
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("looking for PostgreSQL's binaries in /usr/lib/postgresql")?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|dir| dir.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program; as root it runs as `postgres`, which
/// PostgreSQL insists on.
fn run_postgres_tool(bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let program = bin.join(tool);
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false);
    let mut command = if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{tool} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl PrivatePostgres {
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = temp_dir("postgres")?;
        // The cluster belongs to `postgres` when we are root.
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let data = data.to_str().context("temp path is UTF-8")?;
        run_postgres_tool(
            &bin,
            "initdb",
            &[
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let port = free_port();
        let cluster = Self { port, dir, bin };
        cluster.ctl("start", "fast")?;
        wait_for_port(port, "PostgreSQL")?;
        Ok(cluster)
    }

    fn ctl(&self, action: &str, mode: &str) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut args = vec!["-D", data.to_str().unwrap_or_default(), "-o", &options];
        let log = log.display().to_string();
        args.extend(["-l", &log, "-w", "-m", mode, action]);
        run_postgres_tool(&self.bin, "pg_ctl", &args)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, for creating test databases.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast restart: every connection is dropped, and the server is back
    /// after a moment.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.ctl("restart", "fast")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.ctl("stop", "immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
