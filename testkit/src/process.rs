//! The project's binaries as child processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// Path of one of the workspace's binaries, built next to the test binary
/// (`make test` builds them first: `cargo build --workspace --bins`).
pub fn binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or `make test`)",
        path.display()
    );
    path
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A running child process; SIGKILLed on drop if still running.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `binary` with `args` and `env`; its output goes to the test's
    /// stderr so failures show it.
    pub fn start(binary_name: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_logged(binary_name, args, env, None)
    }

    /// Like [`Process::start`], with stdout and stderr appended to `log` when
    /// given (for tests that read what a process printed).
    pub fn start_logged(
        binary_name: &str,
        args: &[&str],
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary(binary_name));
        command.args(args).stdin(Stdio::null());
        match log {
            None => {
                command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
        }
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        );
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {binary_name}"))?;
        Ok(Self {
            name: binary_name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "KILL", "TERM").
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.pid());
        Ok(())
    }

    /// Waits for the process to exit, up to `limit`; returns its exit code.
    pub async fn wait(&mut self, limit: std::time::Duration) -> anyhow::Result<Option<i32>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
