//! A stand-in for the board: any [`Device`] (the model, the Verilated RTL)
//! behind the board layer, in place of the VFIO bottom. Everything above the
//! bottom runs as on a board: the BAR access rules, the identity and RTL
//! version checks, the IOMMU bookkeeping (recorded, since the stand-in
//! reaches guest memory through its bounds-checked [`DmaPort`]), and MSI-X
//! delivery through eventfds and the forwarding thread.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::EventFd;
use vfpga_device::{Bar, Device, IrqSink, Perm, Progress};
use vfpga_regs::{consts, fields, offsets};

use crate::board::Bottom;
use crate::error::HwError;

/// The stand-in's interrupt sink: signals the eventfd the board layer
/// routed the vector to, as VFIO does for a board's MSI-X message.
#[derive(Debug, Default)]
pub(crate) struct EventfdSink {
    fds: Mutex<Vec<OwnedFd>>,
}

impl EventfdSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IrqSink for EventfdSink {
    fn raise(&self, vector: u16) {
        let fds = self.lock();
        match fds.get(usize::from(vector)) {
            Some(fd) => {
                if let Err(e) = nix::unistd::write(fd, &1u64.to_ne_bytes()) {
                    tracing::warn!(vector, "stand-in MSI-X: eventfd write failed: {e}");
                }
            }
            // MSI-X disabled: the message is lost, as on a board.
            None => tracing::debug!(vector, "stand-in MSI-X: vector not routed"),
        }
    }
}

/// The bottom of a stand-in board.
pub(crate) struct StandIn {
    dev: Box<dyn Device>,
    sink: Arc<EventfdSink>,
    maps: Vec<(u64, u64)>,
    config: ConfigSpace,
}

/// The configuration space a vfpga function built as the datasheet says
/// presents (what the shell's PCIe IP is configured to): IDs from `PCI_ID`,
/// a command register, and one MSI-X capability locating the table and PBA.
#[derive(Debug)]
pub(crate) struct ConfigSpace([u8; 256]);

impl ConfigSpace {
    const MSIX_AT: usize = 0x40;

    pub(crate) fn new(vendor: u16, device: u16) -> Self {
        let mut c = [0u8; 256];
        c[0..2].copy_from_slice(&vendor.to_le_bytes());
        c[2..4].copy_from_slice(&device.to_le_bytes());
        c[6] = 1 << 4; // status: capability list
        c[0x34] = Self::MSIX_AT as u8;
        let m = Self::MSIX_AT;
        c[m] = 0x11;
        c[m + 2..m + 4].copy_from_slice(&((consts::NUM_VECTORS - 1) as u16).to_le_bytes());
        c[m + 4..m + 8].copy_from_slice(&consts::MSIX_TABLE_OFFSET.to_le_bytes());
        c[m + 8..m + 12].copy_from_slice(&consts::MSIX_PBA_OFFSET.to_le_bytes());
        ConfigSpace(c)
    }

    pub(crate) fn read(&self, offset: u16, width: usize) -> u32 {
        let o = usize::from(offset);
        let mut b = [0u8; 4];
        if let Some(src) = self.0.get(o..o + width) {
            b[..width].copy_from_slice(src);
        } else {
            return u32::MAX;
        }
        u32::from_le_bytes(b)
    }

    /// Only the command register's memory and bus-master bits are writable.
    pub(crate) fn write(&mut self, offset: u16, width: usize, value: u32) {
        if offset == 0x04 && width >= 1 {
            self.0[4] = (value as u8) & 0x06;
        }
    }

    /// A function reset clears the command register.
    pub(crate) fn reset(&mut self) {
        self.0[4] = 0;
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("info", &self.dev.info())
            .field("maps", &self.maps)
            .finish()
    }
}

impl StandIn {
    /// Builds the device with `make`, giving it the sink that signals the
    /// routed eventfds.
    pub(crate) fn new<F>(make: F) -> Result<Self, HwError>
    where
        F: FnOnce(Arc<dyn IrqSink>) -> Result<Box<dyn Device>, vfpga_device::DeviceError>,
    {
        let sink = Arc::new(EventfdSink::default());
        let mut dev = make(sink.clone()).map_err(|source| HwError::Device {
            addr: "stand-in".into(),
            source,
        })?;
        let id = dev.read_reg(offsets::PCI_ID).map_err(Self::err)?;
        let config = ConfigSpace::new(
            fields::pci_id::VENDOR.get(id) as u16,
            fields::pci_id::DEVICE.get(id) as u16,
        );
        Ok(StandIn {
            dev,
            sink,
            maps: Vec::new(),
            config,
        })
    }

    fn err(source: vfpga_device::DeviceError) -> HwError {
        HwError::Device {
            addr: "stand-in".into(),
            source,
        }
    }
}

impl Bottom for StandIn {
    fn bar_len(&self, bar: Bar) -> u64 {
        let i = self.dev.info();
        match bar {
            Bar::Regs => i.bar0_size,
            Bar::DevMem => i.bar2_size,
        }
    }

    fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError> {
        let mut b = [0u8; 8];
        self.dev
            .mmio_read(bar, offset, &mut b[..width])
            .map_err(Self::err)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write(&mut self, bar: Bar, offset: u64, width: usize, value: u64) -> Result<(), HwError> {
        self.dev
            .mmio_write(bar, offset, &value.to_le_bytes()[..width])
            .map_err(Self::err)
    }

    fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
        Ok(self.config.read(offset, width))
    }

    fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError> {
        self.config.write(offset, width, value);
        Ok(())
    }

    /// Records the mapping only: the stand-in reaches guest memory through
    /// its own bounds-checked `DmaPort`, never through `addr`.
    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        _addr: NonNull<u8>,
        _perm: Perm,
        _file: Option<(std::os::fd::BorrowedFd<'_>, u64)>,
    ) -> Result<(), HwError> {
        self.maps.push((iova, len));
        Ok(())
    }

    fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError> {
        self.maps.retain(|m| *m != (iova, len));
        Ok(())
    }

    fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError> {
        let dup = fds
            .iter()
            .map(|f| f.as_fd().try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| HwError::Irq {
                addr: "stand-in".into(),
                what: "duplicating an eventfd".into(),
                source,
            })?;
        *self.sink.lock() = dup;
        Ok(())
    }

    fn disable_msix(&mut self) -> Result<(), HwError> {
        self.sink.lock().clear();
        Ok(())
    }

    /// A function reset of the stand-in is the device's soft reset (and the
    /// command register cleared, as an FLR clears it).
    fn reset(&mut self) -> Result<(), HwError> {
        self.config.reset();
        self.dev.soft_reset().map_err(Self::err)
    }

    fn self_running(&self) -> bool {
        self.dev.info().self_running
    }

    /// The stand-in reaches guest memory through its own `DmaPort`.
    fn dma_through_port(&self) -> bool {
        true
    }

    fn advance(&mut self, budget: u64) -> Result<Option<Progress>, HwError> {
        if self.dev.info().self_running {
            return Ok(None);
        }
        self.dev.advance(budget).map(Some).map_err(Self::err)
    }
}
