//! `vfpga serve`: build the configured backend and serve it over vfio-user
//! on a UNIX socket until SIGINT/SIGTERM.
//!
//! Before binding, a socket file left by a server that died (a connect is
//! refused) is removed; a socket some live process accepts on is never taken.
//! On SIGTERM or SIGINT the socket file is removed and the exit status is 0.
//! Under systemd (`Type=notify`), `READY=1` is sent once the socket accepts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};
use vfpga_config::{Backend, Clock, Config};
use vfpga_device::{Device, DmaPort};
use vfpga_vfio_user::{IrqHub, Server};

use crate::exit::{FAILED as EXIT_FAILED, OK as EXIT_OK, USAGE as EXIT_USAGE};

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no socket path: give --socket PATH or set server.socket in the config")]
    NoSocket,
    #[error("socket {0} is in use: a live server accepts on it (stop it, or use another --socket)")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot replace the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("backend {0} is not built into `vfpga serve` (use model or sim)")]
    NotBuilt(&'static str),
    #[error("cannot create the {backend} device: {source}")]
    Device {
        backend: &'static str,
        #[source]
        source: vfpga_device::DeviceError,
    },
    #[error("cannot start the server: {0}")]
    Server(#[source] vfpga_vfio_user::ServerError),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A device with the DMA port and interrupt hub it was built over.
type Built = (Box<dyn Device>, DmaPort, Arc<IrqHub>);

fn build_device(cfg: &Config) -> Result<Built, ServeError> {
    let dma = DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let backend = cfg.backend.value;
    let pages = cfg.device.devmem_pages();
    let dmalog = cfg.device.dmalog_max_pages.value;
    let dev: Box<dyn Device> = match backend {
        Backend::Model => {
            let mut mc = vfpga_model::ModelConfig::with_pages(pages);
            mc.dmalog_max_pages = dmalog;
            let m = vfpga_model::Model::new(mc, dma.clone(), irq.clone()).map_err(|e| {
                ServeError::Device {
                    backend: "model",
                    source: e.into(),
                }
            })?;
            Box::new(m)
        }
        Backend::Sim => {
            let opts = vfpga_sim::SimOptions {
                devmem_pages: pages,
                dmalog_max_pages: dmalog,
                clocking: match cfg.sim.clock {
                    Clock::FreeRunning => vfpga_sim::Clocking::FreeRunning,
                    Clock::Explicit => vfpga_sim::Clocking::Explicit,
                },
                vcd: cfg.sim.vcd.clone(),
                x_seed: 0,
            };
            let s = vfpga_sim::SimDevice::new(opts, dma.clone(), irq.clone()).map_err(|e| {
                ServeError::Device {
                    backend: "sim",
                    source: e.into(),
                }
            })?;
            Box::new(s)
        }
        Backend::Board => {
            let board = cfg.board.as_ref().ok_or(ServeError::NotBuilt("board"))?;
            let b = vfpga_hw::BoardDevice::open(
                board,
                cfg.device.devmem_size.value.0,
                cfg.device.dmalog_max_pages.value,
                dma.clone(),
                irq.clone(),
            )
            .map_err(|e| ServeError::Device {
                backend: "board",
                source: e.into(),
            })?;
            Box::new(b)
        }
        other => return Err(ServeError::NotBuilt(other.name())),
    };
    Ok((dev, dma, irq))
}

fn socket_path(cfg: &Config, socket: Option<PathBuf>) -> Result<PathBuf, ServeError> {
    socket
        .or_else(|| cfg.server.socket.clone())
        .ok_or(ServeError::NoSocket)
}

/// Makes `path` free to bind: nothing there, or a socket nobody accepts on
/// (removed). A socket a live process accepts on, or a file that is not a
/// socket, is left alone and reported.
fn claim_socket(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    let stale = |source| ServeError::Stale {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(stale)?;
            warn!(socket = %path.display(), "removed a stale socket left by a server that is gone");
            Ok(())
        }
        Err(e) => Err(stale(e)),
    }
}

/// SIGTERM and SIGINT, installed before the socket exists so that neither
/// can kill the process between bind and the handler (leaving the file).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs the server. Returns the exit status.
pub fn run(cfg: &Config, socket: Option<PathBuf>) -> u8 {
    let setup = socket_path(cfg, socket).and_then(|p| Ok((p, build_device(cfg)?)));
    let (path, (dev, dma, irq)) = match setup {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vfpga serve: {e}");
            return EXIT_USAGE;
        }
    };
    let server = match Server::new(dev, dma, irq) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("vfpga serve: {}", ServeError::Server(e));
            return EXIT_FAILED;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vfpga serve: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let mut bound = false;
    let code = rt.block_on(async {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vfpga serve: {}", ServeError::Signals(e));
                return EXIT_FAILED;
            }
        };
        if let Err(e) = claim_socket(&path) {
            eprintln!("vfpga serve: {e}");
            return EXIT_USAGE;
        }
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(source) => {
                eprintln!(
                    "vfpga serve: {}",
                    ServeError::Listen {
                        path: path.clone(),
                        source
                    }
                );
                return EXIT_USAGE;
            }
        };
        bound = true;
        // What this build speaks, once, when it starts serving (a setup
        // error before this stays one line on stderr).
        info!(
            socket = %path.display(),
            backend = cfg.backend.value.name(),
            version = env!("CARGO_PKG_VERSION"),
            rtl = %crate::version::rtl(),
            regmap_sha256 = crate::version::regmap_sha256(),
            stream_format = %crate::version::stream_format(),
            state_layout = crate::version::state_layout(),
            vfio_user = %crate::version::vfio_user(),
            "serving"
        );
        if let Err(e) = crate::notify::notify("READY=1") {
            warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
        tokio::select! {
            r = server.serve(listener) => {
                if let Err(e) = r {
                    eprintln!("vfpga serve: accept failed: {e}");
                    return EXIT_FAILED;
                }
                EXIT_OK
            }
            sig = signals.recv() => {
                info!(signal = sig, "shutting down");
                let _ = crate::notify::notify("STOPPING=1");
                EXIT_OK
            }
        }
    });
    // Only a socket this process bound is removed (never one it refused to take).
    if bound && let Err(e) = std::fs::remove_file(&path) {
        warn!(socket = %path.display(), "cannot remove the socket: {e}");
    }
    code
}
