//! Device servers for the VMM: one vfio-user server per device, either a
//! `vfpga serve` child process (what the demo and `vfpga migrate` run) or a
//! server on threads of this process (for library tests, which have no
//! `vfpga` binary to start).
//!
//! A [`DeviceServer`] owns what it started: dropping it kills and reaps the
//! child process (or stops the in-process server) and removes its socket and
//! configuration, on every exit path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfpga_vfio_user::{Client, IrqHub, Server};

use crate::backend::{self, Kind};

/// How long a server may take to come up before it is declared failed (a
/// hang guard; a healthy server listens within milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where device servers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// `EXE serve --config CFG --socket SOCK`, one child process per device.
    Process(PathBuf),
    /// The same with the user's own config file (`EXE`, `CONFIG`): a board,
    /// real or simulated, is served as that file describes it.
    WithConfig(PathBuf, PathBuf),
    /// A vfio-user server on threads of this process, over a UNIX socket.
    InThread,
}

impl Launch {
    /// Child processes of the running `vfpga` binary itself.
    pub fn this_binary() -> Result<Launch, ServerError> {
        std::env::current_exe()
            .map(Launch::Process)
            .map_err(|e| ServerError::Start(format!("cannot find the vfpga binary: {e}")))
    }
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server did not come up (the message carries its stderr tail).
    #[error("device server: {0}")]
    Start(String),
    /// Connecting or negotiating failed.
    #[error("device server at {path}: cannot connect")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vfpga_vfio_user::ClientError,
    },
}

enum Running {
    Child(Child),
    Thread {
        rt: Option<tokio::runtime::Runtime>,
        _server: Arc<Server>,
    },
}

/// A running device server.
pub struct DeviceServer {
    running: Running,
    socket: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.running {
            Running::Child(c) => format!("process {}", c.id()),
            Running::Thread { .. } => "in-process".into(),
        };
        f.debug_struct("DeviceServer")
            .field("socket", &self.socket)
            .field("running", &how)
            .finish()
    }
}

/// The server configuration the VMM writes for a device.
fn config_yaml(kind: Kind, devmem: u64) -> String {
    let mut s = format!(
        "# written by vfpga-vmm for one device server\nbackend: {}\ndevice:\n  devmem_size: {}KiB\n",
        kind.name(),
        devmem >> 10
    );
    match kind {
        Kind::Sim => s.push_str("sim:\n  clock: free-running\n"),
        Kind::Board => {
            let e = vfpga_hw::this_build_ids();
            s.push_str(&format!(
                "  dmalog_max_pages: {}\nboard:\n  simulated: {{}}\n  expected: {{vendor_id: {:#x}, device_id: {:#x}, rtl_version: {:#x}}}\n",
                crate::backend::BOARD_DMALOG_PAGES,
                e.vendor_id,
                e.device_id,
                e.rtl_version
            ));
        }
        Kind::Model => {}
    }
    s.push_str("log:\n  level: warn\n");
    s
}

fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.trim().to_string()
}

