//! The [`Model`]: the device's registers, DMA engine, device memory, bitmaps
//! and state port, behind the [`Device`] seam.

use std::sync::Arc;

use tracing::{debug, trace};
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DeviceState, DmaFault, DmaPort, Identity, IrqSink,
    Progress, StateViolation, check_compatible, validate_arch,
};
use vfpga_regs::{ArchState, CplStatus, IrqStatus, Opcode, consts, state as sw};

use crate::ModelError;

/// Bytes per page of the dirty bitmap and the DMA log.
pub(crate) const PAGE: u64 = consts::PAGE_SIZE as u64;

/// What one call to [`Model::step`] did (datasheet §5.3). Each variant but
/// [`Step::Quiesced`] is one unit: the timer advanced by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Fetched the descriptor in SQ slot `slot`; `status` is the verdict of
    /// its checks (`Ok`, or the descriptor error it will complete with).
    Fetch {
        /// SQ slot.
        slot: u32,
        /// Check verdict.
        status: CplStatus,
    },
    /// The descriptor fetch at `addr` was refused: `SQ_FETCH_FAULT`, halted.
    FetchFault {
        /// IOVA of the descriptor.
        addr: u64,
    },
    /// A burst of the in-flight descriptor moved `bytes` bytes.
    Burst {
        /// Bytes moved (1..=`BURST_BYTES`).
        bytes: u32,
    },
    /// A burst was refused at `addr` with `status` (`DMA_READ_FAULT` or
    /// `DMA_WRITE_FAULT`); nothing moved.
    BurstFault {
        /// Status recorded for the descriptor.
        status: CplStatus,
        /// Address of the refused access.
        addr: u64,
    },
    /// The in-flight descriptor completed.
    Complete {
        /// SQ slot it came from.
        slot: u32,
        /// Completion status.
        status: CplStatus,
        /// `BYTES` of the completion.
        bytes: u32,
    },
    /// The completion write at `addr` was refused: `CQ_WRITE_FAULT`, halted.
    CompleteFault {
        /// IOVA of the completion entry.
        addr: u64,
    },
    /// A descriptor waits to complete but the CQ has no free slot.
    Stalled,
    /// A DMA access waits for its answer ([`DmaFault::Pending`]); the same
    /// step is repeated later. Nothing changed but the timer.
    DmaWait {
        /// IOVA of the waiting access.
        addr: u64,
    },
    /// Nothing to do.
    Idle,
    /// The engine is halted and takes no step.
    Halted,
    /// The device is quiesced: no step and no timer tick.
    Quiesced,
}

/// The kind of a [`Step`], for aligning the model with another
/// implementation at step boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// A fetch (successful or not).
    Fetch,
    /// A burst (successful or not).
    Burst,
    /// A completion (successful or not).
    Complete,
    /// Waiting for a CQ slot.
    Stalled,
    /// Waiting for the answer to a DMA access.
    DmaWait,
    /// Nothing to do.
    Idle,
    /// Halted.
    Halted,
    /// Quiesced.
    Quiesced,
}

impl Step {
    /// The kind of this step.
    pub fn kind(&self) -> StepKind {
        match self {
            Step::Fetch { .. } | Step::FetchFault { .. } => StepKind::Fetch,
            Step::Burst { .. } | Step::BurstFault { .. } => StepKind::Burst,
            Step::Complete { .. } | Step::CompleteFault { .. } => StepKind::Complete,
            Step::Stalled => StepKind::Stalled,
            Step::DmaWait { .. } => StepKind::DmaWait,
            Step::Idle => StepKind::Idle,
            Step::Halted => StepKind::Halted,
            Step::Quiesced => StepKind::Quiesced,
        }
    }

    /// Whether the engine did something (fetch, burst or completion).
    pub fn made_progress(&self) -> bool {
        matches!(
            self.kind(),
            StepKind::Fetch | StepKind::Burst | StepKind::Complete
        )
    }
}

/// A deliberate bug the model can be switched into, to prove that a
/// cross-check catches it (checker power). Only settable with the cargo
/// feature `fault-injection` (`Model::inject_fault`); never used otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The last burst of a descriptor moves one byte less (but counts it).
    OffByOneLen,
    /// A `CRC32C` descriptor starts from `PATTERN` instead of `!PATTERN`.
    WrongCrcSeed,
    /// Completion-vector messages are dropped while `CNT_DESC` is odd
    /// (the pending bit is cleared as if sent).
    DroppedIrq,
    /// DMA bursts into device memory set no dirty bit.
    DirtyBitNotSet,
    /// The state port reads `CUR_CRC` as 0 (the word is not saved).
    StateWordNotSaved,
}

/// Instance parameters of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Device memory in 4 KiB pages: a power of two, at most
    /// `MAX_DEVMEM_PAGES`.
    pub devmem_pages: u32,
    /// Largest DMA write-log window in pages, at most `MAX_DMALOG_PAGES`.
    pub dmalog_max_pages: u32,
    /// Let [`Device::advance`] run several bursts of one descriptor as one
    /// memory copy when that is indistinguishable from running them one by
    /// one (same bytes, same faults, same bitmaps, same state words; see
    /// [`Model::advance`](Device::advance)). [`Model::step`] never batches.
    pub batch_bursts: bool,
}

