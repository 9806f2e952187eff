//! The device as a VMM sees it through a vfio-user [`Client`]: a
//! [`Device`] whose BAR accesses are REGION_READ / REGION_WRITE messages, so
//! the datasheet-level operations of `vfpga-device` (the ring driver, device
//! memory access, identity checks) run unchanged against a device behind a
//! `vfpga serve` process.
//!
//! The server's runner thread advances the device, so this device is
//! self-running: [`Device::advance`] only yields.

use std::sync::Arc;

use vfpga_device::{Bar, Device, DeviceError, DeviceInfo, Identity, Progress};
use vfpga_regs::{consts, offsets};

use crate::client::{Client, ClientError};
use crate::session::region;

/// A [`Device`] reached over vfio-user.
#[derive(Debug, Clone)]
pub struct WireDevice {
    client: Arc<Client>,
    info: DeviceInfo,
    chunk: usize,
    /// See [`WireDevice::set_hang_guard`].
    hang_guard: Option<std::time::Duration>,
    last_write: std::time::Instant,
}

fn wire_err(e: ClientError) -> DeviceError {
    DeviceError::Backend {
        msg: format!("vfio-user: {e}"),
        source: Some(Box::new(e)),
    }
}

fn bar_region(bar: Bar) -> u32 {
    match bar {
        Bar::Regs => region::BAR0,
        Bar::DevMem => region::BAR2,
    }
}

impl WireDevice {
    /// Wraps a negotiated client. The geometry comes from the server
    /// (REGION_INFO of BAR0 and BAR2) and the identity from the device's own
    /// registers; the identity is then checked like any other backend's.
    pub fn new(client: Arc<Client>) -> Result<Self, DeviceError> {
        let (bar0, _) = client.region_info(region::BAR0).map_err(wire_err)?;
        let (bar2, _) = client.region_info(region::BAR2).map_err(wire_err)?;
        let reg = |off: u32| client.read32(u64::from(off)).map_err(wire_err);
        let pci = reg(offsets::PCI_ID)?;
        let state_info = reg(offsets::STATE_INFO)?;
        let identity = Identity {
            vendor_id: pci as u16,
            device_id: (pci >> 16) as u16,
            rtl_version: reg(offsets::RTL_VERSION)?,
            features: reg(offsets::FEATURES)?,
            devmem_pages: reg(offsets::DEVMEM_PAGES)?,
            dmalog_max_pages: consts::MAX_DMALOG_PAGES,
            state_layout: (state_info >> 16) as u16,
            state_words: state_info as u16,
        };
        let chunk = client
            .version()
            .map_or(1 << 20, |v| v.caps.max_data_xfer_size)
            .clamp(4096, 1 << 20) as usize;
        let mut d = WireDevice {
            client,
            info: DeviceInfo {
                identity,
                bar0_size: bar0.size,
                bar2_size: bar2.size,
                self_running: true,
            },
            chunk,
            hang_guard: None,
            last_write: std::time::Instant::now(),
        };
        d.check_identity()?;
        Ok(d)
    }

    /// Makes [`Device::advance`] fail once `guard` has passed since the last
    /// register write: the server's runner advances the device, so a caller
    /// waiting on it (a ring wait) would otherwise never see its unit budget
    /// run out. `None` (the default): no limit.
    pub fn set_hang_guard(&mut self, guard: Option<std::time::Duration>) {
        self.hang_guard = guard;
        self.last_write = std::time::Instant::now();
    }

    /// The client underneath.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }
}

impl Device for WireDevice {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let d = self
            .client
            .region_read(bar_region(bar), offset, data.len() as u32)
            .map_err(wire_err)?;
        data.copy_from_slice(&d);
        Ok(())
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.client
            .region_write(bar_region(bar), offset, data)
            .map_err(wire_err)?;
        self.last_write = std::time::Instant::now();
        Ok(())
    }

    fn advance(&mut self, _budget: u64) -> Result<Progress, DeviceError> {
        if let Some(g) = self.hang_guard
            && self.last_write.elapsed() > g
        {
            return Err(DeviceError::Backend {
                msg: format!(
                    "hang guard: no register write over the wire for {g:?} while waiting on the device"
                ),
                source: None,
            });
        }
        std::thread::yield_now();
        Ok(Progress {
            used: 0,
            idle: false,
        })
    }

    /// Device memory in transfers of up to the negotiated size (the server
    /// reads it through its device, as every BAR2 access).
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let mut pos = 0;
        while pos < buf.len() {
            let n = (buf.len() - pos).min(self.chunk);
            let d = self
                .client
                .region_read(region::BAR2, offset + pos as u64, n as u32)
                .map_err(wire_err)?;
            buf[pos..pos + n].copy_from_slice(&d);
            pos += n;
        }
        Ok(())
    }

    /// Device memory in transfers of up to the negotiated size (dirty bits
    /// are set by the device, as for every BAR2 write).
    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        for (i, c) in data.chunks(self.chunk).enumerate() {
            self.client
                .region_write(region::BAR2, offset + (i * self.chunk) as u64, c)
                .map_err(wire_err)?;
        }
        Ok(())
    }
}
