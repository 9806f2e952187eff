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
        let dev = make(sink.clone()).map_err(|source| HwError::Device {
            addr: "stand-in".into(),
            source,
        })?;
        Ok(StandIn {
            dev,
            sink,
            maps: Vec::new(),
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

    fn iommu_alignment(&self) -> u64 {
        4096
    }

    /// Records the mapping only: the stand-in reaches guest memory through
    /// its own bounds-checked `DmaPort`, never through `addr`.
    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        _addr: NonNull<u8>,
        _perm: Perm,
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

    /// A function reset of the stand-in is the device's soft reset.
    fn reset(&mut self) -> Result<(), HwError> {
        self.dev.soft_reset().map_err(Self::err)
    }

    fn self_running(&self) -> bool {
        self.dev.info().self_running
    }

    fn advance(&mut self, budget: u64) -> Result<Option<Progress>, HwError> {
        if self.dev.info().self_running {
            return Ok(None);
        }
        self.dev.advance(budget).map(Some).map_err(Self::err)
    }
}
