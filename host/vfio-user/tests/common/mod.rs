//! Test harness: a server on the model (or the fake) in a tokio runtime, a
//! client, guest memory in a memfd, and a `Device` adapter that reaches the
//! device over the wire so the ring driver of `vfpga-device` can drive it.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use vfpga_device::{Device, DmaPort, MmapMemory, Perm};
use vfpga_model::{Model, ModelConfig};
use vfpga_vfio_user::{Client, IrqHub, Server};

/// Device-memory pages of the test device.
pub const PAGES: u32 = 64;

pub struct Harness {
    pub server: Arc<Server>,
    pub path: PathBuf,
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

pub fn model_device(pages: u32) -> (Box<dyn Device>, DmaPort, Arc<IrqHub>) {
    let dma = DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let m = Model::new(ModelConfig::with_pages(pages), dma.clone(), irq.clone()).expect("model");
    (Box::new(m), dma, irq)
}

pub fn start_with(dev: Box<dyn Device>, dma: DmaPort, irq: Arc<IrqHub>) -> Harness {
    start_with_all(dev, dma, irq, vfpga_vfio_user::session::Limits::from_host())
}

pub fn start_with_all(
    dev: Box<dyn Device>,
    dma: DmaPort,
    irq: Arc<IrqHub>,
    limits: vfpga_vfio_user::session::Limits,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vfu.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = Arc::new(Server::with_limits(dev, dma, irq, limits).expect("server"));
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&path).expect("bind")
    };
    rt.spawn(server.clone().serve(listener));
    Harness {
        server,
        path,
        rt,
        _dir: dir,
    }
}

pub fn start_model() -> Harness {
    let (d, dma, irq) = model_device(PAGES);
    start_with(d, dma, irq)
}

/// Which device the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Rust model.
    Model,
    /// The Verilated RTL, free-running.
    Sim,
}

/// `Some(Sim)` when this build has the Verilated RTL; otherwise says why
/// the sim tests are skipped.
pub fn sim_backend() -> Option<Backend> {
    if vfpga_sim::AVAILABLE {
        Some(Backend::Sim)
    } else {
        eprintln!("skipping the sim backend: vfpga-sim was built without Verilator");
        None
    }
}

pub fn start(b: Backend) -> Harness {
    start_with_limits(b, vfpga_vfio_user::session::Limits::from_host())
}

pub fn start_with_limits(b: Backend, limits: vfpga_vfio_user::session::Limits) -> Harness {
    match b {
        Backend::Model => {
            let (d, dma, irq) = model_device(PAGES);
            start_with_all(d, dma, irq, limits)
        }
        Backend::Sim => {
            let dma = DmaPort::new();
            let irq = Arc::new(IrqHub::new());
            let opts = vfpga_sim::SimOptions {
                devmem_pages: PAGES,
                clocking: vfpga_sim::Clocking::FreeRunning,
                ..Default::default()
            };
            let d = vfpga_sim::SimDevice::new(opts, dma.clone(), irq.clone()).expect("sim");
            start_with_all(Box::new(d), dma, irq, limits)
        }
    }
}

/// Instantiates each test function (taking a [`Backend`]) once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($t:ident),* $(,)?) => {
        mod model {
            $( #[test] fn $t() { super::$t($crate::common::Backend::Model) } )*
        }
        mod sim {
            $( #[test] fn $t() {
                if let Some(b) = $crate::common::sim_backend() { super::$t(b) }
            } )*
        }
    };
}

impl Harness {
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.path).expect("connect");
        c.negotiate_default().expect("negotiate");
        c
    }
    /// Connects and negotiates once the previous client has gone (the
    /// server serves one client at a time and notices a disconnect
    /// asynchronously).
    pub fn client_when_free(&self, minor: u16, caps: vfpga_vfio_user::wire::Caps) -> Client {
        let mut last = None;
        for _ in 0..200 {
            let mut c = self.raw_client();
            c.set_timeout(std::time::Duration::from_secs(5));
            match c.negotiate(minor, caps.clone()) {
                Ok(_) => return c,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("server never became free: {last:?}");
    }
    /// A connection that has not negotiated, once the previous client has
    /// gone: a served connection answers an early command with EINVAL, a
    /// refused one is closed.
    pub fn raw_client_when_free(&self) -> Client {
        for _ in 0..200 {
            let c = self.raw_client();
            if let Err(e) = c.device_info()
                && e.errno().is_some()
            {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("server never became free");
    }
    pub fn raw_client(&self) -> Client {
        Client::connect(&self.path).expect("connect")
    }
}

/// Guest memory in a memfd, mapped here and passed to the server.
pub struct GuestMem {
    pub fd: OwnedFd,
    pub port: DmaPort,
    pub base: u64,
    pub len: u64,
}

impl GuestMem {
    pub fn new(base: u64, len: u64) -> Self {
        let fd = nix::sys::memfd::memfd_create(c"guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&fd, len as i64).expect("ftruncate");
        let file = std::fs::File::from(fd.try_clone().expect("dup"));
        let m = MmapMemory::map_file(&file, 0, len as usize).expect("mmap");
        let port = DmaPort::new();
        port.map(base, Arc::new(m), Perm::RW).expect("map");
        GuestMem {
            fd,
            port,
            base,
            len,
        }
    }
    pub fn map_into(&self, c: &Client) {
        c.dma_map_fd(self.fd.as_fd(), 0, self.base, self.len)
            .expect("DMA_MAP");
    }
    pub fn read(&self, iova: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.port.host_read(iova, &mut b).expect("read");
        b
    }
    pub fn write(&self, iova: u64, d: &[u8]) {
        self.port.host_write(iova, d).expect("write");
    }
}

pub mod migration;

#[allow(unused_imports)] // not every test binary drives rings
pub use migration::wire_device;

/// The test's own view of client memory that the server reaches by message
/// (`Client::dma_map_message`), for a ring driver in the test.
#[derive(Debug)]
pub struct MessageMemory(pub vfpga_vfio_user::client::SharedMemory);

impl vfpga_device::GuestMemory for MessageMemory {
    fn len(&self) -> u64 {
        self.0.lock().expect("memory lock").len() as u64
    }
    fn read(&self, o: u64, b: &mut [u8]) -> Result<(), vfpga_device::DmaFault> {
        let m = self.0.lock().expect("memory lock");
        b.copy_from_slice(&m[o as usize..o as usize + b.len()]);
        Ok(())
    }
    fn write(&self, o: u64, d: &[u8]) -> Result<(), vfpga_device::DmaFault> {
        self.0.lock().expect("memory lock")[o as usize..o as usize + d.len()].copy_from_slice(d);
        Ok(())
    }
}
