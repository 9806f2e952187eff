//! A VM's guest memory and its device, as the VMM holds them.
//!
//! Guest memory is a memfd mapped shared into the VMM; a device server maps
//! the same file through DMA_MAP (the fd travels with the message), so the
//! device's DMA and the VMM's view are one memory, as with QEMU's
//! shareable guest RAM.
//!
//! The device is a [`VmDevice`]: MMIO for the guest driver plus the VFIO
//! migration interface a VMM uses (device state, migration data, the
//! data-size estimate, DMA dirty logging, interrupt counts). Two forms:
//!
//! - [`Remote`]: the device behind its own vfio-user server (`vfpga serve`
//!   process, or a server on threads of this process), reached through
//!   [`vfpga_vfio_user::Client`]: SET MIG_DEVICE_STATE, MIG_DATA_READ /
//!   MIG_DATA_WRITE, MIG_DATA_SIZE, DMA_LOGGING_START / REPORT / STOP, and
//!   MSI-X vectors delivered on eventfds (SET_IRQS).
//! - [`Local`]: the device and its migration engine in this process (the
//!   deterministic path, `--in-process`), with the same operations called
//!   directly.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfpga_device::{Device, DmaPort, IrqLog, MmapMemory, Perm};
use vfpga_migration::{EngineConfig, MigState, MigrationEngine};
use vfpga_regs::consts;
use vfpga_vfio_user::{Client, WireDevice};

use crate::backend::{self, Kind};
use crate::channel::PAGE;
use crate::live::LiveError;
use crate::server::{DeviceServer, Launch, ServerError};
use crate::workload::Layout;

/// Guest memory of one VM: a memfd of `layout.size` bytes at `layout.base`.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The VMM's (and an in-process device's) view of guest memory.
    pub dma: DmaPort,
    /// The memory file, for DMA_MAP.
    pub fd: Arc<OwnedFd>,
    /// Layout of the workload in it.
    pub layout: Layout,
}

fn proto(what: &str, e: impl std::fmt::Display) -> LiveError {
    LiveError::Protocol(format!("{what}: {e}"))
}

impl Guest {
    /// Creates the memory file, sizes it and maps it at `layout.base`.
    pub fn new(layout: Layout) -> Result<Self, LiveError> {
        let fd =
            nix::sys::memfd::memfd_create(c"vfpga-guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| proto("memfd_create for guest memory", e))?;
        let len = i64::try_from(layout.size).map_err(|e| proto("guest memory size", e))?;
        nix::unistd::ftruncate(&fd, len).map_err(|e| proto("sizing guest memory", e))?;
        let file = std::fs::File::from(
            fd.try_clone()
                .map_err(|e| proto("duplicating the guest memory fd", e))?,
        );
        let mem = MmapMemory::map_file_shared(&file, 0, layout.size as usize)
            .map_err(|e| proto("mapping guest memory", e))?;
        let dma = DmaPort::new();
        dma.map(layout.base, Arc::new(mem), Perm::RW)
            .map_err(|e| proto("mapping guest memory", e))?;
        Ok(Guest {
            dma,
            fd: Arc::new(fd),
            layout,
        })
    }

    /// IOVAs of every guest page.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        (self.layout.base..self.layout.base + self.layout.size).step_by(PAGE)
    }

    /// A copy of all of guest memory.
    pub fn read_all(&self) -> Result<Vec<u8>, LiveError> {
        let mut b = vec![0u8; self.layout.size as usize];
        self.dma
            .host_read(self.layout.base, &mut b)
            .map_err(|e| proto("reading guest memory", e))?;
        Ok(b)
    }
}

/// Where a VM's device runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In this process, with its migration engine (deterministic steps).
    Local,
    /// Behind its own vfio-user server.
    Server(Launch),
}

