//! What the `vfpga serve` benchmarks share: a server child process.

use std::os::unix::net::UnixStream;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `vfpga serve` child listening on `socket`; killed (and the socket
/// removed) on drop.
pub struct Served {
    child: Child,
    /// The socket it listens on.
    pub socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts `vfpga serve --config CONFIG` on a fresh socket named after `tag`
/// and waits until it listens (`$VFPGA_SERVE_BIN` instead of this build's
/// `vfpga` when set).
pub fn serve(config: &Path, tag: &str) -> Served {
    let socket =
        std::env::temp_dir().join(format!("vfpga-bench-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    // VFPGA_SERVE_BIN: another `vfpga` binary (an earlier build, or a
    // wrapper such as `strace -c`), to compare in the same harness.
    let bin = std::env::var_os("VFPGA_SERVE_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vfpga")), PathBuf::from);
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vfpga serve");
    let s = Served { child, socket };
    let t0 = Instant::now();
    while UnixStream::connect(&s.socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    s
}

/// The CPUs this process may use (as it started).
pub fn allowed() -> (CpuSet, Vec<usize>) {
    let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpus = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    (set, cpus)
}

/// Pins the calling thread (and what it spawns from now on) to `cpu`, or
/// gives it back `all`.
pub fn pin(cpu: Option<usize>, all: &CpuSet) {
    let set = match cpu {
        Some(c) => {
            let mut s = CpuSet::new();
            s.set(c).unwrap();
            s
        }
        None => *all,
    };
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}
