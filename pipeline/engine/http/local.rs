//! A llama-server child process on 127.0.0.1, for `bench http` and the
//! tests: started on a free port, ready once `/health` answers, stopped by
//! its pid (never by name), restartable on the same port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::{EngineError, Result};

/// How to start the server.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalServerOptions {
    pub threads: usize,
    /// `--parallel`: server slots.
    pub slots: usize,
    /// `-c`: KV cells of the unified cache.
    pub n_ctx: usize,
    /// More arguments, passed as given.
    pub extra: Vec<String>,
}

impl Default for LocalServerOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            slots: 8,
            n_ctx: 16384,
            extra: Vec::new(),
        }
    }
}

pub struct LocalServer {
    bin: PathBuf,
    model: PathBuf,
    opts: LocalServerOptions,
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| EngineError::Backend(format!("no free local port: {e}")))
}

impl LocalServer {
    /// Start `bin` serving `model` and wait (up to 2 minutes) until it answers.
    pub fn start(bin: &Path, model: &Path, opts: LocalServerOptions) -> Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "cotforge-llama-server-{}-{port}.log",
            std::process::id()
        ));
        let mut s = Self {
            bin: bin.to_path_buf(),
            model: model.to_path_buf(),
            opts,
            child: None,
            port,
            log,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("{} (port {})", self.bin.display(), self.port);
        let err = move |reason: String| EngineError::Server {
            url: url.clone(),
            reason,
        };
        let log = std::fs::File::create(&self.log)
            .map_err(|e| err(format!("log {}: {e}", self.log.display())))?;
        let o = &self.opts;
        let child = Command::new(&self.bin)
            .arg("-m")
            .arg(&self.model)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["-t", &o.threads.to_string(), "-tb", &o.threads.to_string()])
            .args([
                "-np",
                &o.slots.to_string(),
                "-c",
                &o.n_ctx.to_string(),
                "-kvu",
            ])
            .arg("--no-webui")
            .args(&o.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                err(format!(
                    "cannot start (build it with scripts/llama-tools.sh): {e}"
                ))
            })?;
        self.child = Some(child);
        let t = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(err(format!(
                    "exited ({st}) while starting:\n{}",
                    self.log_tail()
                )));
            }
            let up = agent
                .get(format!("{}/health", self.url()))
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200);
            if up {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(120) {
                self.kill();
                return Err(err(format!("not ready after 120 s:\n{}", self.log_tail())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kill the process by its pid and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