impl Placement {
    /// In this process when `in_process`, else behind a `vfpga serve` child
    /// started from this very binary.
    pub fn for_cli(in_process: bool) -> Result<Placement, ServerError> {
        if in_process {
            Ok(Placement::Local)
        } else {
            Launch::this_binary().map(Placement::Server)
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> &'static str {
        match self {
            Placement::Local => "in-process devices",
            Placement::Server(Launch::Process(_)) => "one `vfpga serve` process per device",
            Placement::Server(Launch::WithConfig(..)) => {
                "one `vfpga serve` process per device, with the given config"
            }
            Placement::Server(Launch::InThread) => "one in-process vfio-user server per device",
        }
    }
}

/// Opens a `kind` device with `devmem` bytes of device memory for `guest`.
pub fn open(
    placement: &Placement,
    kind: Kind,
    devmem: u64,
    guest: &Guest,
) -> Result<Box<dyn VmDevice>, LiveError> {
    match placement {
        Placement::Local => Ok(Box::new(Local::open(kind, devmem, guest)?)),
        Placement::Server(l) => Ok(Box::new(Remote::open(l, kind, devmem, guest)?)),
    }
}

/// The VMM's handle on a device: MMIO for the guest driver and the VFIO
/// (v2) migration interface.
pub trait VmDevice: Send {
    /// The device, for the guest driver (MMIO).
    fn dev(&mut self) -> &mut dyn Device;
    /// SET MIG_DEVICE_STATE (the device takes the shortest arc path).
    fn set_state(&mut self, s: MigState) -> Result<(), LiveError>;
    /// MIG_DATA_READ of at most `max` bytes (fewer: nothing more now).
    fn read_data(&mut self, max: usize) -> Result<Vec<u8>, LiveError>;
    /// MIG_DATA_WRITE.
    fn write_data(&mut self, data: &[u8]) -> Result<(), LiveError>;
    /// MIG_DATA_SIZE: bytes left to read if the device stopped now.
    fn stop_copy_size(&mut self) -> Result<u64, LiveError>;
    /// Resets the device (last resort when it cannot return to RUNNING).
    fn reset(&mut self) -> Result<(), LiveError>;
    /// Starts logging the guest pages the device writes.
    fn dirty_start(&mut self, guest: &Guest) -> Result<(), LiveError>;
    /// IOVAs of the guest pages the device wrote since the last call.
    fn dirty_take(&mut self, guest: &Guest) -> Result<Vec<u64>, LiveError>;
    /// Stops logging.
    fn dirty_stop(&mut self, guest: &Guest) -> Result<(), LiveError>;
    /// Interrupt messages received on `vector` so far.
    fn irqs(&mut self, vector: u16) -> u64;
    /// Where the device runs (for messages).
    fn describe(&self) -> String;
}

/// A device in this process with its own migration engine.
pub struct Local {
    dev: Box<dyn Device>,
    eng: MigrationEngine,
    irq: Arc<IrqLog>,
    kind: Kind,
}

impl Local {
    /// Opens the device over `guest`'s DMA port (explicit-step clocking).
    pub fn open(kind: Kind, devmem: u64, guest: &Guest) -> Result<Self, LiveError> {
        let irq = Arc::new(IrqLog::new());
        let dev = backend::open(kind, (devmem / 4096) as u32, guest.dma.clone(), irq.clone())
            .map_err(|e| LiveError::Protocol(vfpga_device::error_chain(&e)))?;
        Ok(Local {
            dev,
            eng: MigrationEngine::new(EngineConfig {
                dma: Some(guest.dma.clone()),
            }),
            irq,
            kind,
        })
    }
}

impl VmDevice for Local {
    fn dev(&mut self) -> &mut dyn Device {
        self.dev.as_mut()
    }
    fn set_state(&mut self, s: MigState) -> Result<(), LiveError> {
        self.eng.set_state(self.dev.as_mut(), s as u32)?;
        Ok(())
    }
    fn read_data(&mut self, max: usize) -> Result<Vec<u8>, LiveError> {
        let mut b = vec![0u8; max];
        let n = self.eng.read_data(self.dev.as_mut(), &mut b)?;
        b.truncate(n);
        Ok(b)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<(), LiveError> {
        self.eng.write_data(self.dev.as_mut(), data)?;
        Ok(())
    }
    fn stop_copy_size(&mut self) -> Result<u64, LiveError> {
        Ok(self.eng.stop_copy_size(self.dev.as_mut())?)
    }
    fn reset(&mut self) -> Result<(), LiveError> {
        Ok(self.eng.reset(self.dev.as_mut())?)
    }
    /// The port's log, or, for a device whose DMA bypasses the port (a
    /// board), the device's own DMA write log through the engine.
    fn dirty_start(&mut self, guest: &Guest) -> Result<(), LiveError> {
        if self.dev.dma_through_port() {
            guest.dma.dirty_log_start();
            return Ok(());
        }
        let l = guest.layout;
        self.eng
            .dma_logging()
            .start(
                self.dev.as_mut(),
                vfpga_migration::dirty::LogSource::Device,
                4096,
                &[(l.base, l.size)],
            )
            .map_err(|e| proto("DMA logging start", e))?;
        Ok(())
    }
    fn dirty_take(&mut self, guest: &Guest) -> Result<Vec<u64>, LiveError> {
        if self.dev.dma_through_port() {
            return Ok(guest.dma.dirty_log_take());
        }
        let l = guest.layout;
        let pages = l.size.div_ceil(4096);
        let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
        self.eng
            .dma_logging()
            .report(self.dev.as_mut(), l.base, l.size, 4096, &mut bitmap)
            .map_err(|e| proto("DMA logging report", e))?;
        Ok((0..pages)
            .filter(|p| bitmap[(p / 64) as usize] & (1 << (p % 64)) != 0)
            .map(|p| l.base + p * 4096)
            .collect())
    }
    fn dirty_stop(&mut self, guest: &Guest) -> Result<(), LiveError> {
        if self.dev.dma_through_port() {
            guest.dma.dirty_log_stop();
            return Ok(());
        }
        self.eng
            .dma_logging()
            .stop(self.dev.as_mut())
            .map_err(|e| proto("DMA logging stop", e))?;
        Ok(())
    }
    fn irqs(&mut self, vector: u16) -> u64 {
        self.irq.count(vector) as u64
    }
    fn describe(&self) -> String {
        format!("{} device in this process", self.kind.name())
    }
}

/// A device behind its own vfio-user server.
pub struct Remote {
    wire: WireDevice,
    client: Arc<Client>,
    efds: Vec<EventFd>,
    counts: Vec<u64>,
    // Last: the client is shut down before the server goes.
    server: DeviceServer,
}

impl Remote {
    /// Starts a server, connects, maps `guest` with DMA_MAP (its memfd),
    /// enables bus mastering and routes every MSI-X vector to an eventfd.
    pub fn open(
        launch: &Launch,
        kind: Kind,
        devmem: u64,
        guest: &Guest,
    ) -> Result<Self, LiveError> {
        let server = DeviceServer::start(launch, kind, devmem)?;
        Self::attach(server, guest)
    }