impl Default for ModelConfig {
    /// 1 MiB of device memory, the largest DMA-log window, batching on.
    fn default() -> Self {
        ModelConfig {
            devmem_pages: 256,
            dmalog_max_pages: consts::MAX_DMALOG_PAGES,
            batch_bursts: true,
        }
    }
}

impl ModelConfig {
    /// A configuration with `devmem_pages` pages and the other defaults.
    pub fn with_pages(devmem_pages: u32) -> Self {
        ModelConfig {
            devmem_pages,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        let p = self.devmem_pages;
        if !p.is_power_of_two() || p > consts::MAX_DEVMEM_PAGES {
            return Err(ModelError::Config {
                name: "devmem_pages",
                value: p.into(),
                reason: "must be a power of two from 1 to MAX_DEVMEM_PAGES",
            });
        }
        if self.dmalog_max_pages > consts::MAX_DMALOG_PAGES {
            return Err(ModelError::Config {
                name: "dmalog_max_pages",
                value: self.dmalog_max_pages.into(),
                reason: "must be at most MAX_DMALOG_PAGES",
            });
        }
        Ok(())
    }
}

/// The DMA write log (datasheet §7): host-side machinery, not state.
#[derive(Debug, Clone)]
pub(crate) struct DmaLog {
    pub(crate) enable: bool,
    pub(crate) overflow: bool,
    pub(crate) base: u64,
    pub(crate) pages: u32,
    pub(crate) sel: u32,
    pub(crate) bits: Vec<u32>,
}

impl DmaLog {
    fn new(max_pages: u32) -> Self {
        DmaLog {
            enable: false,
            overflow: false,
            base: 0,
            pages: 0,
            sel: 0,
            bits: vec![0; max_pages.div_ceil(32) as usize],
        }
    }

    pub(crate) fn reset(&mut self) {
        self.enable = false;
        self.overflow = false;
        self.base = 0;
        self.pages = 0;
        self.sel = 0;
        self.bits.fill(0);
    }

    pub(crate) fn groups(&self) -> u32 {
        self.pages.div_ceil(32)
    }

    /// Records a device write of `len` bytes at host address `addr`.
    fn record(&mut self, addr: u64, len: u64) {
        if !self.enable || len == 0 {
            return;
        }
        let base = self.base / PAGE;
        let first = addr / PAGE;
        let last = addr.saturating_add(len - 1) / PAGE;
        for p in first..=last {
            match p.checked_sub(base) {
                Some(i) if i < u64::from(self.pages) => {
                    self.bits[(i / 32) as usize] |= 1 << (i % 32);
                }
                _ => self.overflow = true,
            }
        }
    }
}

/// What identifies a burst for [`Model`]'s staged read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StagedKey {
    sa: u64,
    da: u64,
    len: u32,
    slot: u32,
    tag: u32,
    cnt_desc: u32,
}

/// Which memory an operand of a descriptor lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Host,
    Dev,
}

fn src_space(op: Opcode) -> Option<Space> {
    match op {
        Opcode::CopyH2d | Opcode::CopyH2h | Opcode::Crc32c => Some(Space::Host),
        Opcode::CopyD2h => Some(Space::Dev),
        Opcode::Nop | Opcode::FillDev | Opcode::FillHost => None,
    }
}

fn dst_space(op: Opcode) -> Option<Space> {
    match op {
        Opcode::CopyD2h | Opcode::CopyH2h | Opcode::FillHost => Some(Space::Host),
        Opcode::CopyH2d | Opcode::FillDev => Some(Space::Dev),
        Opcode::Nop | Opcode::Crc32c => None,
    }
}

/// `CUR_FLAGS` bit 0: a descriptor is in flight (datasheet §9.2).
pub(crate) const CUR_VALID: u32 = 1;
/// `CUR_FLAGS` bits 23:16: the status already decided.
pub(crate) const CUR_STATUS_SHIFT: u32 = 16;
/// `FLAGS` bit 0: `STATUS.HALTED`.
pub(crate) const FLAG_HALTED: u32 = 1;

/// How long an MMIO access waits for a step that waits for DMA
/// ([`Model::finish_waiting_step`]).
const FINISH_STEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest batch [`Device::advance`] moves as one copy.
const BATCH_BYTES: u32 = 1 << 20;

