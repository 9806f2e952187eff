//! The implementations a cross-check can pair: the model (unbatched, one
//! datasheet step per unit) and the Verilated RTL (explicit clocking).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use vfpga_device::{Bar, Device, DeviceError, DmaPort, IrqSink};
use vfpga_hw::BoardDevice;
use vfpga_model::{Model, ModelConfig};
use vfpga_sim::{Clocking, PipeReq, SimDevice, SimOptions};

use crate::lockstep::{LockstepOptions, RawAccess, WaitAccess};

use crate::lockstep::Factory;

/// `DMALOG_MAX_PAGES` of the devices a cross-check builds (the generator's
/// windows are at most 64 pages; a smaller log keeps the RTL's reset sweep short).
pub const DMALOG_MAX_PAGES: u32 = 1024;

/// One implementation of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impl {
    /// The Rust reference model, `batch_bursts` off.
    Model,
    /// The RTL under Verilator, explicit clocking.
    Sim,
    /// The simulated board: the PCIe shell and the core at the TLP level
    /// (Icarus, cocotbext-pcie's root complex) under `vfpga-hw`'s board
    /// layer, the code a real board runs.
    Board,
}

impl Impl {
    /// Name as in config files.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Model => "model",
            Impl::Sim => "sim",
            Impl::Board => "board",
        }
    }
}

/// A deliberate model bug (checker power; `vfpga_model::Fault`), applied to
/// every model side of a pair. Needs the cargo feature `fault-injection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFault {
    /// The last burst moves one byte less.
    OffByOneLen,
    /// CRC32C starts from PATTERN instead of !PATTERN.
    WrongCrcSeed,
    /// Completion messages dropped while CNT_DESC is odd.
    DroppedIrq,
    /// DMA into device memory sets no dirty bit.
    DirtyBitNotSet,
    /// CUR_CRC reads 0 through the state port.
    StateWordNotSaved,
}

impl ModelFault {
    /// Every fault.
    pub const ALL: [ModelFault; 5] = [
        ModelFault::OffByOneLen,
        ModelFault::WrongCrcSeed,
        ModelFault::DroppedIrq,
        ModelFault::DirtyBitNotSet,
        ModelFault::StateWordNotSaved,
    ];

    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ModelFault::OffByOneLen => "off-by-one-len",
            ModelFault::WrongCrcSeed => "wrong-crc-seed",
            ModelFault::DroppedIrq => "dropped-irq",
            ModelFault::DirtyBitNotSet => "dirty-bit-not-set",
            ModelFault::StateWordNotSaved => "state-word-not-saved",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Which two implementations run in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pair {
    /// The reference (expected values).
    pub reference: Impl,
    /// The side checked against it (actual values).
    pub checked: Impl,
    /// A deliberate bug in the reference model (checker power), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fault: Option<ModelFault>,
}

impl Pair {
    /// Whether the pair needs the Verilated RTL.
    pub fn needs_sim(&self) -> bool {
        self.reference == Impl::Sim || self.checked == Impl::Sim
    }

    /// Whether a side is the simulated board.
    pub fn has_board(&self) -> bool {
        self.reference == Impl::Board || self.checked == Impl::Board
    }

    /// The lockstep options this pair needs: a board side reaches guest
    /// memory through a shared file and bypasses its DMA port.
    pub fn options(&self) -> LockstepOptions {
        let board = self.has_board();
        LockstepOptions {
            shared_guest_memory: board,
            port_dirty_log: !board,
            ..LockstepOptions::default()
        }
    }
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} vs {}", self.reference.name(), self.checked.name())?;
        if let Some(x) = self.model_fault {
            write!(f, " (reference model fault {})", x.name())?;
        }
        Ok(())
    }
}

/// Either implementation, behind one type (every method forwarded, provided
/// ones included, by [`vfpga_device::forward_device!`]).
pub enum AnyDevice {
    /// The model.
    Model(Box<Model>),
    /// The RTL.
    Sim(SimDevice),
    /// The simulated board.
    Board(Box<BoardDevice>),
}

impl AnyDevice {
    fn dev(&self) -> &dyn Device {
        match self {
            AnyDevice::Model(d) => d.as_ref(),
            AnyDevice::Sim(d) => d,
            AnyDevice::Board(d) => d.as_ref(),
        }
    }

    fn dev_mut(&mut self) -> &mut dyn Device {
        match self {
            AnyDevice::Model(d) => d.as_mut(),
            AnyDevice::Sim(d) => d,
            AnyDevice::Board(d) => d.as_mut(),
        }
    }
}

