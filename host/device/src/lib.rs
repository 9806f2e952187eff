//! The Device seam: one trait every form of the vfpga device implements (the
//! Rust model, the Verilated RTL, a board through VFIO, and `Lockstep` pairs),
//! and the host-side pieces a device is given: the [`DmaPort`] to guest memory
//! and the [`IrqSink`] for its interrupt messages.
//!
//! The trait has a small required part, the MMIO bottom ([`Device::info`],
//! [`Device::mmio_read`], [`Device::mmio_write`], [`Device::advance`]), and a
//! provided part written once, on top of the datasheet's registers: quiesce,
//! resume, save and restore of [`DeviceState`], device memory, the dirty
//! bitmap and the DMA write log. A backend overrides a provided method only to
//! do the same thing faster (the simulator serves device memory from host
//! memory, for instance), never to change what it means.
//!
//! # What a backend guarantees while quiesced
//!
//! Once [`Device::quiesce`] has returned `Ok`, and until [`Device::resume`] or
//! [`Device::soft_reset`], the device:
//! - issues no DMA through its [`DmaPort`] and raises nothing on its [`IrqSink`];
//! - changes no architectural state: [`Device::save_state`] returns the same
//!   words however long it stays quiesced, whatever is read from its BARs and
//!   however often [`Device::advance`] is called;
//! - still answers MMIO (writes other than the state port, the resume/reset
//!   controls and the dirty/DMA-log machinery are ignored, see datasheet §8);
//! - runs a restored state only after it passed validation (datasheet §9.3),
//!   and even then every address it uses goes through the bounds-checked
//!   [`DmaPort`], so bogus state can make it fail but never reach memory it was
//!   not given.

#![deny(unsafe_code)]

// Test-only modules: compiled for this crate's tests and for crates that ask
// for them with the `test-support` feature (test suites), never otherwise.
#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
pub mod dma;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod irq;
pub mod ring;
pub mod shared_mem;
pub mod state;
#[cfg(any(test, feature = "test-support"))]
pub mod testkit;

use std::time::{Duration, Instant};

pub use dma::{DmaFault, DmaPort, GuestMemory, MapError, MmapMemory, Perm, VecMemory};
pub use irq::{IrqLog, IrqSink, NoIrq};
pub use state::{DeviceState, Identity, StateViolation, validate_arch};
use vfpga_regs::{ArchState, Ctrl, StateErr, Status, consts, fields, offsets, state as sw};

/// A BAR of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bar {
    /// Registers (BAR0).
    Regs,
    /// Device memory (BAR2).
    DevMem,
}

/// What progress [`Device::advance`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Units consumed (backend-defined: clock cycles for the RTL, engine steps
    /// for the model, 0 for a device that runs by itself).
    pub used: u64,
    /// The device has nothing to do (idle, quiesced, halted or stalled on a
    /// full completion ring).
    pub idle: bool,
}