impl DeviceServer {
    /// Starts a server for a `kind` device with `devmem` bytes of device
    /// memory and waits until it accepts connections.
    pub fn start(launch: &Launch, kind: Kind, devmem: u64) -> Result<DeviceServer, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix("vfpga-vmm-")
            .tempdir()
            .map_err(|e| ServerError::Start(format!("cannot create a temporary directory: {e}")))?;
        let socket = dir.path().join("device.sock");
        let stderr = dir.path().join("server.log");
        let running = match launch {
            Launch::Process(exe) | Launch::WithConfig(exe, _) => {
                let cfg = match launch {
                    Launch::WithConfig(_, given) => given.clone(),
                    _ => {
                        let cfg = dir.path().join("server.yaml");
                        std::fs::write(&cfg, config_yaml(kind, devmem)).map_err(|e| {
                            ServerError::Start(format!("cannot write {}: {e}", cfg.display()))
                        })?;
                        cfg
                    }
                };
                let log = File::create(&stderr).map_err(|e| {
                    ServerError::Start(format!("cannot create {}: {e}", stderr.display()))
                })?;
                let child = Command::new(exe)
                    .arg("serve")
                    .arg("--config")
                    .arg(&cfg)
                    .arg("--socket")
                    .arg(&socket)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| {
                        ServerError::Start(format!("cannot run {} serve: {e}", exe.display()))
                    })?;
                Running::Child(child)
            }
            Launch::InThread => in_thread(kind, devmem, &socket)?,
        };
        let mut s = DeviceServer {
            running,
            socket,
            stderr,
            _dir: dir,
        };
        s.wait_listening()?;
        Ok(s)
    }

    fn wait_listening(&mut self) -> Result<(), ServerError> {
        let t0 = Instant::now();
        loop {
            if let Running::Child(c) = &mut self.running
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(ServerError::Start(format!(
                    "`vfpga serve` exited with {status} before listening: {}",
                    tail(&self.stderr, 2000)
                )));
            }
            if self.socket.exists() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return Ok(());
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(ServerError::Start(format!(
                    "not listening on {} after {START_TIMEOUT:?}: {}",
                    self.socket.display(),
                    tail(&self.stderr, 2000)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The child's process id (none for an in-process server).
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Child(c) => Some(c.id()),
            Running::Thread { .. } => None,
        }
    }

    /// The last lines the server wrote to stderr (for error messages).
    pub fn log_tail(&self) -> String {
        tail(&self.stderr, 2000)
    }

    /// Connects a client and negotiates (VERSION 0.2, QEMU's capabilities).
    /// The server serves one client at a time; a connection made while the
    /// readiness probe is still being torn down is retried.
    pub fn connect(&self) -> Result<Client, ServerError> {
        let t0 = Instant::now();
        loop {
            let r = Client::connect(&self.socket).and_then(|mut c| {
                c.set_timeout(Duration::from_secs(60));
                c.negotiate_default().map(|_| c)
            });
            match r {
                Ok(c) => return Ok(c),
                Err(e) if t0.elapsed() > START_TIMEOUT => {
                    return Err(ServerError::Connect {
                        path: self.socket.clone(),
                        source: e,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for DeviceServer {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Running::Thread { rt, .. } => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_timeout(Duration::from_secs(5));
                }
            }
        }
    }
}

fn in_thread(kind: Kind, devmem: u64, socket: &Path) -> Result<Running, ServerError> {
    let dma = vfpga_device::DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let dev = backend::open_free_running(kind, (devmem / 4096) as u32, dma.clone(), irq.clone())
        .map_err(|e| ServerError::Start(vfpga_device::error_chain(&e)))?;
    let server = Arc::new(
        Server::new(dev, dma, irq)
            .map_err(|e| ServerError::Start(format!("cannot start the server: {e}")))?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vfpga-vmm-server")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Start(format!("cannot start a runtime: {e}")))?;
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(socket).map_err(|e| {
            ServerError::Start(format!("cannot listen on {}: {e}", socket.display()))
        })?
    };
    rt.spawn(server.clone().serve(listener));
    Ok(Running::Thread {
        rt: Some(rt),
        _server: server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_accepted_by_the_loader() {
        for kind in [Kind::Model, Kind::Sim] {
            let y = config_yaml(kind, 256 << 20);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.yaml");
            std::fs::write(&p, &y).unwrap();
            let c = vfpga_config::load(&p).unwrap();
            assert_eq!(c.device.devmem_size.value.0, 256 << 20, "{y}");
        }
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = DeviceServer::start(
            &Launch::Process("/nonexistent/vfpga".into()),
            Kind::Model,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
    }

    #[test]
    fn a_server_that_dies_at_once_reports_its_stderr() {
        // `false` exits 1 at once without listening.
        let e = DeviceServer::start(&Launch::Process("false".into()), Kind::Model, 1 << 20)
            .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
    }
}