vfpga_device::forward_device! { impl Device for AnyDevice { |s| s.dev(), |s| s.dev_mut() } }

/// What a lockstep side offers beyond the [`Device`] seam: its hardware
/// reset input and back-to-back MMIO.
pub trait SideDevice: Device {
    /// Resets the device to its power-on state wherever it is, even inside a
    /// step (an outstanding DMA access is abandoned). Device memory keeps
    /// its contents; both bitmaps and the DMA-log registers are cleared.
    fn hardware_reset(&mut self) -> Result<(), DeviceError>;

    /// Presents `a` to the device's MMIO port as it is and returns the
    /// response data; `None` where the device has no such port to drive
    /// (the default: the accesses the [`Device`] seam cannot express then
    /// go unchecked). The reference model answers what the datasheet says.
    fn raw_access(&mut self, a: &RawAccess) -> Result<Option<u64>, DeviceError> {
        let _ = a;
        Ok(None)
    }

    /// The INTx level the device drives now and whether it is idle (its
    /// registers cannot change until an access); `None` where the device
    /// has no pin to sample (the default).
    fn intx_idle(&mut self) -> Result<Option<(bool, bool)>, DeviceError> {
        Ok(None)
    }

    /// Clock cycles the device has run since it was created; `None` where
    /// it does not count cycles (the default): its `TIMER` is then not
    /// checked.
    fn cycles(&mut self) -> Result<Option<u64>, DeviceError> {
        Ok(None)
    }

    /// A hardware reset ([`SideDevice::hardware_reset`]) followed at once
    /// by `accesses` back to back ([`SideDevice::mmio_back_to_back`]); on
    /// the RTL they are presented from the cycle the reset is released, so
    /// they meet the post-reset bitmap sweep. The default does the two one
    /// after the other.
    fn reset_then(&mut self, accesses: &[(WaitAccess, u32)]) -> Result<Vec<Vec<u8>>, DeviceError> {
        self.hardware_reset()?;
        self.mmio_back_to_back(accesses)
    }