/// Errors at the Device seam.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An MMIO access outside a BAR or of an unsupported width.
    #[error("bad MMIO access: {bar:?} offset {offset:#x}, {len} bytes")]
    BadAccess {
        /// BAR.
        bar: Bar,
        /// Offset.
        offset: u64,
        /// Width.
        len: usize,
    },
    /// The operation needs a quiesced device.
    #[error("the device must be quiesced for {0}")]
    NotQuiesced(&'static str),
    /// The device did not report QUIESCED in time.
    #[error("the device did not quiesce within {0:?}")]
    QuiesceTimeout(Duration),
    /// The device refused a state (datasheet §9.3).
    #[error(transparent)]
    StateRejected(#[from] StateViolation),
    /// A state from a different device (IDs, RTL version, size).
    #[error("state is for another device: {what} is {found:#x} in the state, {expected:#x} here")]
    IdentityMismatch {
        /// Which identity field.
        what: &'static str,
        /// This device's value.
        expected: u64,
        /// The state's value.
        found: u64,
    },
    /// The device is halted or reports an error that prevents the operation.
    #[error("device error: {0}")]
    Device(String),
    /// The backend itself failed (simulator thread gone, VFIO error, ...).
    #[error("backend failure: {msg}")]
    Backend {
        /// What failed.
        msg: String,
        /// Underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A path that is not built yet.
    #[error("not implemented yet: {0}")]
    NotImplemented(&'static str),
    /// The device is gone (link down, surprise removal) or was reset behind
    /// the driver's back: its state is lost. The text says what was seen
    /// and what had been saved.
    #[error("{0}")]
    Lost(String),
}

/// Static description of a device instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Identity registers and instance parameters.
    pub identity: Identity,
    /// Size of BAR0 in bytes.
    pub bar0_size: u64,
    /// Size of BAR2 (device memory) in bytes.
    pub bar2_size: u64,
    /// The device progresses by itself (a board, a free-running simulator):
    /// [`Device::advance`] only yields, and waits are measured in wall time.
    pub self_running: bool,
}

/// How long the provided methods wait for the device (quiesce handshake).
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Units passed to [`Device::advance`] between polls in provided methods.
const POLL_BUDGET: u64 = 64;

/// One form of the vfpga device. See the crate docs for the quiesce contract.
pub trait Device: Send {
    /// Identity and BAR geometry.
    fn info(&self) -> DeviceInfo;

    /// Reads `data.len()` bytes at `offset` of `bar`. BAR0 takes 4- and 8-byte
    /// aligned accesses (other widths read all ones); BAR2 takes 1, 2, 4 and 8
    /// bytes. An access beyond the BAR is [`DeviceError::BadAccess`]. Reads may
    /// have side effects the datasheet defines (`rc` registers, the timer latch).
    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes `data` at `offset` of `bar`, with the same rules as `mmio_read`.
    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Lets the device make progress for at most `budget` units and reports
    /// what it did. A quiesced device makes no progress (but the call is legal).
    /// Deterministic backends do exactly what the budget allows; self-running
    /// ones may just yield.
    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError>;

    // ---- provided: everything below is the datasheet, written once ----

    /// Reads the BAR0 register at `offset`.
    fn read_reg(&mut self, offset: u32) -> Result<u32, DeviceError> {
        let mut b = [0u8; 4];
        self.mmio_read(Bar::Regs, u64::from(offset), &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes the BAR0 register at `offset`.
    fn write_reg(&mut self, offset: u32, value: u32) -> Result<(), DeviceError> {
        self.mmio_write(Bar::Regs, u64::from(offset), &value.to_le_bytes())
    }

    /// The `STATUS` register.
    fn status(&mut self) -> Result<Status, DeviceError> {
        Ok(Status::from_bits_retain(self.read_reg(offsets::STATUS)?))
    }

    /// Reads the identity registers and checks them against [`Device::info`].
    fn check_identity(&mut self) -> Result<Identity, DeviceError> {
        let want = self.info().identity;
        let id = self.read_reg(offsets::ID)?;
        if id != consts::DEVICE_MAGIC {
            return Err(DeviceError::IdentityMismatch {
                what: "ID register",
                expected: consts::DEVICE_MAGIC.into(),
                found: id.into(),
            });
        }
        let checks = [
            ("RTL_VERSION", offsets::RTL_VERSION, want.rtl_version),
            (
                "PCI_ID",
                offsets::PCI_ID,
                (u32::from(want.device_id) << 16) | u32::from(want.vendor_id),
            ),
            ("DEVMEM_PAGES", offsets::DEVMEM_PAGES, want.devmem_pages),
            (
                "STATE_INFO",
                offsets::STATE_INFO,
                (u32::from(want.state_layout) << 16) | u32::from(want.state_words),
            ),
        ];
        for (what, off, expected) in checks {
            let found = self.read_reg(off)?;
            if found != expected {
                return Err(DeviceError::IdentityMismatch {
                    what,
                    expected: expected.into(),
                    found: found.into(),
                });
            }
        }
        Ok(want)
    }

    /// Runs the device until it is idle, at most `max_units` units. Returns
    /// the units used. For a self-running device, waits in wall time instead.
    fn run_until_idle(&mut self, max_units: u64) -> Result<u64, DeviceError> {
        let mut used = 0;
        while used < max_units {
            let p = self.advance(POLL_BUDGET.min(max_units - used))?;
            used += p.used;
            if p.idle {
                break;
            }
            if p.used == 0 && !self.info().self_running {
                break;
            }
        }
        Ok(used)
    }

    /// Quiesce handshake (datasheet §8): request, then poll `STATUS.QUIESCED`
    /// while letting the device finish its current step. Idempotent.
    fn quiesce(&mut self) -> Result<(), DeviceError> {
        if self.status()?.contains(Status::QUIESCED) {
            return Ok(());
        }
        // Keep ENABLE as it is; every other CTRL bit is a pulse.
        let enable = self.read_reg(offsets::CTRL)? & Ctrl::ENABLE.bits();
        self.write_reg(offsets::CTRL, enable | Ctrl::QUIESCE.bits())?;
        let start = Instant::now();
        loop {
            if self.status()?.contains(Status::QUIESCED) {
                return Ok(());
            }
            if start.elapsed() > QUIESCE_TIMEOUT {
                return Err(DeviceError::QuiesceTimeout(QUIESCE_TIMEOUT));
            }
            let p = self.advance(POLL_BUDGET)?;
            if self.info().self_running && p.used == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Leaves quiesce. Fails with the device's validation verdict if it
    /// refuses the state (it then stays quiesced).
    fn resume(&mut self) -> Result<(), DeviceError> {
        if !self.status()?.contains(Status::QUIESCED) {
            return Ok(());
        }
        // Only the RESUME pulse: a restored CTRL word with reserved bits set
        // must not turn into a SOFT_RESET here.
        self.write_reg(offsets::CTRL, Ctrl::RESUME.bits())?;
        let st = self.status()?;
        if st.contains(Status::QUIESCED) {
            return Err(self.state_error()?.map_or_else(
                || DeviceError::Device("RESUME refused without a validation error".into()),
                DeviceError::StateRejected,
            ));
        }
        Ok(())
    }

    /// Whether the device reports QUIESCED.
    fn is_quiesced(&mut self) -> Result<bool, DeviceError> {
        Ok(self.status()?.contains(Status::QUIESCED))
    }

    /// `SOFT_RESET` (datasheet §8): reset values, bitmaps cleared, running.
    fn soft_reset(&mut self) -> Result<(), DeviceError> {
        self.write_reg(offsets::CTRL, Ctrl::SOFT_RESET.bits())
    }

    /// Decodes `STATE_ERR`.
    fn state_error(&mut self) -> Result<Option<StateViolation>, DeviceError> {
        let v = self.read_reg(offsets::STATE_ERR)?;
        let code = fields::state_err::CODE.get(v);
        if code == 0 {
            return Ok(None);
        }
        let code = StateErr::from_raw(code)
            .ok_or_else(|| DeviceError::Device(format!("STATE_ERR holds unknown code {code}")))?;
        Ok(Some(StateViolation {
            code,
            word: fields::state_err::WORD.get(v) as usize,
        }))
    }

    /// Reads the architectural state through the state port. Quiesced only.
    fn save_state(&mut self) -> Result<DeviceState, DeviceError> {
        if !self.is_quiesced()? {
            return Err(DeviceError::NotQuiesced("save_state"));
        }
        self.write_reg(offsets::STATE_IDX, 0)?;
        let mut w = [0u32; sw::WORDS];
        for x in w.iter_mut() {
            *x = self.read_reg(offsets::STATE_DATA)?;
        }
        Ok(DeviceState::new(
            self.info().identity,
            ArchState::from_words(&w),
        ))
    }

    /// Writes `state` through the state port and has the device validate it.
    /// Quiesced only. The identity must match this device's; the words are
    /// checked by the device (datasheet §9.3) and the verdict returned. The
    /// device stays quiesced either way.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        if !self.is_quiesced()? {
            return Err(DeviceError::NotQuiesced("restore_state"));
        }
        check_compatible(&self.info().identity, &state.identity)?;
        self.write_reg(offsets::STATE_IDX, 0)?;
        for w in state.arch.to_words() {
            self.write_reg(offsets::STATE_DATA, w)?;
        }
        self.write_reg(offsets::STATE_CTRL, vfpga_regs::StateCtrl::VALIDATE.bits())?;
        match self.state_error()? {
            None => Ok(()),
            Some(v) => Err(v.into()),
        }
    }

    /// Reads device memory at `offset` (through BAR2).
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let o = offset + (i as u64) * 8;
            self.mmio_read(Bar::DevMem, o, chunk)?;
        }
        Ok(())
    }

    /// Writes device memory at `offset` (through BAR2; sets dirty bits).
    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        for (i, chunk) in data.chunks(8).enumerate() {
            let o = offset + (i as u64) * 8;
            self.mmio_write(Bar::DevMem, o, chunk)?;
        }
        Ok(())
    }

    /// Returns and clears the device-memory dirty bitmap: bit `p` of word
    /// `p / 64` is page `p` (datasheet §6).
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError> {
        let pages = self.info().identity.devmem_pages as usize;
        let groups = (pages / 32).max(1);
        read_bitmap(self, offsets::DIRTY_SEL, offsets::DIRTY_BITS, groups)
    }

    /// Starts the DMA write log over `[base, base + pages*4096)` (datasheet §7).
    fn dma_log_start(&mut self, base: u64, pages: u32) -> Result<(), DeviceError> {
        self.write_reg(offsets::DMALOG_CTRL, 0)?;
        self.write_reg(offsets::DMALOG_BASE_LO, base as u32)?;
        self.write_reg(offsets::DMALOG_BASE_HI, (base >> 32) as u32)?;
        self.write_reg(offsets::DMALOG_PAGES, pages)?;
        self.write_reg(offsets::DMALOG_CTRL, vfpga_regs::DmalogCtrl::ENABLE.bits())
    }

    /// Returns and clears the DMA write log: a page bitmap over the window
    /// (bit `p` of word `p / 64`) and the overflow flag (also cleared).
    fn dma_log_take(&mut self) -> Result<(Vec<u64>, bool), DeviceError> {
        let pages = self.read_reg(offsets::DMALOG_PAGES)? as usize;
        let ctrl = self.read_reg(offsets::DMALOG_CTRL)?;
        let overflow = ctrl & vfpga_regs::DmalogCtrl::OVERFLOW.bits() != 0;
        let bits = read_bitmap(
            self,
            offsets::DMALOG_SEL,
            offsets::DMALOG_BITS,
            pages.div_ceil(32),
        )?;
        if overflow {
            self.write_reg(offsets::DMALOG_CTRL, ctrl)?;
        }
        Ok((bits, overflow))
    }

    /// Stops the DMA write log.
    fn dma_log_stop(&mut self) -> Result<(), DeviceError> {
        self.write_reg(offsets::DMALOG_CTRL, 0)
    }
}

fn read_bitmap<D: Device + ?Sized>(
    dev: &mut D,
    sel: u32,
    bits: u32,
    groups: usize,
) -> Result<Vec<u64>, DeviceError> {
    let mut out = vec![0u64; groups.div_ceil(2)];
    if groups == 0 {
        return Ok(out);
    }
    dev.write_reg(sel, 0)?;
    for g in 0..groups {
        let v = u64::from(dev.read_reg(bits)?);
        out[g / 2] |= v << ((g % 2) * 32);
    }
    Ok(out)
}

/// Whether a state saved from `theirs` may be restored into `ours`: same IDs,
/// same RTL major and minor version, same state layout and device-memory size.
pub fn check_compatible(ours: &Identity, theirs: &Identity) -> Result<(), DeviceError> {
    let pairs: [(&'static str, u64, u64); 6] = [
        ("vendor ID", ours.vendor_id.into(), theirs.vendor_id.into()),
        ("device ID", ours.device_id.into(), theirs.device_id.into()),
        (
            "RTL version (major.minor)",
            u64::from(ours.rtl_version >> 8),
            u64::from(theirs.rtl_version >> 8),
        ),
        (
            "state layout",
            ours.state_layout.into(),
            theirs.state_layout.into(),
        ),
        (
            "state words",
            ours.state_words.into(),
            theirs.state_words.into(),
        ),
        (
            "device-memory pages",
            ours.devmem_pages.into(),
            theirs.devmem_pages.into(),
        ),
    ];
    for (what, expected, found) in pairs {
        if expected != found {
            return Err(DeviceError::IdentityMismatch {
                what,
                expected,
                found,
            });
        }
    }
    Ok(())
}

// `impl Device for Box<D>` and the forwarding macro every wrapper uses.
mod forward;

mod chain;
pub use chain::{error_chain, error_sources};

#[doc(hidden)]
pub mod __private {
    //! Names [`forward_device!`](crate::forward_device) expands to.
    pub use vfpga_regs::Status;
}