/// The reference model. See the crate docs.
pub struct Model {
    pub(crate) cfg: ModelConfig,
    pub(crate) identity: Identity,
    /// The architectural state words, stored exactly as written (§9.1).
    pub(crate) arch: ArchState,
    pub(crate) quiesced: bool,
    pub(crate) state_invalid: bool,
    pub(crate) state_idx: u32,
    pub(crate) state_err: u32,
    pub(crate) timer_hi_latch: u32,
    pub(crate) dirty_sel: u32,
    pub(crate) dirty: Vec<u32>,
    pub(crate) dmalog: DmaLog,
    pub(crate) mem: Vec<u8>,
    pub(crate) dma: DmaPort,
    pub(crate) irq: Arc<dyn IrqSink>,
    scratch: Vec<u8>,
    /// The host read of a burst whose write waits on the DMA port
    /// ([`DmaFault::Pending`]): the burst is repeated with these bytes, so
    /// the host is not read twice. Keyed by everything that identifies the
    /// burst; not architectural (a burst is atomic at quiesce points).
    staged: Option<(StagedKey, Vec<u8>)>,
    /// The completion whose write waits on the DMA port: its repeat skips
    /// the CQ-room check (the host may already have seen the entry and
    /// moved `CQ_HEAD` past it, as the RTL, already committed to the
    /// write, would not notice either).
    cpl_retry: Option<StagedKey>,
    /// The last step waits for a DMA answer: the device is inside a step,
    /// so `CTRL.QUIESCE` waits for it (`STATUS.QUIESCING`).
    pub(crate) dma_waiting: bool,
    /// `CTRL.QUIESCE` was written while a step waited for DMA.
    pub(crate) quiesce_req: bool,
    /// A deliberate bug ([`Fault`]); `None` unless injected for a test.
    pub(crate) fault: Option<Fault>,
    /// `DMA_THROTTLE.IDLE`: units the engine idles after each burst
    /// (datasheet §5.5). Host-side machinery, not state.
    pub(crate) throttle: u32,
    /// Idle units still owed by earlier bursts: [`Device::advance`] spends
    /// them before the next step. Timing only; a quiesce or reset drops it.
    pub(crate) throttle_debt: u64,
}

impl Model {
    /// A device out of reset (running, disabled, all interrupts masked, device
    /// memory zero) that reaches guest memory through `dma` and sends its
    /// interrupt messages to `irq`.
    pub fn new(cfg: ModelConfig, dma: DmaPort, irq: Arc<dyn IrqSink>) -> Result<Self, ModelError> {
        cfg.check()?;
        let bytes = cfg.devmem_pages as usize * PAGE as usize;
        debug!(pages = cfg.devmem_pages, "vfpga model created");
        Ok(Model {
            cfg,
            identity: Identity::this_build(cfg.devmem_pages, cfg.dmalog_max_pages),
            arch: ArchState::RESET,
            quiesced: false,
            state_invalid: false,
            state_idx: 0,
            state_err: 0,
            timer_hi_latch: 0,
            dirty_sel: 0,
            dirty: vec![0; (cfg.devmem_pages as usize / 32).max(1)],
            dmalog: DmaLog::new(cfg.dmalog_max_pages),
            mem: vec![0; bytes],
            dma,
            irq,
            scratch: Vec::new(),
            staged: None,
            cpl_retry: None,
            dma_waiting: false,
            quiesce_req: false,
            fault: None,
            throttle: 0,
            throttle_debt: 0,
        })
    }

    /// A model built from a saved state (the host-side restore path): checks
    /// that `state` was saved from a compatible device (IDs, RTL major.minor,
    /// layout, device-memory size), validates its words (datasheet §9.3) and
    /// returns the model **quiesced** with the state loaded, so the caller can
    /// write device memory through BAR2 (or [`Device::devmem_write`]) and then
    /// [`Device::resume`].
    pub fn from_state(
        cfg: ModelConfig,
        state: &DeviceState,
        dma: DmaPort,
        irq: Arc<dyn IrqSink>,
    ) -> Result<Self, ModelError> {
        let mut m = Model::new(cfg, dma, irq)?;
        if state.version != vfpga_device::state::DEVICE_STATE_VERSION {
            return Err(ModelError::StateVersion {
                found: state.version,
                expected: vfpga_device::state::DEVICE_STATE_VERSION,
            });
        }
        check_compatible(&m.identity, &state.identity).map_err(ModelError::Incompatible)?;
        validate_arch(&state.arch, m.identity.devmem_bytes()).map_err(ModelError::State)?;
        m.arch = state.arch;
        m.quiesced = true;
        Ok(m)
    }

