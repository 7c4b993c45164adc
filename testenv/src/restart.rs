//! Restarting one control-plane process of a running environment, for fault tests: the process
//! (and its group) is killed and started again with the same command line, log and pids entry, so
//! `testenv/down` still ends it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Errors of a restart.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// The environment's pids file has no such process.
    #[error("{dir}/pids has no process named {name}")]
    Unknown {
        /// The environment directory.
        dir: String,
        /// The process name.
        name: String,
    },
    /// Reading or starting failed.
    #[error("restarting {name}: {source}")]
    Io {
        /// The process name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Kills environment process `name` (e.g. `kube-apiserver`, `etcd`) with SIGKILL, keeps it down
/// for `down`, then starts it again with the same arguments. Returns the new pid.
pub fn restart(dir: &Path, name: &str, down: Duration) -> Result<u32, RestartError> {
    let io = |source| RestartError::Io {
        name: name.to_string(),
        source,
    };
    let pids = std::fs::read_to_string(dir.join("pids")).map_err(io)?;
    let pid = pids
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| *n == name)
        .map(|(_, p)| p.trim().to_string())
        .next_back()
        .ok_or_else(|| RestartError::Unknown {
            dir: dir.display().to_string(),
            name: name.to_string(),
        })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(io)?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // testenv/up starts every process with setsid: its pid is its process group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(&pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(down);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("logs").join(format!("{name}.log")))
        .map_err(io)?;
    let err = log.try_clone().map_err(io)?;
    let child = Command::new("setsid")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(io)?;
    let new_pid = child.id();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("pids"))
        .map_err(io)?;
    writeln!(f, "{name} {new_pid}").map_err(io)?;
    Ok(new_pid)
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
