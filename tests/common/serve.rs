//! A running `storageos-fuse serve` for tests: started on a mount point under the test's
//! Env, its log in a file there, stopped with SIGTERM (and waited for) on drop.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Env;

pub struct Serve {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `serve --mountpoint <env>/served` and returns once it printed its mount point
    /// (its first scan is done then).
    pub fn start(env: &Env) -> Self {
        Self::start_with(env, &[])
    }

    /// Same, with extra environment variables (e.g. another keys dir).
    pub fn start_with(env: &Env, vars: &[(&str, &Path)]) -> Self {
        Self::start_args(env, vars, &[])
    }

    /// Same, with extra `serve` arguments (e.g. `--listen`).
    pub fn start_args(env: &Env, vars: &[(&str, &Path)], args: &[&str]) -> Self {
        let mut cmd = env.cmd();
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Self::launch(env, cmd, args)
    }

    /// Same, from a prepared storageos-fuse command (e.g. `KubeEnv::sf_cmd`, key source
    /// kube); `serve --mountpoint <env>/served` is appended.
    pub fn start_cmd(env: &Env, cmd: std::process::Command) -> Self {
        Self::launch(env, cmd, &[])
    }

    fn launch(env: &Env, mut cmd: std::process::Command, args: &[&str]) -> Self {
        let dir = env.path("served");
        let mut n = 0;
        let log = loop {
            let p = env.path(&format!("serve-{n}.log"));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let mut child = cmd
            .args(["serve", "--mountpoint", dir.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).expect("serve log"))
            .spawn()
            .expect("start serve");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let serve = Self {
            child: Some(child),
            dir: dir.clone(),
            log,
        };
        assert_eq!(
            line.trim(),
            dir.to_str().unwrap(),
            "serve prints its mount point once ready; log:\n{}",
            serve.log_text()
        );
        serve
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of our own child process, which has not been reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits (without signalling) for the process to exit on its own.
    pub fn wait_exit(mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        None
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("serve was running")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child process, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