    /// Switches the model into a deliberate bug (test-only, feature
    /// `fault-injection`): the cross-check must catch it. Batching is off
    /// while a fault is injected.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> ModelConfig {
        self.cfg
    }

    /// The live architectural state words (what the state port would read).
    pub fn arch(&self) -> &ArchState {
        &self.arch
    }

    /// Whether the device is quiesced.
    pub fn quiesced(&self) -> bool {
        self.quiesced
    }

    /// The device memory.
    pub fn devmem(&self) -> &[u8] {
        &self.mem
    }

    /// The DMA port the model uses.
    pub fn dma_port(&self) -> &DmaPort {
        &self.dma
    }

    /// Whether the engine has a step to take that changes something: not
    /// quiesced, not halted, and a descriptor to fetch, burst or complete
    /// (with a free CQ slot).
    pub fn has_work(&self) -> bool {
        if self.quiesced || self.halted() {
            return false;
        }
        if self.dma_waiting {
            return true;
        }
        if self.cur_valid() {
            return !self.must_complete() || self.cq_has_room();
        }
        self.can_fetch()
    }

    /// Performs exactly one engine step (datasheet §5.3: complete, else
    /// burst, else fetch), then checks interrupt delivery. The timer advances
    /// by one unless the device is quiesced.
    pub fn step(&mut self) -> Step {
        if self.quiesced {
            return Step::Quiesced;
        }
        self.tick(1);
        let s = self.engine_step();
        trace!(?s, "step");
        if matches!(s, Step::Burst { .. } | Step::BurstFault { .. }) {
            self.throttle_debt += u64::from(self.throttle);
        }
        self.dma_waiting = matches!(s, Step::DmaWait { .. });
        if !self.dma_waiting && self.quiesce_req {
            debug!("quiesced after the DMA wait");
            self.quiesce_req = false;
            self.quiesced = true;
            self.throttle_debt = 0;
        }
        self.deliver_irqs();
        s
    }

    /// Datasheet §5.3: an MMIO access that is not served while a step waits
    /// for DMA waits for the step to end. Repeats the waiting step (waiting
    /// for the DMA answer between attempts) until it ends; gives up after
    /// [`FINISH_STEP_LIMIT`] so that a peer that never answers cannot hang
    /// the caller (the access then goes ahead, with a warning).
    pub(crate) fn finish_waiting_step(&mut self) {
        let start = std::time::Instant::now();
        while self.dma_waiting && !self.quiesced {
            self.dma.wait_pending(std::time::Duration::from_millis(1));
            self.step();
            if self.dma_waiting && start.elapsed() > FINISH_STEP_LIMIT {
                tracing::warn!("MMIO access went ahead of a step still waiting for DMA");
                break;
            }
        }
    }

    // ---- helpers over the state words ----

    pub(crate) fn halted(&self) -> bool {
        self.arch.flags & FLAG_HALTED != 0
    }

    pub(crate) fn cur_valid(&self) -> bool {
        self.arch.cur_flags & CUR_VALID != 0
    }

    fn cur_status(&self) -> u32 {
        (self.arch.cur_flags >> CUR_STATUS_SHIFT) & 0xff
    }

    fn cur_op(&self) -> Option<Opcode> {
        Opcode::from_raw(vfpga_regs::desc::ctl::OPCODE.get(self.arch.cur_ctl))
    }

    fn cur_src(&self) -> u64 {
        u64::from(self.arch.cur_src_lo) | (u64::from(self.arch.cur_src_hi) << 32)
    }

    fn cur_dst(&self) -> u64 {
        u64::from(self.arch.cur_dst_lo) | (u64::from(self.arch.cur_dst_hi) << 32)
    }

    /// Whether the in-flight descriptor's next step is its completion.
    fn must_complete(&self) -> bool {
        self.cur_status() != 0
            || self.arch.cur_done >= self.arch.cur_len
            || matches!(self.cur_op(), None | Some(Opcode::Nop))
    }

    fn cq_has_room(&self) -> bool {
        let size = self.arch.cq_size;
        let idx = vfpga_regs::fields::cq_tail::INDEX.get(self.arch.cq_tail);
        size != 0 && (idx + 1) % size != self.arch.cq_head
    }

    pub(crate) fn can_fetch(&self) -> bool {
        self.arch.ctrl & vfpga_regs::Ctrl::ENABLE.bits() != 0
            && !self.halted()
            && self.arch.sq_size != 0
            && self.arch.sq_head != self.arch.sq_tail
    }

    pub(crate) fn timer(&self) -> u64 {
        u64::from(self.arch.timer_lo) | (u64::from(self.arch.timer_hi) << 32)
    }

    /// Advances the timer by `n` cycles (not while quiesced).
    pub(crate) fn tick(&mut self, n: u64) {
        if self.quiesced {
            return;
        }
        let t = self.timer().wrapping_add(n);
        self.arch.timer_lo = t as u32;
        self.arch.timer_hi = (t >> 32) as u32;
    }

    fn fire(&mut self, cause: IrqStatus) {
        self.arch.irq_status |= cause.bits();
        self.arch.irq_pending |= cause.bits();
    }

    fn record_error(&mut self, status: CplStatus, addr: u64) {
        debug!(status = status.name(), addr, "device error");
        self.arch.err_code = status.raw();
        self.arch.err_addr_lo = addr as u32;
        self.arch.err_addr_hi = (addr >> 32) as u32;
        self.fire(IrqStatus::ERR);
    }

    fn halt(&mut self, status: CplStatus, addr: u64) {
        self.record_error(status, addr);
        self.arch.flags |= FLAG_HALTED;
    }

    /// Sends every pending, unmasked message, vector 0 first (datasheet §4).
    pub(crate) fn deliver_irqs(&mut self) {
        if self.quiesced {
            return;
        }
        let ready = self.arch.irq_pending & !self.arch.irq_mask;
        if ready == 0 {
            return;
        }
        for v in 0..consts::NUM_VECTORS {
            let bit = 1u32 << v;
            if ready & bit != 0 {
                self.arch.irq_pending &= !bit;
                if self.fault == Some(Fault::DroppedIrq)
                    && v == consts::VECTOR_CPL
                    && self.arch.cnt_desc % 2 == 1
                {
                    continue;
                }
                trace!(vector = v, "MSI-X message");
                self.irq.raise(v as u16);
            }
        }
    }

    pub(crate) fn mark_dirty(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        for p in off / PAGE..=(off + len - 1) / PAGE {
            if let Some(w) = self.dirty.get_mut((p / 32) as usize) {
                *w |= 1 << (p % 32);
            }
        }
    }

    // ---- the engine (datasheet §5.3) ----

    fn engine_step(&mut self) -> Step {
        if self.halted() {
            return Step::Halted;
        }
        if self.cur_valid() {
            if self.must_complete() {
                return self.complete();
            }
            return self.burst();
        }
        if self.can_fetch() {
            return self.fetch();
        }
        Step::Idle
    }

    fn fetch(&mut self) -> Step {
        use vfpga_regs::desc;
        let slot = self.arch.sq_head;
        let sq_base = u64::from(self.arch.sq_base_lo) | (u64::from(self.arch.sq_base_hi) << 32);
        let addr = sq_base.wrapping_add(u64::from(slot) * desc::SIZE as u64);
        let mut b = [0u8; desc::SIZE];
        if let Err(e) = self.dma.read(addr, &mut b) {
            if matches!(e, DmaFault::Pending { .. }) {
                return Step::DmaWait { addr };
            }
            debug!(%e, "descriptor fetch refused");
            self.halt(CplStatus::SqFetchFault, addr);
            return Step::FetchFault { addr };
        }
        let w = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let a = &mut self.arch;
        a.cur_ctl = w(desc::CTL);
        a.cur_tag = w(desc::TAG);
        a.cur_src_lo = w(desc::SRC_LO);
        a.cur_src_hi = w(desc::SRC_HI);
        a.cur_dst_lo = w(desc::DST_LO);
        a.cur_dst_hi = w(desc::DST_HI);
        a.cur_len = w(desc::LEN);
        a.cur_pattern = w(desc::PATTERN);
        a.cur_done = 0;
        a.cur_slot = slot;
        a.cur_flags = CUR_VALID;
        let op = self.cur_op();
        self.arch.cur_crc = if op == Some(Opcode::Crc32c) {
            if self.fault == Some(Fault::WrongCrcSeed) {
                self.arch.cur_pattern
            } else {
                !self.arch.cur_pattern
            }
        } else {
            0
        };
        self.arch.sq_head = (slot + 1) % self.arch.sq_size.max(1);
        let status = self.check_desc(op);
        if status != CplStatus::Ok {
            self.arch.cur_flags |= status.raw() << CUR_STATUS_SHIFT;
            self.record_error(status, addr);
        }
        Step::Fetch { slot, status }
    }

    /// The fetch-time checks of §5.3, in order.
    fn check_desc(&self, op: Option<Opcode>) -> CplStatus {
        let Some(op) = op else {
            return CplStatus::BadOpcode;
        };
        if vfpga_regs::desc::ctl::RSVD.get(self.arch.cur_ctl) != 0
            || self.arch.cur_len > consts::MAX_DESC_LEN
        {
            return CplStatus::BadDesc;
        }
        let len = u64::from(self.arch.cur_len);
        let size = self.identity.devmem_bytes();
        let beyond = |a: u64| a.checked_add(len).is_none_or(|e| e > size);
        let bad = match op {
            Opcode::CopyH2d | Opcode::FillDev => beyond(self.cur_dst()),
            Opcode::CopyD2h => beyond(self.cur_src()),
            _ => false,
        };
        if bad {
            CplStatus::DevmemRange
        } else {
            CplStatus::Ok
        }
    }

    /// Bytes of the next burst of `op` at progress `done`.
    fn burst_len(&self, op: Opcode, done: u32) -> u32 {
        let mut n = u64::from(consts::BURST_BYTES.min(self.arch.cur_len - done));
        let to_boundary = |a: u64| PAGE - a % PAGE;
        if src_space(op).is_some() {
            n = n.min(to_boundary(self.cur_src().wrapping_add(u64::from(done))));
        }
        if dst_space(op).is_some() {
            n = n.min(to_boundary(self.cur_dst().wrapping_add(u64::from(done))));
        }
        n as u32
    }

    fn burst_fault(&mut self, status: CplStatus, addr: u64) -> Step {
        self.arch.cur_flags =
            (self.arch.cur_flags & CUR_VALID) | (status.raw() << CUR_STATUS_SHIFT);
        self.record_error(status, addr);
        Step::BurstFault { status, addr }
    }

    fn burst(&mut self) -> Step {
        let Some(op) = self.cur_op() else {
            return self.complete();
        };
        let done = self.arch.cur_done;
        let n = self.burst_len(op, done);
        let sa = self.cur_src().wrapping_add(u64::from(done));
        let da = self.cur_dst().wrapping_add(u64::from(done));
        let mut buf = [0u8; consts::BURST_BYTES as usize];
        // The deliberate bug: the last burst moves one byte less.
        let moved = if self.fault == Some(Fault::OffByOneLen) && done + n == self.arch.cur_len {
            n - 1
        } else {
            n
        };
        let b = &mut buf[..moved as usize];
        let key = StagedKey {
            sa,
            da,
            len: moved,
            slot: self.arch.cur_slot,
            tag: self.arch.cur_tag,
            cnt_desc: self.arch.cnt_desc,
        };
        match src_space(op) {
            Some(Space::Host) => match self.staged.take() {
                Some((k, data)) if k == key => b.copy_from_slice(&data),
                _ => match self.dma.read(sa, b) {
                    Ok(()) => {}
                    Err(DmaFault::Pending { .. }) => return Step::DmaWait { addr: sa },
                    Err(e) => {
                        trace!(%e, "burst read refused");
                        return self.burst_fault(CplStatus::DmaReadFault, sa);
                    }
                },
            },
            Some(Space::Dev) => match devmem_range(sa, moved, self.mem.len()) {
                Some(r) => b.copy_from_slice(&self.mem[r]),
                // Unreachable for a validated descriptor; fail safe anyway.
                None => return self.burst_fault(CplStatus::DevmemRange, sa),
            },
            None => fill_pattern(b, self.arch.cur_pattern, done),
        }
        match dst_space(op) {
            Some(Space::Host) => {
                if let Err(e) = self.dma.write(da, b) {
                    if matches!(e, DmaFault::Pending { .. }) {
                        if src_space(op) == Some(Space::Host) {
                            self.staged = Some((key, b.to_vec()));
                        }
                        return Step::DmaWait { addr: da };
                    }
                    trace!(%e, "burst write refused");
                    return self.burst_fault(CplStatus::DmaWriteFault, da);
                }
                self.dmalog.record(da, u64::from(n));
            }
            Some(Space::Dev) => match devmem_range(da, moved, self.mem.len()) {
                Some(r) => {
                    self.mem[r].copy_from_slice(b);
                    if self.fault != Some(Fault::DirtyBitNotSet) {
                        self.mark_dirty(da, u64::from(n));
                    }
                }
                None => return self.burst_fault(CplStatus::DevmemRange, da),
            },
            None => {}
        }
        if op == Opcode::Crc32c {
            self.arch.cur_crc = crate::crc::update(self.arch.cur_crc, b);
        }
        self.arch.cur_done = done + n;
        Step::Burst { bytes: n }
    }

    fn complete(&mut self) -> Step {
        use vfpga_regs::{cpl, fields::cq_tail};
        let idx = cq_tail::INDEX.get(self.arch.cq_tail);
        let phase = cq_tail::PHASE.get(self.arch.cq_tail);
        let cq_base = u64::from(self.arch.cq_base_lo) | (u64::from(self.arch.cq_base_hi) << 32);
        let addr = cq_base.wrapping_add(u64::from(idx) * cpl::SIZE as u64);
        let key = StagedKey {
            sa: addr,
            da: addr,
            len: cpl::SIZE as u32,
            slot: self.arch.cur_slot,
            tag: self.arch.cur_tag,
            cnt_desc: self.arch.cnt_desc,
        };
        let retry = self.cpl_retry.take() == Some(key);
        if !retry && !self.cq_has_room() {
            return Step::Stalled;
        }
        let status_raw = self.cur_status();
        let status = CplStatus::from_raw(status_raw).unwrap_or(CplStatus::BadDesc);
        let result = if status == CplStatus::Ok && self.cur_op() == Some(Opcode::Crc32c) {
            !self.arch.cur_crc
        } else {
            0
        };
        let info = cpl::info::STATUS.set(0, status_raw);
        let info = cpl::info::SLOT.set(info, self.arch.cur_slot);
        let info = cpl::info::PHASE.set(info, phase);
        let mut words = [0u32; cpl::SIZE / 4];
        words[cpl::TAG] = self.arch.cur_tag;
        words[cpl::INFO] = info;
        words[cpl::RESULT] = result;
        words[cpl::BYTES] = self.arch.cur_done;
        let mut b = [0u8; cpl::SIZE];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        if let Err(e) = self.dma.write(addr, &b) {
            if matches!(e, DmaFault::Pending { .. }) {
                self.cpl_retry = Some(key);
                return Step::DmaWait { addr };
            }
            debug!(%e, "completion write refused");
            self.halt(CplStatus::CqWriteFault, addr);
            return Step::CompleteFault { addr };
        }
        self.dmalog.record(addr, cpl::SIZE as u64);
        let (mut next, mut phase) = (idx + 1, phase);
        if next == self.arch.cq_size {
            next = 0;
            phase ^= 1;
        }
        self.arch.cq_tail = cq_tail::PHASE.set(cq_tail::INDEX.set(0, next), phase);
        let a = &mut self.arch;
        a.cnt_desc = a.cnt_desc.wrapping_add(1);
        if status_raw != 0 {
            a.cnt_err = a.cnt_err.wrapping_add(1);
        }
        let bytes = (u64::from(a.cnt_bytes_lo) | (u64::from(a.cnt_bytes_hi) << 32))
            .wrapping_add(u64::from(a.cur_done));
        a.cnt_bytes_lo = bytes as u32;
        a.cnt_bytes_hi = (bytes >> 32) as u32;
        let slot = a.cur_slot;
        let done = a.cur_done;
        if vfpga_regs::desc::ctl::IRQ.get(a.cur_ctl) != 0 {
            self.fire(IrqStatus::CPL);
        }
        self.clear_cur();
        Step::Complete {
            slot,
            status,
            bytes: done,
        }
    }

    fn clear_cur(&mut self) {
        let mut w = self.arch.to_words();
        w[sw::CUR_FLAGS..=sw::CUR_SLOT].fill(0);
        self.arch = ArchState::from_words(&w);
    }

    /// Runs up to `max_units` bursts of the in-flight descriptor as one copy,
    /// when that is indistinguishable from running them one by one: every
    /// access of the batch succeeds (so no burst would have faulted), and a
    /// host-to-host copy does not overlap itself. Returns the bursts run, or
    /// `None` to let the caller take a single step.
    fn try_batch(&mut self, max_units: u64) -> Option<u64> {
        if self.quiesced
            || self.halted()
            || !self.cur_valid()
            || self.must_complete()
            || self.fault.is_some()
        {
            return None;
        }
        let op = self.cur_op()?;
        let start = self.arch.cur_done;
        let (mut done, mut k) = (start, 0u64);
        while k < max_units && done < self.arch.cur_len && done - start < BATCH_BYTES {
            done += self.burst_len(op, done);
            k += 1;
        }
        if k < 2 {
            return None;
        }
        let n = done - start;
        let n64 = u64::from(n);
        let sa = self.cur_src().wrapping_add(u64::from(start));
        let da = self.cur_dst().wrapping_add(u64::from(start));
        let (ss, ds) = (src_space(op), dst_space(op));
        // Memory that answers later is reached burst by burst.
        if (ss == Some(Space::Host) && self.dma.may_pend(sa))
            || (ds == Some(Space::Host) && self.dma.may_pend(da))
        {
            return None;
        }
        if ss == Some(Space::Host)
            && ds == Some(Space::Host)
            && sa < da.saturating_add(n64)
            && da < sa.saturating_add(n64)
        {
            return None;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(n as usize, 0);
        let ok = self.batch_move(op, ss, ds, sa, da, start, &mut buf);
        self.scratch = buf;
        if !ok {
            return None;
        }
        self.arch.cur_done = done;
        self.tick(k);
        self.deliver_irqs();
        Some(k)
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_move(
        &mut self,
        op: Opcode,
        ss: Option<Space>,
        ds: Option<Space>,
        sa: u64,
        da: u64,
        start: u32,
        buf: &mut [u8],
    ) -> bool {
        let n = buf.len() as u32;
        // Source: only reads, no side effect if refused.
        match ss {
            Some(Space::Host) => {
                if self.dma.read(sa, buf).is_err() {
                    return false;
                }
            }
            Some(Space::Dev) => {
                // D2H: write straight from device memory below.
                if devmem_range(sa, n, self.mem.len()).is_none() {
                    return false;
                }
            }
            None => fill_pattern(buf, self.arch.cur_pattern, start),
        }
        match (ss, ds) {
            (Some(Space::Dev), Some(Space::Host)) => {
                let Some(r) = devmem_range(sa, n, self.mem.len()) else {
                    return false;
                };
                // DmaPort refuses before writing anything.
                if self.dma.write(da, &self.mem[r]).is_err() {
                    return false;
                }
                self.dmalog.record(da, u64::from(n));
            }
            (_, Some(Space::Host)) => {
                if self.dma.write(da, buf).is_err() {
                    return false;
                }
                self.dmalog.record(da, u64::from(n));
            }
            (_, Some(Space::Dev)) => {
                let Some(r) = devmem_range(da, n, self.mem.len()) else {
                    return false;
                };
                self.mem[r].copy_from_slice(buf);
                self.mark_dirty(da, u64::from(n));
            }
            (_, None) => {}
        }
        if op == Opcode::Crc32c {
            self.arch.cur_crc = crate::crc::update(self.arch.cur_crc, buf);
        }
        true
    }

    // ---- quiesce, resume, reset, validation ----

    pub(crate) fn validate(&mut self) -> Result<(), StateViolation> {
        let r = validate_arch(&self.arch, self.identity.devmem_bytes());
        self.state_err = match r {
            Ok(()) => 0,
            Err(v) => {
                use vfpga_regs::fields::state_err::{CODE, WORD};
                WORD.set(CODE.set(0, v.code.raw()), v.word as u32)
            }
        };
        r
    }

    pub(crate) fn resume(&mut self) {
        match self.validate() {
            Ok(()) => {
                debug!("resumed");
                self.quiesced = false;
                self.state_invalid = false;
            }
            Err(v) => {
                debug!(%v, "RESUME refused");
                self.state_invalid = true;
            }
        }
    }

    /// Hardware reset (the power-on state, datasheet §8 "Hardware reset"):
    /// wherever the device is, even inside a step that waits for DMA (the
    /// access is abandoned), every state word returns to its reset value,
    /// both bitmaps and the DMA-log registers are cleared and the device is
    /// running, idle and disabled. Device memory keeps its contents.
    pub fn power_on_reset(&mut self) {
        debug!("hardware reset");
        self.soft_reset();
    }

    pub(crate) fn soft_reset(&mut self) {
        debug!("soft reset");
        self.arch = ArchState::RESET;
        self.quiesced = false;
        self.state_invalid = false;
        self.state_idx = 0;
        self.state_err = 0;
        self.timer_hi_latch = 0;
        self.dirty_sel = 0;
        self.dirty.fill(0);
        self.dmalog.reset();
        self.staged = None;
        self.cpl_retry = None;
        self.dma_waiting = false;
        self.quiesce_req = false;
        self.throttle = 0;
        self.throttle_debt = 0;
    }

    fn devmem_check(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DeviceError> {
        let bad = DeviceError::BadAccess {
            bar: Bar::DevMem,
            offset,
            len,
        };
        let o = usize::try_from(offset).map_err(|_| bad)?;
        match o.checked_add(len) {
            Some(e) if e <= self.mem.len() => Ok(o..e),
            _ => Err(DeviceError::BadAccess {
                bar: Bar::DevMem,
                offset,
                len,
            }),
        }
    }
}

impl std::fmt::Debug for Model {
    /// The registers and flags; not the contents of device memory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("cfg", &self.cfg)
            .field("arch", &self.arch)
            .field("quiesced", &self.quiesced)
            .field("state_invalid", &self.state_invalid)
            .field("state_idx", &self.state_idx)
            .field("state_err", &self.state_err)
            .field("dmalog_enable", &self.dmalog.enable)
            .field("devmem_bytes", &self.mem.len())
            .finish_non_exhaustive()
    }
}

/// The byte range of device memory `[off, off+n)`, if inside `size` bytes.
fn devmem_range(off: u64, n: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let o = usize::try_from(off).ok()?;
    let e = o.checked_add(n as usize)?;
    (e <= size).then_some(o..e)
}

/// Fills `b` with the pattern bytes of a FILL descriptor at progress `done`.
fn fill_pattern(b: &mut [u8], pattern: u32, done: u32) {
    let p = pattern.to_le_bytes();
    for (k, x) in b.iter_mut().enumerate() {
        *x = p[(done as usize + k) % 4];
    }
}

impl Device for Model {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            identity: self.identity,
            bar0_size: consts::BAR0_SIZE.into(),
            bar2_size: self.mem.len() as u64,
            self_running: false,
        }
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match bar {
            Bar::Regs => self.bar0_read(offset, data),
            Bar::DevMem => {
                // BAR2 is not served during a DMA wait (§5.3).
                self.finish_waiting_step();
                let r = self.devmem_check(offset, data.len())?;
                data.copy_from_slice(&self.mem[r]);
                Ok(())
            }
        }
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match bar {
            Bar::Regs => self.bar0_write(offset, data),
            Bar::DevMem => {
                self.finish_waiting_step();
                self.devmem_write(offset, data)
            }
        }
    }

    /// One unit is one engine step (or one idle tick when there is nothing
    /// to do). Stops early when the device has nothing to do, after that one
    /// idle tick. With [`ModelConfig::batch_bursts`], consecutive bursts of
    /// one descriptor may run as one copy; they still count one unit each.
    /// With `DMA_THROTTLE.IDLE` = *t*, every burst is followed by *t* idle
    /// units (timer ticks, no step), so a burst costs 1 + *t* units.
    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
        let mut used = 0;
        while used < budget && !self.quiesced {
            if self.throttle_debt > 0 {
                if !self.has_work() {
                    // The gap runs out while there is nothing to do anyway.
                    self.throttle_debt = 0;
                    continue;
                }
                let k = self.throttle_debt.min(budget - used);
                self.tick(k);
                self.throttle_debt -= k;
                used += k;
                continue;
            }
            let per_burst = 1 + u64::from(self.throttle);
            if self.cfg.batch_bursts
                && (budget - used) / per_burst >= 2
                && let Some(k) = self.try_batch((budget - used) / per_burst)
            {
                used += k;
                self.throttle_debt += k * u64::from(self.throttle);
                continue;
            }
            let s = self.step();
            used += 1;
            if !s.made_progress() {
                break;
            }
        }
        Ok(Progress {
            used,
            idle: !self.has_work(),
        })
    }

    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let r = self.devmem_check(offset, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let r = self.devmem_check(offset, data.len())?;
        self.mem[r].copy_from_slice(data);
        self.mark_dirty(offset, data.len() as u64);
        Ok(())
    }

    /// What the trait's register walk does (`DIRTY_SEL` = 0, then one
    /// `DIRTY_BITS` read per group, each returning and clearing it, §6),
    /// done on the bitmap at once: a 256 MiB device has 2,048 groups, and
    /// the walk's 2,049 register accesses sat in every migration's
    /// stop-and-copy window. The effects are the same: the step a DMA wait
    /// holds finishes first (neither register is served during one, §5.3),
    /// every group is returned and cleared, and `DIRTY_SEL` wraps back to 0.
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError> {
        if self.dma_waiting {
            self.finish_waiting_step();
        }
        let mut out = vec![0u64; self.dirty.len().div_ceil(2)];
        for (g, w) in self.dirty.iter_mut().enumerate() {
            out[g / 2] |= u64::from(std::mem::take(w)) << ((g % 2) * 32);
        }
        self.dirty_sel = 0;
        Ok(out)
    }
}