    /// Connects to a running `server` and sets the device up for `guest`.
    pub fn attach(server: DeviceServer, guest: &Guest) -> Result<Self, LiveError> {
        let client = Arc::new(server.connect()?);
        let l = guest.layout;
        client.dma_map_fd(guest.fd.as_fd(), 0, l.base, l.size)?;
        client.enable_bus_master()?;
        let mut efds = Vec::new();
        for _ in 0..consts::NUM_VECTORS {
            efds.push(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| proto("eventfd", e))?,
            );
        }
        let fds: Vec<_> = efds.iter().map(|e| e.as_fd()).collect();
        client.msix_eventfds(0, &fds)?;
        let wire = WireDevice::new(client.clone())?;
        Ok(Remote {
            wire,
            client,
            counts: vec![0; efds.len()],
            efds,
            server,
        })
    }

    /// The server.
    pub fn server(&self) -> &DeviceServer {
        &self.server
    }
}

fn bitmap_pages(base: u64, bm: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (wi, &w) in bm.iter().enumerate() {
        let mut bits = w;
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            out.push(base + (wi as u64 * 64 + b) * PAGE as u64);
        }
    }
    out
}

impl VmDevice for Remote {
    fn dev(&mut self) -> &mut dyn Device {
        &mut self.wire
    }
    fn set_state(&mut self, s: MigState) -> Result<(), LiveError> {
        Ok(self.client.set_mig_state(s as u32)?)
    }
    fn read_data(&mut self, max: usize) -> Result<Vec<u8>, LiveError> {
        // Reads of at most the negotiated transfer size; short only at an end.
        let chunk = self
            .client
            .version()
            .map_or(1 << 20, |v| v.caps.max_data_xfer_size)
            .clamp(4096, 1 << 20) as usize;
        let mut out = Vec::new();
        while out.len() < max {
            let want = (max - out.len()).min(chunk);
            let d = self.client.mig_data_read(want as u32)?;
            let short = d.len() < want;
            if out.is_empty() {
                out = d;
            } else {
                out.extend_from_slice(&d);
            }
            if short {
                break;
            }
        }
        Ok(out)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<(), LiveError> {
        Ok(self.client.mig_data_write(data)?)
    }
    fn stop_copy_size(&mut self) -> Result<u64, LiveError> {
        Ok(self.client.mig_data_size()?)
    }
    fn reset(&mut self) -> Result<(), LiveError> {
        Ok(self.client.reset()?)
    }
    fn dirty_start(&mut self, guest: &Guest) -> Result<(), LiveError> {
        let l = guest.layout;
        Ok(self
            .client
            .dma_logging_start(PAGE as u64, &[(l.base, l.size)])?)
    }
    fn dirty_take(&mut self, guest: &Guest) -> Result<Vec<u64>, LiveError> {
        let l = guest.layout;
        let bm = self
            .client
            .dma_logging_report(l.base, l.size, PAGE as u64)?;
        Ok(bitmap_pages(l.base, &bm))
    }
    fn dirty_stop(&mut self, _guest: &Guest) -> Result<(), LiveError> {
        Ok(self.client.dma_logging_stop()?)
    }
    fn irqs(&mut self, vector: u16) -> u64 {
        let v = usize::from(vector);
        if let (Some(e), Some(c)) = (self.efds.get(v), self.counts.get_mut(v))
            && let Ok(n) = e.read()
        {
            *c += n;
        }
        self.counts.get(v).copied().unwrap_or(0)
    }
    fn describe(&self) -> String {
        match self.server.pid() {
            Some(p) => format!("`vfpga serve` process {p}"),
            None => "in-process vfio-user server".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_to_pages() {
        assert_eq!(
            bitmap_pages(0x1000_0000, &[0b101, 1 << 63, 0, 1]),
            vec![
                0x1000_0000,
                0x1000_2000,
                0x1000_0000 + 127 * 4096,
                0x1000_0000 + 192 * 4096
            ]
        );
    }

    #[test]
    fn guest_memory_is_one_file_seen_through_two_mappings() {
        let l = Layout {
            base: 0x4000_0000,
            size: 64 << 10,
            sq_entries: 4,
            cq_entries: 4,
            devmem: 4096,
        };
        let g = Guest::new(l).unwrap();
        g.dma.host_write(l.base + 4096, b"hello").unwrap();
        let file = std::fs::File::from(g.fd.try_clone().unwrap());
        let other = MmapMemory::map_file(&file, 0, l.size as usize).unwrap();
        let mut b = [0u8; 5];
        vfpga_device::GuestMemory::read(&other, 4096, &mut b).unwrap();
        assert_eq!(&b, b"hello");
    }
}
