//! The demo's child processes: started in their own process group (so Ctrl-C reaches only the
//! demo, which stops them in order), logged to files, killed and restarted on demand, and all
//! stopped on the way out: SIGTERM, then SIGKILL after a grace period.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
}

/// The running processes of the demo.
#[derive(Default)]
pub struct Supervisor {
    procs: Vec<Proc>,
}

impl Supervisor {
    /// Starts `program args` in `cwd` as `name`, appending its output to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: Vec<String>,
        cwd: &Path,
        log: &Path,
    ) -> anyhow::Result<()> {
        self.spawn_env(name, program, args, cwd, log, &[])
    }

    /// [`Supervisor::spawn`] with extra environment variables.
    pub fn spawn_env(
        &mut self,
        name: &str,
        program: &Path,
        args: Vec<String>,
        cwd: &Path,
        log: &Path,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        let mut p = Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            cwd: cwd.to_path_buf(),
            log: log.to_path_buf(),
            env: env.to_vec(),
            child: None,
        };
        p.child = Some(start(&p)?);
        self.procs.retain(|q| q.name != name);
        self.procs.push(p);
        Ok(())
    }

    /// Starts `name` again with the same command.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.find(name)?;
        p.child = Some(start(p)?);
        Ok(())
    }

    /// Kills `name` at once (SIGKILL: no goodbye to its peers) and waits for it.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.find(name)?;
        if let Some(mut c) = p.child.take() {
            c.kill().await.with_context(|| format!("killing {name}"))?;
        }
        Ok(())
    }

    /// The first process that exited on its own, with its status and the end of its log.
    pub fn exited(&mut self) -> Option<(String, ExitStatus, String)> {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                p.child = None;
                return Some((p.name.clone(), status, log_tail(&p.log, 15)));
            }
        }
        None
    }

    /// Stops everything, last started first: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        for p in self.procs.iter().rev() {
            if let Some(pid) = p.child.as_ref().and_then(Child::id) {
                // `kill` from procps: the standard library has no SIGTERM without unsafe code.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for p in self.procs.iter_mut().rev() {
            if let Some(mut c) = p.child.take()
                && tokio::time::timeout_at(deadline, c.wait()).await.is_err()
            {
                eprintln!(
                    "==> {} did not stop within {grace:?} of SIGTERM: killed",
                    p.name
                );
                let _ = c.kill().await;
            }
        }
    }

    fn find(&mut self, name: &str) -> anyhow::Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Last resort (e.g. a panic): nothing may outlive the demo.
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

fn start(p: &Proc) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("{}", p.log.display()))?;
    let err = log.try_clone()?;
    Command::new(&p.program)
        .args(&p.args)
        .envs(p.env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(&p.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} ({})", p.name, p.program.display()))
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
