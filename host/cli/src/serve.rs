//! `vfpga serve`: build the configured backend and serve it over vfio-user
//! on a UNIX socket until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;
use vfpga_config::{Backend, Clock, Config};
use vfpga_device::{Device, DmaPort};
use vfpga_vfio_user::{IrqHub, Server};

use crate::commands::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no socket path: give --socket PATH or set server.socket in the config")]
    NoSocket,
    #[error("socket path {0} already exists (another server, or a stale socket: remove it)")]
    SocketExists(PathBuf),
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
    let p = socket
        .or_else(|| cfg.server.socket.clone())
        .ok_or(ServeError::NoSocket)?;
    if Path::new(&p).exists() {
        return Err(ServeError::SocketExists(p));
    }
    Ok(p)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Prints the subcommand's help (for `vfpga serve` without `--config`).
pub fn usage() {
    use clap::CommandFactory;
    let mut cmd = crate::Cli::command().bin_name("vfpga");
    cmd.build();
    match cmd.find_subcommand_mut("serve") {
        Some(s) => {
            let help = s.render_help();
            eprintln!("vfpga serve: --config FILE is required\n\n{help}");
        }
        None => eprintln!("vfpga serve: --config FILE is required"),
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
    let code = rt.block_on(async {
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
        info!(socket = %path.display(), backend = cfg.backend.value.name(), "serving");
        tokio::select! {
            r = server.serve(listener) => {
                if let Err(e) = r {
                    eprintln!("vfpga serve: accept failed: {e}");
                    return EXIT_FAILED;
                }
                EXIT_OK
            }
            _ = wait_for_signal() => {
                info!("signal received, shutting down");
                EXIT_OK
            }
        }
    });
    let _ = std::fs::remove_file(&path);
    code
}