    /// Issues `accesses` back to back: each `(access, gap)` is presented
    /// `gap` cycles after the previous one was accepted, without waiting for
    /// its response where the device has a port (the RTL). Returns the bytes
    /// read by each (empty for writes). The default issues them one by one.
    fn mmio_back_to_back(
        &mut self,
        accesses: &[(WaitAccess, u32)],
    ) -> Result<Vec<Vec<u8>>, DeviceError> {
        let mut out = Vec::with_capacity(accesses.len());
        for (a, _) in accesses {
            let bar = if a.bar2 { Bar::DevMem } else { Bar::Regs };
            match a.write {
                Some(v) => {
                    self.mmio_write(bar, a.offset, &v.to_le_bytes()[..usize::from(a.len)])?;
                    out.push(Vec::new());
                }
                None => {
                    let mut d = vec![0u8; usize::from(a.len)];
                    self.mmio_read(bar, a.offset, &mut d)?;
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

impl SideDevice for Model {
    fn hardware_reset(&mut self) -> Result<(), DeviceError> {
        self.power_on_reset();
        Ok(())
    }

    /// The datasheet's answer ([`RawAccess::datasheet_answer`]).
    fn raw_access(&mut self, a: &RawAccess) -> Result<Option<u64>, DeviceError> {
        a.datasheet_answer(self).map(Some)
    }
}

impl SideDevice for SimDevice {
    fn hardware_reset(&mut self) -> Result<(), DeviceError> {
        self.hw_reset(2)
    }

    fn intx_idle(&mut self) -> Result<Option<(bool, bool)>, DeviceError> {
        SimDevice::intx_idle(self).map(Some)
    }

    fn cycles(&mut self) -> Result<Option<u64>, DeviceError> {
        Ok(Some(self.stats()?.cycles))
    }

    /// On the RTL's MMIO port ([`SimDevice::mmio_raw`]).
    fn raw_access(&mut self, a: &RawAccess) -> Result<Option<u64>, DeviceError> {
        self.mmio_raw(a.bar2, a.write, a.addr, a.be).map(Some)
    }

    /// The reset and the accesses in one call
    /// ([`SimDevice::hw_reset_then`]).
    fn reset_then(&mut self, accesses: &[(WaitAccess, u32)]) -> Result<Vec<Vec<u8>>, DeviceError> {
        let reqs = pipe_reqs(accesses)?;
        let r = self.hw_reset_then(2, &reqs)?;
        Ok(read_bytes(accesses, r))
    }

    /// On the RTL's MMIO port, pipelined ([`SimDevice::mmio_pipelined`]).
    /// Accesses must be one 64-bit word each (BAR0: 4 bytes aligned or 8
    /// bytes 8-aligned; BAR2: within one word).
    fn mmio_back_to_back(
        &mut self,
        accesses: &[(WaitAccess, u32)],
    ) -> Result<Vec<Vec<u8>>, DeviceError> {
        let reqs = pipe_reqs(accesses)?;
        let r = self.mmio_pipelined(&reqs)?;
        Ok(read_bytes(accesses, r))
    }
}

/// The RTL port requests of `accesses` (one 64-bit word each).
fn pipe_reqs(accesses: &[(WaitAccess, u32)]) -> Result<Vec<PipeReq>, DeviceError> {
    let mut reqs = Vec::with_capacity(accesses.len());
    for (a, gap) in accesses {
        let len = usize::from(a.len);
        let lane = (a.offset % 8) as usize;
        if len == 0 || lane + len > 8 {
            return Err(DeviceError::BadAccess {
                bar: if a.bar2 { Bar::DevMem } else { Bar::Regs },
                offset: a.offset,
                len,
            });
        }
        let be = (((1u16 << len) - 1) << lane) as u8;
        let wdata = a.write.map_or(0, |v| v << (8 * lane));
        reqs.push(PipeReq {
            bar2: a.bar2,
            write: a.write.is_some(),
            addr: (a.offset & !7) as u32,
            be,
            wdata,
            gap: *gap,
        });
    }
    Ok(reqs)
}

/// The bytes each read of `accesses` returned, from the port's response
/// words `r` (empty for writes).
fn read_bytes(accesses: &[(WaitAccess, u32)], r: Vec<u64>) -> Vec<Vec<u8>> {
    accesses
        .iter()
        .zip(r)
        .map(|((a, _), v)| {
            if a.write.is_some() {
                Vec::new()
            } else {
                let lane = (a.offset % 8) as usize;
                v.to_le_bytes()[lane..lane + usize::from(a.len)].to_vec()
            }
        })
        .collect()
}

/// The board's hardware reset is a function-level reset through the shell
/// (which resets the core); back-to-back accesses are TLPs one after the
/// other (posted writes do not wait).
impl SideDevice for BoardDevice {
    fn hardware_reset(&mut self) -> Result<(), DeviceError> {
        self.function_reset().map_err(DeviceError::from)
    }
}

impl SideDevice for AnyDevice {
    fn hardware_reset(&mut self) -> Result<(), DeviceError> {
        match self {
            AnyDevice::Model(d) => d.hardware_reset(),
            AnyDevice::Sim(d) => d.hardware_reset(),
            AnyDevice::Board(d) => d.hardware_reset(),
        }
    }

    fn intx_idle(&mut self) -> Result<Option<(bool, bool)>, DeviceError> {
        match self {
            AnyDevice::Model(d) => d.intx_idle(),
            AnyDevice::Sim(d) => SideDevice::intx_idle(d),
            AnyDevice::Board(d) => d.intx_idle(),
        }
    }

    fn cycles(&mut self) -> Result<Option<u64>, DeviceError> {
        match self {
            AnyDevice::Model(d) => d.cycles(),
            AnyDevice::Sim(d) => SideDevice::cycles(d),
            AnyDevice::Board(d) => d.cycles(),
        }
    }

    fn raw_access(&mut self, a: &RawAccess) -> Result<Option<u64>, DeviceError> {
        match self {
            AnyDevice::Model(d) => d.raw_access(a),
            AnyDevice::Sim(d) => d.raw_access(a),
            AnyDevice::Board(d) => d.raw_access(a),
        }
    }

    fn reset_then(&mut self, accesses: &[(WaitAccess, u32)]) -> Result<Vec<Vec<u8>>, DeviceError> {
        match self {
            AnyDevice::Model(d) => d.reset_then(accesses),
            AnyDevice::Sim(d) => d.reset_then(accesses),
            AnyDevice::Board(d) => d.reset_then(accesses),
        }
    }

    fn mmio_back_to_back(
        &mut self,
        accesses: &[(WaitAccess, u32)],
    ) -> Result<Vec<Vec<u8>>, DeviceError> {
        match self {
            AnyDevice::Model(d) => d.mmio_back_to_back(accesses),
            AnyDevice::Sim(d) => d.mmio_back_to_back(accesses),
            AnyDevice::Board(d) => d.mmio_back_to_back(accesses),
        }
    }
}

/// The RTL's back-pressure for a run whose `x_seed` is this
/// ([`SimDevice::set_stall`]): `(generator seed, percent of cycles each of
/// the DMA request, device-memory request and MMIO response ports is not
/// ready)`. Half the runs never stall (the always-ready harness stays
/// covered), the rest stall on 20 % or 50 % of the cycles; `x_seed` 0 never.
/// Deterministic: the same scenario gets the same stalls.
pub fn stall_for(x_seed: u32) -> (u64, u8) {
    if x_seed == 0 {
        return (0, 0);
    }
    let h = u64::from(x_seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let pct = [0u8, 0, 20, 50][(h >> 62) as usize];
    (h | 1, pct)
}

/// A factory for `which` with `devmem_pages` pages. For the RTL, `vcd`
/// names the waveform of the first instance; later instances (state
/// transplants) write `<stem>.2.vcd`, `<stem>.3.vcd`, ...; `x_seed` seeds
/// the random contents of every RTL register before its first reset
/// (each later instance gets the next seed; 0: zeros).
pub fn factory(
    which: Impl,
    devmem_pages: u32,
    vcd: Option<PathBuf>,
    x_seed: u32,
) -> Factory<AnyDevice> {
    faulty_factory(which, devmem_pages, vcd, None, x_seed)
}

/// Like [`factory`], with a deliberate bug in the model.
pub fn faulty_factory(
    which: Impl,
    devmem_pages: u32,
    vcd: Option<PathBuf>,
    fault: Option<ModelFault>,
    x_seed: u32,
) -> Factory<AnyDevice> {
    let n = Arc::new(AtomicU32::new(0));
    Box::new(move |dma: DmaPort, irq: Arc<dyn IrqSink>| match which {
        Impl::Model => {
            let cfg = ModelConfig {
                devmem_pages,
                dmalog_max_pages: DMALOG_MAX_PAGES,
                batch_bursts: false,
            };
            #[allow(unused_mut)]
            let mut m = Model::new(cfg, dma, irq)?;
            if let Some(f) = fault {
                inject(&mut m, f)?;
            }
            Ok(AnyDevice::Model(Box::new(m)))
        }
        Impl::Sim => {
            let k = n.fetch_add(1, Ordering::Relaxed);
            let vcd = vcd.as_ref().map(|p| {
                if k == 0 {
                    p.clone()
                } else {
                    p.with_extension(format!("{}.vcd", k + 1))
                }
            });
            let o = SimOptions {
                devmem_pages,
                dmalog_max_pages: DMALOG_MAX_PAGES,
                clocking: Clocking::Explicit,
                vcd,
                x_seed: if x_seed == 0 {
                    0
                } else {
                    x_seed.wrapping_add(k).max(1)
                },
            };
            let mut d = SimDevice::new(o, dma, irq)?;
            let (seed, pct) = stall_for(x_seed);
            if pct > 0 {
                d.set_stall(seed.wrapping_add(u64::from(k)), pct)?;
            }
            Ok(AnyDevice::Sim(d))
        }
        Impl::Board => {
            let o = vfpga_hw::SimBoardOptions::new(devmem_pages, DMALOG_MAX_PAGES);
            let b = BoardDevice::simulated(&o, &vfpga_hw::this_build_ids(), dma, irq)?;
            Ok(AnyDevice::Board(Box::new(b)))
        }
    })
}

#[cfg(feature = "fault-injection")]
fn inject(m: &mut Model, f: ModelFault) -> Result<(), DeviceError> {
    use vfpga_model::Fault;
    m.inject_fault(Some(match f {
        ModelFault::OffByOneLen => Fault::OffByOneLen,
        ModelFault::WrongCrcSeed => Fault::WrongCrcSeed,
        ModelFault::DroppedIrq => Fault::DroppedIrq,
        ModelFault::DirtyBitNotSet => Fault::DirtyBitNotSet,
        ModelFault::StateWordNotSaved => Fault::StateWordNotSaved,
    }));
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn inject(_m: &mut Model, f: ModelFault) -> Result<(), DeviceError> {
    Err(DeviceError::Device(format!(
        "model fault {} needs a build with the cargo feature fault-injection",
        f.name()
    )))
}
