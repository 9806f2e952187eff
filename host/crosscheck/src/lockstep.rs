//! [`Lockstep`]: two devices driven with the same stimulus, compared at every
//! point where the datasheet makes their effects timing-independent.
//!
//! # Alignment
//!
//! The two sides do not take the same time for a step (the model counts
//! steps, the RTL clock cycles), but they take the same *sequence* of steps
//! (datasheet §5.3). The lockstep compares them only where that sequence
//! puts them in the same place:
//!
//! - **settled**: both sides ran until idle (nothing to fetch, burst or
//!   complete; halted; or stalled on a full completion ring);
//! - **quiesced**: the checked side (B) quiesced wherever it was; the
//!   reference (A) is then stepped one unit at a time until its state words
//!   equal B's (the step boundary B stopped at). If A runs out of work
//!   first, B stopped at a point that is no step boundary of A: a
//!   divergence. A is never ahead of B: A moves only when settling or when
//!   it catches up like this, while B also runs during its MMIO accesses
//!   and in [`Lockstep::run_checked`].
//!
//! At either point everything architecturally visible is compared: every
//! BAR0 register without a read side effect (the timer aside), interrupt
//! messages owed per vector, guest memory (a difference inside the
//! completion ring is reported as a completion), the device-write dirty log
//! of each side's [`DmaPort`], device memory and, when quiesced, the state
//! words (timing words aside). Reads of BAR0/BAR2 are compared when both
//! sides are at such a point; reads with side effects (the `rc` bitmaps)
//! and writes whose effect depends on how far the device got (rings,
//! control, interrupt registers, DMA-log window, `ERR_CODE`, state-port
//! validation) first settle both sides, so the stimulus reaches both at the
//! same step boundary.
//!
//! # Interrupts
//!
//! A message is compared as *owed*: messages sent plus the `IRQ_PENDING` bit.
//! The datasheet lets a message pending at quiesce wait ("because the
//! quiesce came first"), so the split between sent and pending at a quiesce
//! point is timing; the sum is not. The raw `IRQ_PENDING` register is also
//! compared at settled points (there it is not timing).
//!
//! # Divergences
//!
//! The first divergence stops the lockstep: every later operation fails.
//! The failing operation returns a [`DeviceError::Backend`] whose source is a
//! [`DivergenceError`]; [`Lockstep::divergence`] returns the structured
//! [`Divergence`]: which effect, expected (A) vs actual (B), the operation
//! index and the last operations.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::debug;
use vfpga_device::ring::Completion;
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DeviceState, DmaPort, IrqLog, IrqSink, Perm, Progress,
};
use vfpga_regs::{Access, STATE_LAYOUT, Status, consts, cpl, offsets, state as sw};

use crate::backend::SideDevice;
use crate::slow::{Gate, SlowMemory, SlowSpec};

/// Builds a fresh device of one side (used by the state transplant).
pub type Factory<D> =
    Box<dyn FnMut(DmaPort, Arc<dyn IrqSink>) -> Result<D, DeviceError> + Send + 'static>;

/// Which side of a lockstep pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SideId {
    /// A, the reference (its values are "expected").
    Reference,
    /// B, the side checked against it (its values are "actual").
    Checked,
}

/// Direction of a state transplant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transplant {
    /// Save the reference, restore into a fresh instance of the checked kind.
    ReferenceToChecked,
    /// Save the checked side, restore into a fresh instance of the reference kind.
    CheckedToReference,
}

/// One MMIO access issued while a step waits for DMA (datasheet §5.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitAccess {
    /// BAR2 (device memory) instead of BAR0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bar2: bool,
    /// Offset in the BAR.
    pub offset: u64,
    /// Bytes (4 or 8 for BAR0).
    pub len: u8,
    /// The value written; `None`: a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<u64>,
}

impl WaitAccess {
    /// Whether the datasheet (§5.3) has the device serve this access while
    /// a step has waited 16 cycles or more for DMA: 32-bit BAR0 reads of any
    /// register but `DIRTY_BITS`, `DMALOG_BITS` and `STATE_DATA`, and writes
    /// of `SQ_TAIL`, `CQ_HEAD`, `IRQ_STATUS`, `IRQ_MASK` and `SCRATCH`; a
    /// 64-bit access is two 32-bit ones (both must qualify).
    pub fn served_during_wait(&self) -> bool {
        if self.bar2 || !(self.len == 4 || self.len == 8) || !self.offset.is_multiple_of(4) {
            return false;
        }
        let halves = if self.len == 8 { 2 } else { 1 };
        (0..halves).all(|h| {
            let o = self.offset + 4 * h;
            if o >= u64::from(consts::MSIX_TABLE_OFFSET) {
                return false;
            }
            let o = o as u32;
            match self.write {
                None => ![
                    offsets::DIRTY_BITS,
                    offsets::DMALOG_BITS,
                    offsets::STATE_DATA,
                ]
                .contains(&o),
                Some(_) => [
                    offsets::SQ_TAIL,
                    offsets::CQ_HEAD,
                    offsets::IRQ_STATUS,
                    offsets::IRQ_MASK,
                    offsets::SCRATCH,
                ]
                .contains(&o),
            }
        })
    }
}

/// One request presented as it is to a device's MMIO port: the 64-bit word
/// at `addr & !7` with any byte enables, including accesses the [`Device`]
/// seam cannot express (BAR0 widths other than 32/64 bits or past the
/// register page, BAR2 beyond device memory, empty or non-contiguous BAR2
/// byte enables). What the device answers is the response data of the port
/// (0 for a write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawAccess {
    /// BAR2 (device memory) instead of BAR0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bar2: bool,
    /// Byte address in the BAR (bits 2:0 ignored).
    pub addr: u32,
    /// Byte enables of the word.
    pub be: u8,
    /// The word written (on its lanes); `None`: a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<u64>,
}

impl RawAccess {
    /// What the datasheet has the device answer, computed through the
    /// [`Device`] seam of `dev` (the reference model): `rtl-integration.md`
    /// "MMIO target". BAR0: byte enables `0x0f`/`0xf0`/`0xff` are the 32-bit
    /// register at `addr`, at `addr + 4`, or both (low first); offsets from
    /// 0x1000 up read 0 and ignore writes; any other byte enables read all
    /// ones and ignore writes. BAR2: a contiguous, non-empty run of byte
    /// enables ending within device memory reads or writes those bytes
    /// (read data on their lanes, 0 elsewhere); anything else reads all
    /// ones and ignores the write. A write answers 0.
    pub fn datasheet_answer<D: Device + ?Sized>(&self, dev: &mut D) -> Result<u64, DeviceError> {
        let word = u64::from(self.addr & !7);
        if !self.bar2 {
            let (off, len, shift) = match self.be {
                0x0f => (word, 4usize, 0),
                0xf0 => (word + 4, 4, 32),
                0xff => (word, 8, 0),
                _ => return Ok(if self.write.is_some() { 0 } else { u64::MAX }),
            };
            if word >= 0x1000 {
                return Ok(0);
            }
            return match self.write {
                Some(v) => {
                    let b = (v >> shift).to_le_bytes();
                    dev.mmio_write(Bar::Regs, off, &b[..len])?;
                    Ok(0)
                }
                None => {
                    let mut b = [0u8; 8];
                    dev.mmio_read(Bar::Regs, off, &mut b[..len])?;
                    Ok(u64::from_le_bytes(b) << shift)
                }
            };
        }
        let be = self.be;
        let first = be.trailing_zeros();
        let cnt = be.count_ones();
        let run = if be == 0 { 0 } else { be >> first };
        let contiguous = be != 0 && run & run.wrapping_add(1) == 0;
        let end = word + u64::from(first) + u64::from(cnt);
        if !contiguous || end > dev.info().bar2_size {
            return Ok(if self.write.is_some() { 0 } else { u64::MAX });
        }
        let (lane, n) = (first as usize, cnt as usize);
        let at = word + u64::from(first);
        match self.write {
            Some(v) => {
                dev.mmio_write(Bar::DevMem, at, &v.to_le_bytes()[lane..lane + n])?;
                Ok(0)
            }
            None => {
                let mut b = [0u8; 8];
                dev.mmio_read(Bar::DevMem, at, &mut b[lane..lane + n])?;
                Ok(u64::from_le_bytes(b))
            }
        }
    }
}

impl std::fmt::Display for RawAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bar = if self.bar2 { "BAR2" } else { "BAR0" };
        match self.write {
            None => write!(f, "raw read of {bar} {:#x} be {:#04x}", self.addr, self.be),
            Some(v) => write!(
                f,
                "raw write of {v:#x} to {bar} {:#x} be {:#04x}",
                self.addr, self.be
            ),
        }
    }
}

impl std::fmt::Display for WaitAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bar = if self.bar2 { "BAR2" } else { "BAR0" };
        let name = if self.bar2 {
            "device memory"
        } else {
            vfpga_regs::register_at(self.offset as u32).map_or("?", |r| r.name)
        };
        match self.write {
            None => write!(
                f,
                "{}-byte read of {bar} {:#x} ({name})",
                self.len, self.offset
            ),
            Some(v) => write!(
                f,
                "{}-byte write of {v:#x} to {bar} {:#x} ({name})",
                self.len, self.offset
            ),
        }
    }
}

/// What [`Lockstep::dma_wait`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitReport {
    /// Both sides reached the held DMA access.
    pub reached: bool,
    /// Accesses issued during the wait.
    pub accesses: u32,
}

/// What [`Lockstep::racing_burst`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaceReport {
    /// `DIRTY_BITS`/`DMALOG_BITS` reads among the accesses.
    pub bitmap_reads: u64,
    /// Pages the checked side's racing reads returned that the reference's
    /// did not (the reference reads before its first step): marks the
    /// burst made while the reads were being issued, read mid-burst.
    pub marks_mid_burst: u64,
}

/// One state word that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordDiff {
    /// Index in the state layout.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Reference value.
    pub expected: u32,
    /// Checked value.
    pub actual: u32,
}

/// What diverged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    /// A BAR0 register read differently.
    Register {
        /// Register name.
        name: String,
        /// Offset in BAR0.
        offset: u32,
        /// Reference value.
        expected: u32,
        /// Checked value.
        actual: u32,
    },
    /// A BAR2 (device memory) read differently.
    DevMemRead {
        /// Offset.
        offset: u64,
        /// Reference bytes.
        expected: Vec<u8>,
        /// Checked bytes.
        actual: Vec<u8>,
    },
    /// Interrupt messages owed (sent + pending) on a vector differ.
    Interrupts {
        /// Vector.
        vector: u16,
        /// Reference: messages sent.
        expected_sent: usize,
        /// Reference: message pending.
        expected_pending: bool,
        /// Checked: messages sent.
        actual_sent: usize,
        /// Checked: message pending.
        actual_pending: bool,
    },
    /// A completion entry in the completion ring differs.
    Completion {
        /// CQ index.
        index: u32,
        /// Reference entry.
        expected: CompletionView,
        /// Checked entry.
        actual: CompletionView,
    },
    /// Guest memory differs (outside the completion ring).
    GuestMemory {
        /// IOVA of the first differing byte (rounded down to 16).
        iova: u64,
        /// Reference bytes from there (up to 16).
        expected: Vec<u8>,
        /// Checked bytes from there.
        actual: Vec<u8>,
    },
    /// The guest pages the device wrote (the DMA port's dirty log) differ.
    GuestDirtyLog {
        /// Reference pages (IOVAs).
        expected: Vec<u64>,
        /// Checked pages.
        actual: Vec<u64>,
    },
    /// Device memory differs.
    DevMem {
        /// Offset of the first differing byte (rounded down to 16).
        offset: u64,
        /// Reference bytes from there (up to 16).
        expected: Vec<u8>,
        /// Checked bytes from there.
        actual: Vec<u8>,
    },
    /// The device-memory dirty bitmap read through `take_dirty_pages` differs.
    DirtyBitmap {
        /// Reference pages.
        expected: Vec<u32>,
        /// Checked pages.
        actual: Vec<u32>,
    },
    /// The DMA write log read through `dma_log_take` differs.
    DmaLog {
        /// Reference window pages and overflow.
        expected: (Vec<u32>, bool),
        /// Checked.
        actual: (Vec<u32>, bool),
    },
    /// State words differ at a quiesce point (timing words aside).
    State {
        /// Every differing word.
        words: Vec<WordDiff>,
    },
    /// The checked side quiesced at a point that is no step boundary of the
    /// reference: the closest boundary (fewest differing words) is shown.
    QuiescePoint {
        /// Reference units stepped while searching.
        units_searched: u64,
        /// Differences at the closest boundary.
        words: Vec<WordDiff>,
    },
    /// A state saved from one side was refused by a fresh instance of the other.
    TransplantRefused {
        /// Direction.
        direction: Transplant,
        /// The refusal.
        error: String,
    },
    /// An operation succeeded on one side and failed on the other, or failed
    /// differently (state validation verdicts, resume, ...).
    Outcome {
        /// The operation.
        what: String,
        /// Reference result.
        expected: String,
        /// Checked result.
        actual: String,
    },
    /// An MMIO access issued while both sides waited for the same DMA
    /// answer was served during the wait on one side and only after the
    /// step on the other, or against the datasheet's rule (§5.3).
    DmaWaitRule {
        /// The access.
        access: String,
        /// What §5.3 says: "served during the wait" or "waits for the step".
        rule: String,
        /// What the reference did.
        reference: String,
        /// What the checked side did.
        checked: String,
    },
    /// One side did not reach idle within the limit.
    Liveness {
        /// The side that kept running.
        side: SideId,
        /// Units it ran.
        units: u64,
    },
}

impl Effect {
    /// Short kind name (the serde tag), for grouping divergences.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Register { .. } => "register",
            Effect::DevMemRead { .. } => "dev-mem-read",
            Effect::Interrupts { .. } => "interrupts",
            Effect::Completion { .. } => "completion",
            Effect::GuestMemory { .. } => "guest-memory",
            Effect::GuestDirtyLog { .. } => "guest-dirty-log",
            Effect::DevMem { .. } => "dev-mem",
            Effect::DirtyBitmap { .. } => "dirty-bitmap",
            Effect::DmaLog { .. } => "dma-log",
            Effect::State { .. } => "state",
            Effect::QuiescePoint { .. } => "quiesce-point",
            Effect::TransplantRefused { .. } => "transplant-refused",
            Effect::Outcome { .. } => "outcome",
            Effect::DmaWaitRule { .. } => "dma-wait-rule",
            Effect::Liveness { .. } => "liveness",
        }
    }
}

/// A completion entry as compared (serde form of [`Completion`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionView {
    /// Tag.
    pub tag: u32,
    /// Raw status.
    pub status: u8,
    /// SQ slot.
    pub slot: u16,
    /// Phase bit.
    pub phase: bool,
    /// CRC result.
    pub result: u32,
    /// Bytes.
    pub bytes: u32,
}

impl From<Completion> for CompletionView {
    fn from(c: Completion) -> Self {
        CompletionView {
            tag: c.tag,
            status: c.status,
            slot: c.slot,
            phase: c.phase,
            result: c.result,
            bytes: c.bytes,
        }
    }
}

/// The first divergence of a lockstep run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// What diverged, expected (reference) vs actual (checked).
    pub effect: Effect,
    /// Index of the lockstep operation (0-based) at which it was found.
    pub op_index: u64,
    /// That operation.
    pub op: String,
    /// The operations before it, oldest first (at most
    /// [`LockstepOptions::history`]).
    pub context: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} diverged at operation {} ({}): {}",
            self.effect.kind(),
            self.op_index,
            self.op,
            serde_json::to_string(&self.effect).unwrap_or_default()
        )
    }
}

/// The error a lockstep operation returns once the sides diverged (the
/// source of the [`DeviceError::Backend`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("lockstep divergence: {0}")]
pub struct DivergenceError(pub Box<Divergence>);

/// Guest memory each side gets: one mapping, identical initial contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLayout {
    /// IOVA of the mapping.
    pub base: u64,
    /// Bytes.
    pub len: u64,
    /// Seed of the initial contents.
    pub fill_seed: u64,
    /// Memory that answers later ([`SlowMemory`]); `None`: every access
    /// completes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowSpec>,
}

/// Limits of a lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockstepOptions {
    /// Units the reference may run to settle (steps for the model).
    pub settle_units_reference: u64,
    /// Units the checked side may run to settle (cycles for the RTL).
    pub settle_units_checked: u64,
    /// Reference units the quiesce alignment may step before giving up.
    pub align_units: u64,
    /// Operations kept as context of a divergence.
    pub history: usize,
    /// Give each side fast guest memory in a shared mapping of a file (a
    /// side that reaches guest memory through the file, as the simulated
    /// board does, needs it). Slow memory stays process memory.
    pub shared_guest_memory: bool,
    /// Compare the DMA ports' dirty logs. Off when a side's DMA bypasses its
    /// port (the simulated board writes guest memory directly, as a board
    /// does through the IOMMU; its own DMA write log is still compared).
    pub port_dirty_log: bool,
}

impl Default for LockstepOptions {
    fn default() -> Self {
        LockstepOptions {
            settle_units_reference: 1 << 22,
            settle_units_checked: 1 << 26,
            align_units: 1 << 20,
            history: 24,
            shared_guest_memory: false,
            port_dirty_log: true,
        }
    }
}

/// One side: a device with its own guest memory and interrupt log.
pub struct Side<D> {
    /// The device.
    pub dev: D,
    /// Its DMA port (dirty logging on).
    pub dma: DmaPort,
    /// Its guest memory.
    pub mem: Arc<SlowMemory>,
    /// The control side of its guest memory.
    pub gate: Gate,
    /// Its interrupt messages.
    pub irq: Arc<IrqLog>,
    factory: Factory<D>,
}

impl<D: Device> Side<D> {
    fn new(
        layout: &GuestLayout,
        shared: bool,
        mut factory: Factory<D>,
    ) -> Result<Self, DeviceError> {
        let dma = DmaPort::new();
        let mem = Arc::new(match (shared, layout.slow) {
            (true, None) => SlowMemory::shared(layout.len as usize)
                .map_err(|e| backend("shared guest memory", e))?,
            _ => SlowMemory::new(layout.len as usize, layout.slow),
        });
        let gate = mem.gate();
        dma.map(layout.base, mem.clone(), Perm::RW)
            .map_err(|e| backend("guest memory mapping", e))?;
        gate.as_host(|| dma.host_write(layout.base, &fill(layout.fill_seed, layout.len as usize)))
            .map_err(|e| backend("guest memory fill", e))?;
        dma.dirty_log_start();
        let irq = Arc::new(IrqLog::new());
        let dev = factory(dma.clone(), irq.clone())?;
        Ok(Side {
            dev,
            dma,
            mem,
            gate,
            irq,
            factory,
        })
    }
}

fn backend(msg: &str, e: impl std::error::Error + Send + Sync + 'static) -> DeviceError {
    DeviceError::Backend {
        msg: msg.into(),
        source: Some(Box::new(e)),
    }
}

/// Deterministic bytes from a seed (xorshift64*).
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Interrupt view of one side: messages sent and pending bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owed {
    sent: [usize; consts::NUM_VECTORS as usize],
    pending: u32,
}

/// Two devices in lockstep; itself a [`Device`] (reads return the
/// reference's values). See the module docs.
pub struct Lockstep<A: Device, B: Device> {
    a: Side<A>,
    b: Side<B>,
    layout: GuestLayout,
    opts: LockstepOptions,
    op_index: u64,
    history: VecDeque<String>,
    aligned: bool,
    compared: u64,
    transplants: u64,
    divergence: Option<Divergence>,
}

/// BAR0 writes that do not depend on how far the device got: applied
/// without settling first.
const RACE_FREE_WRITES: [u32; 4] = [
    offsets::SQ_TAIL,
    offsets::CQ_HEAD,
    offsets::SCRATCH,
    offsets::DIRTY_SEL,
];

impl<A: Device, B: Device> Lockstep<A, B> {
    /// Builds both sides with their own guest memory (`layout`, identical
    /// contents) and interrupt logs. The factories are kept for the state
    /// transplant.
    pub fn new(
        layout: GuestLayout,
        opts: LockstepOptions,
        reference: Factory<A>,
        checked: Factory<B>,
    ) -> Result<Self, DeviceError> {
        let a = Side::new(&layout, opts.shared_guest_memory, reference)?;
        let b = Side::new(&layout, opts.shared_guest_memory, checked)?;
        let ia = a.dev.info().identity;
        let ib = b.dev.info().identity;
        if ia != ib {
            return Err(DeviceError::Device(format!(
                "lockstep sides differ in identity: {ia:?} vs {ib:?}"
            )));
        }
        Ok(Lockstep {
            a,
            b,
            layout,
            opts,
            op_index: 0,
            history: VecDeque::new(),
            aligned: true,
            compared: 0,
            transplants: 0,
            divergence: None,
        })
    }

    /// The first divergence, if any.
    pub fn divergence(&self) -> Option<&Divergence> {
        self.divergence.as_ref()
    }

    /// Lockstep operations performed.
    pub fn operations(&self) -> u64 {
        self.op_index
    }

    /// Operations after which effects were compared.
    pub fn compared(&self) -> u64 {
        self.compared
    }

    /// State transplants performed.
    pub fn transplants(&self) -> u64 {
        self.transplants
    }

    /// The reference side.
    pub fn reference(&mut self) -> &mut Side<A> {
        &mut self.a
    }

    /// The checked side.
    pub fn checked(&mut self) -> &mut Side<B> {
        &mut self.b
    }

    /// Adds a marker to the operation history (for example which scenario
    /// operation follows), shown in a divergence's context.
    pub fn note(&mut self, text: impl Into<String>) {
        self.push_history(format!("-- {}", text.into()));
    }

    fn push_history(&mut self, s: String) {
        if self.history.len() == self.opts.history {
            self.history.pop_front();
        }
        self.history.push_back(s);
    }

    fn begin(&mut self, what: impl FnOnce() -> String) -> Result<(), DeviceError> {
        if let Some(d) = &self.divergence {
            return Err(div_error(d));
        }
        let s = format!("#{} {}", self.op_index, what());
        self.push_history(s);
        self.op_index += 1;
        Ok(())
    }

    fn diverge(&mut self, effect: Effect) -> DeviceError {
        if self.divergence.is_none() {
            let mut context: Vec<String> = self.history.iter().cloned().collect();
            let op = context.pop().unwrap_or_default();
            let d = Divergence {
                effect,
                op_index: self.op_index.saturating_sub(1),
                op,
                context,
            };
            debug!(%d, "lockstep divergence");
            self.divergence = Some(d);
        }
        match &self.divergence {
            Some(d) => div_error(d),
            None => DeviceError::Device("lockstep divergence".into()),
        }
    }

    /// Compares two results: equal successes pass, equal failures return
    /// the reference's error, anything else is an [`Effect::Outcome`].
    fn pair<T>(
        &mut self,
        what: &str,
        ra: Result<T, DeviceError>,
        rb: Result<T, DeviceError>,
    ) -> Result<(T, T), DeviceError> {
        match (ra, rb) {
            (Ok(x), Ok(y)) => Ok((x, y)),
            (Err(ea), Err(eb)) if verdict(&ea) == verdict(&eb) => Err(ea),
            (ra, rb) => {
                let show = |r: &Result<T, DeviceError>| match r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => verdict(e),
                };
                let e = Effect::Outcome {
                    what: what.into(),
                    expected: show(&ra),
                    actual: show(&rb),
                };
                Err(self.diverge(e))
            }
        }
    }

    /// Writes guest memory of both sides (a host/VMM write, not logged).
    /// Racing device reads of the same bytes is the caller's business.
    pub fn host_write(&mut self, iova: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.begin(|| format!("host_write {iova:#x} +{}", data.len()))?;
        let (a, b) = (&self.a, &self.b);
        let ra = a
            .gate
            .as_host(|| a.dma.host_write(iova, data))
            .map_err(|e| backend("host write", e));
        let rb = b
            .gate
            .as_host(|| b.dma.host_write(iova, data))
            .map_err(|e| backend("host write", e));
        self.pair("host_write", ra, rb).map(|_| ())
    }

    /// Reads guest memory of the reference (both are compared at every
    /// comparison point).
    pub fn host_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let a = &self.a;
        a.gate
            .as_host(|| a.dma.host_read(iova, buf))
            .map_err(|e| backend("host read", e))
    }

    /// Both sides run until idle, then everything is compared.
    pub fn settle(&mut self) -> Result<Progress, DeviceError> {
        self.begin(|| "settle".into())?;
        self.settle_inner()
    }

    fn settle_inner(&mut self) -> Result<Progress, DeviceError> {
        let ua = self.a.dev.run_until_idle(self.opts.settle_units_reference);
        let ub = self.b.dev.run_until_idle(self.opts.settle_units_checked);
        let (ua, ub) = self.pair("run until idle", ua, ub)?;
        let ia = self.a.dev.advance(0);
        let ib = self.b.dev.advance(0);
        let (ia, ib) = self.pair("idle check", ia, ib)?;
        if !ia.idle {
            return Err(self.diverge(Effect::Liveness {
                side: SideId::Reference,
                units: ua,
            }));
        }
        if !ib.idle {
            return Err(self.diverge(Effect::Liveness {
                side: SideId::Checked,
                units: ub,
            }));
        }
        self.aligned = true;
        let q = self.both_quiesced()?;
        self.check_point(q)?;
        Ok(Progress {
            used: ua,
            idle: true,
        })
    }

    fn both_quiesced(&mut self) -> Result<bool, DeviceError> {
        let qa = self.a.dev.is_quiesced();
        let qb = self.b.dev.is_quiesced();
        let (qa, qb) = self.pair("STATUS.QUIESCED", qa, qb)?;
        if qa != qb {
            return Err(self.diverge(Effect::Outcome {
                what: "STATUS.QUIESCED".into(),
                expected: qa.to_string(),
                actual: qb.to_string(),
            }));
        }
        Ok(qa)
    }

    /// Brings both sides into the same DMA wait and issues `accesses` there
    /// (datasheet §5.3, "MMIO while a step waits for DMA"). Needs slow guest
    /// memory ([`GuestLayout::slow`]); does nothing when quiesced.
    ///
    /// The `nth` distinct DMA access from now (counted on the side that is
    /// furthest, the checked one) is held on both sides; each side runs until
    /// it waits for that access. If neither reaches it (no work), nothing
    /// happens; if only one does, that is a divergence. Then each access goes
    /// to both sides. An access §5.3 serves during the wait must be answered
    /// while the DMA stays held; any other must wait for the step, so the
    /// held access runs out of attempts ([`crate::slow::HOLD_LIMIT`]) and the
    /// step commits first. Which of the two happened is compared with the
    /// rule on both sides, and read values are compared. The first access
    /// that waits for the step ends the wait (the rest are not issued).
    pub fn dma_wait(
        &mut self,
        nth: u64,
        accesses: &[WaitAccess],
    ) -> Result<WaitReport, DeviceError> {
        self.begin(|| format!("dma_wait #{nth}, {} accesses", accesses.len()))?;
        let mut rep = WaitReport::default();
        if self.layout.slow.is_none() || self.both_quiesced()? || !self.enter_wait(nth)? {
            return Ok(rep);
        }
        rep.reached = true;
        let r = self.wait_accesses(accesses, &mut rep);
        self.a.gate.release();
        self.b.gate.release();
        r.map(|_| rep)
    }

    /// Holds the `nth` distinct DMA access from now on both sides and runs
    /// each into that wait: `true` when both wait for it, `false` (holds
    /// released) when neither reaches it; one reaching it is a divergence.
    fn enter_wait(&mut self, nth: u64) -> Result<bool, DeviceError> {
        let at = self.a.gate.accesses().max(self.b.gate.accesses()) + nth.max(1);
        self.a.gate.hold_at(at);
        self.b.gate.hold_at(at);
        let ha = self.run_to_hold(SideId::Reference)?;
        let hb = self.run_to_hold(SideId::Checked)?;
        if ha != hb {
            self.a.gate.release();
            self.b.gate.release();
            return Err(self.diverge(Effect::Outcome {
                what: format!("DMA access #{at} reached (held)"),
                expected: ha.to_string(),
                actual: hb.to_string(),
            }));
        }
        if !ha {
            self.a.gate.release();
            self.b.gate.release();
            return Ok(false);
        }
        self.aligned = false;
        Ok(true)
    }

    fn wait_accesses(
        &mut self,
        accesses: &[WaitAccess],
        rep: &mut WaitReport,
    ) -> Result<(), DeviceError> {
        for acc in accesses {
            self.push_history(format!("   during the wait: {acc}"));
            rep.accesses += 1;
            let bar = if acc.bar2 { Bar::DevMem } else { Bar::Regs };
            let len = usize::from(acc.len);
            let mut da = vec![0u8; len];
            let mut db = vec![0u8; len];
            let (ra, rb) = match acc.write {
                Some(v) => {
                    let b = &v.to_le_bytes()[..len];
                    (
                        self.a.dev.mmio_write(bar, acc.offset, b),
                        self.b.dev.mmio_write(bar, acc.offset, b),
                    )
                }
                None => (
                    self.a.dev.mmio_read(bar, acc.offset, &mut da),
                    self.b.dev.mmio_read(bar, acc.offset, &mut db),
                ),
            };
            self.pair("mmio during a DMA wait", ra, rb)?;
            self.compared += 1;
            let served = acc.served_during_wait();
            let how = |waited: bool| {
                if waited {
                    "waited for the step"
                } else {
                    "served during the wait"
                }
            };
            // A message is sent a few cycles after the cause or the unmask
            // on the RTL, at once on the model: IRQ_PENDING is timing here,
            // so it is compared as messages owed (sent + pending).
            let ip = u64::from(offsets::IRQ_PENDING);
            if acc.write.is_none()
                && !acc.bar2
                && (acc.offset..acc.offset + u64::from(acc.len)).contains(&ip)
            {
                let at = (ip - acc.offset) as usize;
                da[at..at + 4].fill(0);
                db[at..at + 4].fill(0);
                let oa = self.owed(SideId::Reference)?;
                let ob = self.owed(SideId::Checked)?;
                self.compare_owed(oa, ob, false)?;
            }
            let (wa, wb) = (self.a.gate.timed_out(), self.b.gate.timed_out());
            if wa != wb || wa == served {
                return Err(self.diverge(Effect::DmaWaitRule {
                    access: acc.to_string(),
                    rule: how(!served).into(),
                    reference: how(wa).into(),
                    checked: how(wb).into(),
                }));
            }
            if da != db {
                let word = |d: &[u8]| {
                    let mut b = [0u8; 4];
                    let n = d.len().min(4);
                    b[..n].copy_from_slice(&d[..n]);
                    u32::from_le_bytes(b)
                };
                let e = if acc.bar2 {
                    Effect::DevMemRead {
                        offset: acc.offset,
                        expected: da,
                        actual: db,
                    }
                } else {
                    let (o, x, y) = if da[..4] != db[..4] {
                        (acc.offset, word(&da), word(&db))
                    } else {
                        (acc.offset + 4, word(&da[4..]), word(&db[4..]))
                    };
                    Effect::Register {
                        name: vfpga_regs::register_at(o as u32)
                            .map_or("?", |r| r.name)
                            .into(),
                        offset: o as u32,
                        expected: x,
                        actual: y,
                    }
                };
                return Err(self.diverge(e));
            }
            if !served {
                break;
            }
        }
        Ok(())
    }

    /// Runs one side until it waits for its held DMA access (`true`) or has
    /// nothing left to do (`false`).
    fn run_to_hold(&mut self, side: SideId) -> Result<bool, DeviceError> {
        let (limit, chunk) = match side {
            SideId::Reference => (self.opts.settle_units_reference, 1),
            SideId::Checked => (self.opts.settle_units_checked, 64),
        };
        let held = |ls: &Self| match side {
            SideId::Reference => ls.a.gate.is_held(),
            SideId::Checked => ls.b.gate.is_held(),
        };
        let mut units = 0u64;
        let mut calls = 0u64;
        loop {
            if held(self) {
                return Ok(true);
            }
            let p = match side {
                SideId::Reference => self.a.dev.advance(chunk)?,
                SideId::Checked => self.b.dev.advance(chunk)?,
            };
            units += p.used;
            calls += 1;
            if held(self) {
                return Ok(true);
            }
            if p.idle {
                return Ok(false);
            }
            if units > limit || calls > limit {
                return Err(self.diverge(Effect::Liveness { side, units }));
            }
        }
    }

    /// Advances only the checked side by `units` (cycles for the RTL): the
    /// reference catches up at the next settle or quiesce.
    pub fn run_checked(&mut self, units: u64) -> Result<Progress, DeviceError> {
        self.begin(|| format!("run_checked {units}"))?;
        let p = self.b.dev.advance(units)?;
        if p.used > 0 {
            self.aligned = false;
        }
        Ok(p)
    }

    fn owed(&mut self, side: SideId) -> Result<Owed, DeviceError> {
        let (pending, log) = match side {
            SideId::Reference => (self.a.dev.read_reg(offsets::IRQ_PENDING)?, &self.a.irq),
            SideId::Checked => (self.b.dev.read_reg(offsets::IRQ_PENDING)?, &self.b.irq),
        };
        let mut sent = [0; consts::NUM_VECTORS as usize];
        for (v, s) in sent.iter_mut().enumerate() {
            *s = log.count(v as u16);
        }
        Ok(Owed { sent, pending })
    }

    fn compare_owed(&mut self, oa: Owed, ob: Owed, raw_pending: bool) -> Result<(), DeviceError> {
        for v in 0..consts::NUM_VECTORS as usize {
            let pa = oa.pending >> v & 1 != 0;
            let pb = ob.pending >> v & 1 != 0;
            let differs = oa.sent[v] + usize::from(pa) != ob.sent[v] + usize::from(pb)
                || (raw_pending && pa != pb);
            if differs {
                return Err(self.diverge(Effect::Interrupts {
                    vector: v as u16,
                    expected_sent: oa.sent[v],
                    expected_pending: pa,
                    actual_sent: ob.sent[v],
                    actual_pending: pb,
                }));
            }
        }
        Ok(())
    }

    /// Compares everything visible at an aligned point.
    fn check_point(&mut self, quiesced: bool) -> Result<(), DeviceError> {
        self.compared += 1;
        // Registers without read side effects.
        for r in vfpga_regs::REGISTERS {
            let skip = matches!(r.access, Access::Rc | Access::Wo)
                || [
                    offsets::TIMER_LO,
                    offsets::TIMER_HI,
                    offsets::STATE_DATA,
                    offsets::IRQ_PENDING,
                ]
                .contains(&r.offset);
            if skip {
                continue;
            }
            let va = self.a.dev.read_reg(r.offset);
            let vb = self.b.dev.read_reg(r.offset);
            let (va, vb) = self.pair(r.name, va, vb)?;
            if va != vb {
                return Err(self.diverge(Effect::Register {
                    name: r.name.into(),
                    offset: r.offset,
                    expected: va,
                    actual: vb,
                }));
            }
        }
        let oa = self.owed(SideId::Reference)?;
        let ob = self.owed(SideId::Checked)?;
        self.compare_owed(oa, ob, !quiesced)?;
        self.compare_guest_memory()?;
        let la = self.a.dma.dirty_log_take();
        let lb = self.b.dma.dirty_log_take();
        if self.opts.port_dirty_log && la != lb {
            return Err(self.diverge(Effect::GuestDirtyLog {
                expected: la,
                actual: lb,
            }));
        }
        let n = self.a.dev.info().bar2_size as usize;
        let mut da = vec![0u8; n];
        let mut db = vec![0u8; n];
        let ra = self.a.dev.devmem_read(0, &mut da);
        let rb = self.b.dev.devmem_read(0, &mut db);
        self.pair("device memory read", ra, rb)?;
        if let Some(i) = first_diff(&da, &db) {
            let o = i & !15;
            let e = (o + 16).min(n);
            return Err(self.diverge(Effect::DevMem {
                offset: o as u64,
                expected: da[o..e].to_vec(),
                actual: db[o..e].to_vec(),
            }));
        }
        if quiesced {
            let sa = self.a.dev.save_state();
            let sb = self.b.dev.save_state();
            let (sa, sb) = self.pair("save_state", sa, sb)?;
            let words = word_diffs(&sa, &sb);
            if !words.is_empty() {
                return Err(self.diverge(Effect::State { words }));
            }
        }
        Ok(())
    }

    fn compare_guest_memory(&mut self) -> Result<(), DeviceError> {
        let ma = self.a.mem.snapshot();
        let mb = self.b.mem.snapshot();
        let Some(i) = first_diff(&ma, &mb) else {
            return Ok(());
        };
        let iova = self.layout.base + i as u64;
        // Inside the completion ring? Report the entry.
        let cq_base = u64::from(self.a.dev.read_reg(offsets::CQ_BASE_LO)?)
            | (u64::from(self.a.dev.read_reg(offsets::CQ_BASE_HI)?) << 32);
        let cq_size = u64::from(self.a.dev.read_reg(offsets::CQ_SIZE)?);
        let cs = cpl::SIZE as u64;
        if cq_size > 0 && iova >= cq_base && iova < cq_base + cq_size * cs {
            let index = (iova - cq_base) / cs;
            let at = (cq_base + index * cs - self.layout.base) as usize;
            if at + cpl::SIZE <= ma.len() {
                let mut ea = [0u8; cpl::SIZE];
                let mut eb = [0u8; cpl::SIZE];
                ea.copy_from_slice(&ma[at..at + cpl::SIZE]);
                eb.copy_from_slice(&mb[at..at + cpl::SIZE]);
                return Err(self.diverge(Effect::Completion {
                    index: index as u32,
                    expected: Completion::from_bytes(&ea).into(),
                    actual: Completion::from_bytes(&eb).into(),
                }));
            }
        }
        let o = i & !15;
        let e = (o + 16).min(ma.len());
        Err(self.diverge(Effect::GuestMemory {
            iova: self.layout.base + o as u64,
            expected: ma[o..e].to_vec(),
            actual: mb[o..e].to_vec(),
        }))
    }

    /// Normalised state of a side for the quiesce alignment: untimed words
    /// with `IRQ_PENDING` folded into the owed messages.
    fn align_view(&mut self, side: SideId) -> Result<([u32; sw::WORDS], [usize; 2]), DeviceError> {
        let s = match side {
            SideId::Reference => self.a.dev.save_state()?,
            SideId::Checked => self.b.dev.save_state()?,
        };
        let mut w = comparable_words(&s);
        w[sw::IRQ_PENDING] = 0;
        let o = self.owed(side)?;
        let mut owed = [0usize; 2];
        for (v, x) in owed.iter_mut().enumerate() {
            *x = o.sent[v] + (o.pending >> v & 1) as usize;
        }
        Ok((w, owed))
    }

    /// Steps the reference until its state equals the quiesced checked
    /// side's. Both end quiesced.
    fn align_reference(&mut self) -> Result<(), DeviceError> {
        let (want, want_owed) = self.align_view(SideId::Checked)?;
        let mut units = 0u64;
        let mut best: Option<Vec<WordDiff>> = None;
        loop {
            self.a.dev.quiesce()?;
            let (got, got_owed) = self.align_view(SideId::Reference)?;
            if got == want && got_owed == want_owed {
                return Ok(());
            }
            let diffs = raw_diffs(&got, &want);
            if best.as_ref().is_none_or(|b| diffs.len() <= b.len()) {
                best = Some(diffs);
            }
            self.a.dev.resume()?;
            let p = self.a.dev.advance(0)?;
            if p.idle || units >= self.opts.align_units {
                // No step left: B stopped where A never is.
                self.a.dev.quiesce()?;
                return Err(self.diverge(Effect::QuiescePoint {
                    units_searched: units,
                    words: best.unwrap_or_default(),
                }));
            }
            let p = self.a.dev.advance(1)?;
            units += p.used.max(1);
        }
    }

    /// Finds the difference of two states as compared (timing words aside,
    /// `IRQ_PENDING` aside: it is compared as owed messages).
    pub fn state_diffs(a: &DeviceState, b: &DeviceState) -> Vec<WordDiff> {
        word_diffs(a, b)
    }

    /// Saves the state of `from`, restores it with its device memory into a
    /// fresh instance of the other side's kind, which replaces that side.
    /// Quiesces (and aligns) first; both sides end quiesced. A state the
    /// fresh instance refuses is a divergence.
    pub fn transplant(&mut self, direction: Transplant) -> Result<(), DeviceError> {
        self.quiesce()?;
        self.begin(|| format!("transplant {direction:?}"))?;
        let n = self.a.dev.info().bar2_size as usize;
        let mut dm = vec![0u8; n];
        let state = match direction {
            Transplant::ReferenceToChecked => {
                self.a.dev.devmem_read(0, &mut dm)?;
                self.a.dev.save_state()?
            }
            Transplant::CheckedToReference => {
                self.b.dev.devmem_read(0, &mut dm)?;
                self.b.dev.save_state()?
            }
        };
        // The DMA-log window of the surviving side, to program on the new one.
        let log = [
            offsets::DMALOG_BASE_LO,
            offsets::DMALOG_BASE_HI,
            offsets::DMALOG_PAGES,
        ];
        let mut window = [0u32; 3];
        for (w, o) in window.iter_mut().zip(log) {
            *w = self.a.dev.read_reg(o)?;
        }
        let log_on =
            self.a.dev.read_reg(offsets::DMALOG_CTRL)? & vfpga_regs::DmalogCtrl::ENABLE.bits() != 0;
        // The DMA rate limit is host policy, not state: carried over too.
        let throttle = self.a.dev.read_reg(offsets::DMA_THROTTLE)?;
        let refused = |e: DeviceError| Effect::TransplantRefused {
            direction,
            error: verdict(&e),
        };
        match direction {
            Transplant::ReferenceToChecked => {
                let mut fresh = (self.b.factory)(self.b.dma.clone(), self.b.irq.clone())?;
                if let Err(e) = install(&mut fresh, &dm, &state) {
                    return Err(self.diverge(refused(e)));
                }
                self.b.dev = fresh;
            }
            Transplant::CheckedToReference => {
                let mut fresh = (self.a.factory)(self.a.dma.clone(), self.a.irq.clone())?;
                if let Err(e) = install(&mut fresh, &dm, &state) {
                    return Err(self.diverge(refused(e)));
                }
                self.a.dev = fresh;
            }
        }
        self.transplants += 1;
        // Host-side machinery (not state): the same on both sides again, as
        // a VMM re-programs it on a destination.
        resync_machinery(&mut self.a.dev, window, log_on, throttle)?;
        resync_machinery(&mut self.b.dev, window, log_on, throttle)?;
        self.aligned = true;
        self.check_point(true)
    }
}

impl<A: Device + SideDevice, B: Device + SideDevice> Lockstep<A, B> {
    /// Hardware reset of both sides (the core's reset input; the model's
    /// power-on state) at the point where they are. Settles both first
    /// unless they are already at the same point (settled or quiesced and
    /// aligned), then resets and compares everything.
    pub fn hardware_reset(&mut self) -> Result<(), DeviceError> {
        self.begin(|| "hardware reset".into())?;
        if !self.aligned {
            self.settle_inner()?;
        }
        self.reset_both()
    }

    /// Hardware reset in the middle of a step: both sides are brought into
    /// the same DMA wait (as [`Lockstep::dma_wait`]) and reset there, the
    /// held access abandoned. Returns whether the wait was reached (when
    /// not, nothing happens).
    pub fn reset_in_dma_wait(&mut self, nth: u64) -> Result<bool, DeviceError> {
        self.begin(|| format!("hardware reset in DMA wait #{nth}"))?;
        if self.layout.slow.is_none() || self.both_quiesced()? || !self.enter_wait(nth)? {
            return Ok(false);
        }
        self.reset_both()?;
        Ok(true)
    }

    /// Back-to-back MMIO: both sides settle (so the engine is idle and
    /// only the accesses' own ordering matters), then the reference takes
    /// `accesses` one by one and the checked side back to back on its port
    /// (each presented `gap` cycles after the previous one was accepted,
    /// before its response where the port allows). Every read is compared.
    /// Typical: a BAR2 write followed at once by the `DIRTY_BITS` read of
    /// its page's group.
    pub fn back_to_back(&mut self, accesses: &[(WaitAccess, u32)]) -> Result<(), DeviceError> {
        self.begin(|| format!("back-to-back, {} accesses", accesses.len()))?;
        if !self.aligned && !self.both_quiesced()? {
            self.settle_inner()?;
        }
        for (a, gap) in accesses {
            self.push_history(format!("   then after {gap} cycles: {a}"));
        }
        let ra = self.a.dev.mmio_back_to_back(accesses);
        let rb = self.b.dev.mmio_back_to_back(accesses);
        let (va, vb) = self.pair("back-to-back MMIO", ra, rb)?;
        self.compare_reads(accesses, &va, &vb)?;
        if !self.both_quiesced()? {
            self.aligned = false;
        }
        Ok(())
    }

    /// A hardware reset of both sides followed at once by `accesses` back
    /// to back ([`SideDevice::reset_then`]): on the RTL they are presented
    /// from the cycle the reset is released and meet the post-reset bitmap
    /// sweep (a bitmap read that overtook it would return stale bits). Every
    /// read is compared, then both settle and everything is compared.
    pub fn reset_then(&mut self, accesses: &[(WaitAccess, u32)]) -> Result<(), DeviceError> {
        self.begin(|| format!("hardware reset, then {} accesses", accesses.len()))?;
        if !self.aligned {
            self.settle_inner()?;
        }
        for (a, gap) in accesses {
            self.push_history(format!("   then after {gap} cycles: {a}"));
        }
        let ra = self.a.dev.reset_then(accesses);
        let rb = self.b.dev.reset_then(accesses);
        self.a.gate.abandon();
        self.b.gate.abandon();
        let (va, vb) = self.pair("hardware reset, then MMIO", ra, rb)?;
        self.compare_reads(accesses, &va, &vb)?;
        self.aligned = false;
        self.settle_inner().map(|_| ())
    }

    /// Compares the bytes each read of `accesses` returned on the two sides.
    fn compare_reads(
        &mut self,
        accesses: &[(WaitAccess, u32)],
        va: &[Vec<u8>],
        vb: &[Vec<u8>],
    ) -> Result<(), DeviceError> {
        self.compared += 1;
        for (((a, _), x), y) in accesses.iter().zip(va).zip(vb) {
            if x != y {
                let word = |d: &[u8]| {
                    let mut b = [0u8; 4];
                    let n = d.len().min(4);
                    b[..n].copy_from_slice(&d[..n]);
                    u32::from_le_bytes(b)
                };
                let e = if a.bar2 {
                    Effect::DevMemRead {
                        offset: a.offset,
                        expected: x.clone(),
                        actual: y.clone(),
                    }
                } else {
                    Effect::Register {
                        name: vfpga_regs::register_at(a.offset as u32)
                            .map_or("?", |r| r.name)
                            .into(),
                        offset: a.offset as u32,
                        expected: word(x),
                        actual: word(y),
                    }
                };
                return Err(self.diverge(e));
            }
        }
        Ok(())
    }

    /// The checked side's INTx pin against the datasheet (§4: asserted
    /// while `(IRQ_STATUS & ~IRQ_MASK) != 0` and the device is not
    /// quiesced), from that side's own registers, read while it is idle (so
    /// they cannot change under the reads). Nothing where the side has no
    /// pin ([`SideDevice::intx_idle`]) or is busy. The pin is not a register:
    /// the register comparisons do not see it.
    pub fn check_intx(&mut self) -> Result<(), DeviceError> {
        let Some((pin, true)) = self.b.dev.intx_idle()? else {
            return Ok(());
        };
        let st = self.b.dev.read_reg(offsets::IRQ_STATUS)?;
        let mask = self.b.dev.read_reg(offsets::IRQ_MASK)?;
        let status = Status::from_bits_retain(self.b.dev.read_reg(offsets::STATUS)?);
        let want = st & !mask & 0x3 != 0 && !status.contains(Status::QUIESCED);
        if pin != want {
            return Err(self.diverge(Effect::Outcome {
                what: format!(
                    "INTx level (IRQ_STATUS {st:#x}, IRQ_MASK {mask:#x}, STATUS {:#x})",
                    status.bits()
                ),
                expected: want.to_string(),
                actual: pin.to_string(),
            }));
        }
        Ok(())
    }

    /// Records an outcome divergence found by a check outside the
    /// comparisons (a bound from the datasheet on the checked side) and
    /// returns the error that ends the scenario.
    pub fn diverge_outcome(&mut self, what: &str, expected: String, actual: String) -> DeviceError {
        self.diverge(Effect::Outcome {
            what: what.into(),
            expected,
            actual,
        })
    }

    /// Clock cycles the checked side has run, where it counts them
    /// ([`SideDevice::cycles`]).
    pub fn checked_cycles(&mut self) -> Result<Option<u64>, DeviceError> {
        self.b.dev.cycles()
    }

    /// The checked side's `TIMER` right after a (soft or hardware) reset
    /// that began at cycle `since` of that side: the reset clears the timer
    /// and the `TIMER_HI` latch (datasheet §8), and the timer counts one per
    /// cycle while not quiesced. So `TIMER_HI` read before `TIMER_LO` is 0,
    /// and `TIMER` (`TIMER_LO`, which latches `TIMER_HI`, then `TIMER_HI`)
    /// is at most the cycles run since. Checked only where the side counts
    /// its cycles (the RTL); timing registers are not compared between the
    /// sides.
    pub fn check_timer_since(&mut self, since: Option<u64>) -> Result<(), DeviceError> {
        let Some(since) = since else {
            return Ok(());
        };
        let latch = self.b.dev.read_reg(offsets::TIMER_HI)?;
        let lo = self.b.dev.read_reg(offsets::TIMER_LO)?;
        let hi = self.b.dev.read_reg(offsets::TIMER_HI)?;
        let Some(now) = self.b.dev.cycles()? else {
            return Ok(());
        };
        let t = (u64::from(hi) << 32) | u64::from(lo);
        let bound = now.saturating_sub(since);
        if latch != 0 || t > bound {
            return Err(self.diverge(Effect::Outcome {
                what: "TIMER_HI latch, TIMER after a reset".into(),
                expected: format!("0, at most {bound}"),
                actual: format!("{latch:#x}, {t}"),
            }));
        }
        Ok(())
    }

    /// While both sides are quiesced: restores their saved state with the
    /// timer words set to `timer` on both (timing words: never validated,
    /// never compared), then checks on the checked side, where it counts
    /// its cycles, that `TIMER_LO` and then `TIMER_HI` (latched by the
    /// `TIMER_LO` read) read exactly `timer`: a quiesced timer stands still
    /// (datasheet §8). Nothing when a side is not quiesced.
    pub fn check_timer_restore(&mut self, timer: u64) -> Result<(), DeviceError> {
        if !self.both_quiesced()? {
            return Ok(());
        }
        let mut st = self.save_state()?;
        let mut w = st.arch.to_words();
        w[sw::TIMER_LO] = timer as u32;
        w[sw::TIMER_HI] = (timer >> 32) as u32;
        st.arch = vfpga_regs::ArchState::from_words(&w);
        self.restore_state(&st)?;
        if self.b.dev.cycles()?.is_none() {
            return Ok(());
        }
        let lo = self.b.dev.read_reg(offsets::TIMER_LO)?;
        let hi = self.b.dev.read_reg(offsets::TIMER_HI)?;
        let got = (u64::from(hi) << 32) | u64::from(lo);
        if got != timer {
            return Err(self.diverge(Effect::Outcome {
                what: "TIMER_LO, then TIMER_HI, of a restored quiesced timer".into(),
                expected: format!("{timer:#x}"),
                actual: format!("{got:#x}"),
            }));
        }
        Ok(())
    }

    /// Raw port accesses ([`RawAccess`]) from a settled point: the checked
    /// side takes each on its MMIO port as it is, the reference answers what
    /// the datasheet says ([`RawAccess::datasheet_answer`]); every answer
    /// is compared (reads and the 0 of writes). A pair where a side cannot
    /// present raw requests ([`SideDevice::raw_access`] gives `None`)
    /// skips the rest. Returns how many were compared.
    pub fn raw_port(&mut self, accesses: &[RawAccess]) -> Result<u64, DeviceError> {
        self.begin(|| format!("raw port, {} accesses", accesses.len()))?;
        if !self.aligned && !self.both_quiesced()? {
            self.settle_inner()?;
        }
        let mut n = 0;
        for a in accesses {
            self.push_history(format!("   {a}"));
            let ra = self.a.dev.raw_access(a);
            let rb = self.b.dev.raw_access(a);
            let (va, vb) = self.pair("raw port access", ra, rb)?;
            let (Some(x), Some(y)) = (va, vb) else {
                break;
            };
            self.compared += 1;
            n += 1;
            if x != y {
                return Err(self.diverge(Effect::Outcome {
                    what: a.to_string(),
                    expected: format!("{x:#018x}"),
                    actual: format!("{y:#018x}"),
                }));
            }
        }
        if !self.both_quiesced()? {
            self.aligned = false;
        }
        Ok(n)
    }

    /// MMIO racing a running burst's bitmap marks: from a settled point,
    /// `accesses` go back to back to both sides, the first normally the
    /// `SQ_TAIL` doorbell of descriptors already in the ring. The checked
    /// side (the RTL) runs its engine while it takes them, so its
    /// `DIRTY_BITS`/`DMALOG_BITS` read-and-clear lands in the same cycles as
    /// the burst's marks; the reference takes them all before its first
    /// step. Then both settle and both bitmaps are drained.
    ///
    /// What a read returns here is timing, but where a page's mark is
    /// reported is not: for each bitmap and side, the pages the racing reads
    /// returned plus the pages the drain finds must be the same set on both
    /// sides (a mark is never lost, never invented). Each bitmap read is
    /// attributed to its group by the select register, whose value is
    /// timing-independent (only the accesses move it) and is tracked here
    /// and compared whenever read. Reads of `DIRTY_SEL`, `DMALOG_SEL`,
    /// `SCRATCH` and BAR2 are compared as they are (the caller keeps the
    /// racing DMA off the BAR2 bytes accessed); other accesses are refused.
    /// Returns what raced (all 0 when both sides are quiesced: nothing is
    /// done).
    pub fn racing_burst(
        &mut self,
        accesses: &[(WaitAccess, u32)],
    ) -> Result<RaceReport, DeviceError> {
        self.begin(|| format!("racing burst, {} accesses", accesses.len()))?;
        for (a, _) in accesses {
            if !racing_access_ok(a) {
                return Err(DeviceError::Device(format!(
                    "racing burst: {a} is not an access whose result is timing-independent"
                )));
            }
        }
        if self.both_quiesced()? {
            return Ok(RaceReport::default());
        }
        if !self.aligned {
            self.settle_inner()?;
        }
        for (a, gap) in accesses {
            self.push_history(format!("   racing, after {gap} cycles: {a}"));
        }
        let groups = (self.a.dev.info().bar2_size / u64::from(consts::PAGE_SIZE) / 32).max(1);
        let log_pages = self.a.dev.read_reg(offsets::DMALOG_PAGES)?;
        let log_groups = u64::from(log_pages.div_ceil(32));
        let sel0 = (
            u64::from(self.a.dev.read_reg(offsets::DIRTY_SEL)?),
            u64::from(self.a.dev.read_reg(offsets::DMALOG_SEL)?),
        );
        let ra = self.a.dev.mmio_back_to_back(accesses);
        let rb = self.b.dev.mmio_back_to_back(accesses);
        let (va, vb) = self.pair("racing MMIO", ra, rb)?;
        self.compared += 1;
        let mut reads = 0u64;
        let mut sides: [RaceMarks; 2] = Default::default();
        for (side, vals) in sides.iter_mut().zip([&va, &vb]) {
            let (mut dsel, mut lsel) = sel0;
            for ((a, _), v) in accesses.iter().zip(vals.iter()) {
                let word = |at: usize| -> u64 {
                    let mut b = [0u8; 4];
                    let n = v.len().saturating_sub(at).min(4);
                    b[..n].copy_from_slice(&v[at..at + n]);
                    u64::from(u32::from_le_bytes(b))
                };
                if a.bar2 {
                    continue;
                }
                // Each 32-bit half in order, as the device takes them.
                let halves = if a.len == 8 { 2 } else { 1 };
                for h in 0..halves {
                    let o = a.offset + 4 * h;
                    let val = a.write.map(|w| (w >> (32 * h)) & 0xffff_ffff);
                    let got = word(4 * h as usize);
                    match (o, val) {
                        (o, Some(w)) if o == u64::from(offsets::DIRTY_SEL) => dsel = w % groups,
                        (o, Some(w)) if o == u64::from(offsets::DMALOG_SEL) => lsel = w,
                        (o, None) if o == u64::from(offsets::DIRTY_SEL) => {
                            side.sel.push(("DIRTY_SEL", o, dsel, got));
                        }
                        (o, None) if o == u64::from(offsets::DMALOG_SEL) => {
                            side.sel.push(("DMALOG_SEL", o, lsel, got));
                        }
                        (o, None) if o == u64::from(offsets::DIRTY_BITS) => {
                            let g = dsel % groups;
                            dsel = (g + 1) % groups;
                            side.dirty.extend(group_pages(g, got));
                            side.reads += 1;
                        }
                        (o, None) if o == u64::from(offsets::DMALOG_BITS) => {
                            if lsel >= log_groups {
                                lsel = 0;
                            } else {
                                side.log.extend(group_pages(lsel, got));
                                lsel = if lsel + 1 == log_groups { 0 } else { lsel + 1 };
                            }
                            side.reads += 1;
                        }
                        _ => {}
                    }
                }
            }
            reads = side.reads;
        }
        // Directly comparable reads: select registers (also against the
        // tracked value, which attributes the bitmap reads), SCRATCH, BAR2.
        for (i, (((a, _), x), y)) in accesses.iter().zip(&va).zip(&vb).enumerate() {
            let bitmap =
                !a.bar2 && (a.offset..a.offset + u64::from(a.len)).any(|o| is_read_clear(o & !3));
            if a.write.is_none() && !bitmap && x != y {
                let e = if a.bar2 {
                    Effect::DevMemRead {
                        offset: a.offset,
                        expected: x.clone(),
                        actual: y.clone(),
                    }
                } else {
                    Effect::Register {
                        name: vfpga_regs::register_at(a.offset as u32)
                            .map_or("?", |r| r.name)
                            .into(),
                        offset: a.offset as u32,
                        expected: le_word(x),
                        actual: le_word(y),
                    }
                };
                self.push_history(format!("   (racing access {i})"));
                return Err(self.diverge(e));
            }
        }
        for (side, id) in sides.iter().zip([SideId::Reference, SideId::Checked]) {
            // Expected: where the accesses alone put the select register.
            if let Some(&(name, o, want, got)) = side.sel.iter().find(|(_, _, w, g)| w != g) {
                self.push_history(format!(
                    "   {name} read on the {id:?} side vs where the racing accesses put it"
                ));
                return Err(self.diverge(Effect::Register {
                    name: name.into(),
                    offset: o as u32,
                    expected: want as u32,
                    actual: got as u32,
                }));
            }
        }
        self.aligned = false;
        self.settle_inner()?;
        let da = self.a.dev.take_dirty_pages();
        let db = self.b.dev.take_dirty_pages();
        let (da, db) = self.pair("take_dirty_pages after the race", da, db)?;
        let la = self.a.dev.dma_log_take();
        let lb = self.b.dev.dma_log_take();
        let (la, lb) = self.pair("dma_log_take after the race", la, lb)?;
        let [mut ma, mut mb] = sides;
        // The reference reads before its first step: pages only the checked
        // side's racing reads returned were marked by the burst meanwhile.
        let mid_burst =
            (mb.dirty.difference(&ma.dirty).count() + mb.log.difference(&ma.log).count()) as u64;
        ma.dirty.extend(bitmap_pages(&da));
        mb.dirty.extend(bitmap_pages(&db));
        ma.log.extend(bitmap_pages(&la.0));
        mb.log.extend(bitmap_pages(&lb.0));
        self.compared += 1;
        if ma.dirty != mb.dirty {
            return Err(self.diverge(Effect::DirtyBitmap {
                expected: ma.dirty.into_iter().collect(),
                actual: mb.dirty.into_iter().collect(),
            }));
        }
        if ma.log != mb.log || la.1 != lb.1 {
            return Err(self.diverge(Effect::DmaLog {
                expected: (ma.log.into_iter().collect(), la.1),
                actual: (mb.log.into_iter().collect(), lb.1),
            }));
        }
        Ok(RaceReport {
            bitmap_reads: reads,
            marks_mid_burst: mid_burst,
        })
    }

    fn reset_both(&mut self) -> Result<(), DeviceError> {
        let ra = self.a.dev.hardware_reset();
        let rb = self.b.dev.hardware_reset();
        self.a.gate.abandon();
        self.b.gate.abandon();
        self.pair("hardware reset", ra, rb)?;
        self.aligned = true;
        self.check_point(false)
    }
}

/// Restores `dm` and `state` into a fresh device (quiesced first).
fn install<D: Device>(dev: &mut D, dm: &[u8], state: &DeviceState) -> Result<(), DeviceError> {
    dev.quiesce()?;
    dev.devmem_write(0, dm)?;
    dev.restore_state(state)
}

fn resync_machinery<D: Device>(
    dev: &mut D,
    window: [u32; 3],
    log_on: bool,
    throttle: u32,
) -> Result<(), DeviceError> {
    dev.take_dirty_pages()?;
    dev.write_reg(offsets::DMA_THROTTLE, throttle)?;
    // Off, and the sticky OVERFLOW cleared (write 1 to clear).
    dev.write_reg(
        offsets::DMALOG_CTRL,
        vfpga_regs::DmalogCtrl::OVERFLOW.bits(),
    )?;
    dev.write_reg(offsets::DMALOG_BASE_LO, window[0])?;
    dev.write_reg(offsets::DMALOG_BASE_HI, window[1])?;
    dev.write_reg(offsets::DMALOG_PAGES, window[2])?;
    // A 0->1 edge of ENABLE clears the log bitmap (left over bits of the
    // surviving side would otherwise differ from the fresh one's).
    dev.write_reg(offsets::DMALOG_CTRL, vfpga_regs::DmalogCtrl::ENABLE.bits())?;
    if !log_on {
        dev.write_reg(offsets::DMALOG_CTRL, 0)?;
    }
    dev.write_reg(offsets::DIRTY_SEL, 0)?;
    dev.write_reg(offsets::DMALOG_SEL, 0)?;
    dev.write_reg(offsets::STATE_IDX, 0)
}

fn div_error(d: &Divergence) -> DeviceError {
    DeviceError::Backend {
        msg: d.to_string(),
        source: Some(Box::new(DivergenceError(Box::new(d.clone())))),
    }
}

/// How an error is compared between the sides: a state refusal by its
/// verdict, anything else by its message.
fn verdict(e: &DeviceError) -> String {
    match e {
        DeviceError::StateRejected(v) => format!("refused: {v}"),
        other => other.to_string(),
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(Some(a.len().min(b.len())))
}

/// State words as compared: timing words zeroed.
fn comparable_words(s: &DeviceState) -> [u32; sw::WORDS] {
    let mut w = s.arch.to_words();
    for (x, d) in w.iter_mut().zip(STATE_LAYOUT.iter()) {
        if d.timing {
            *x = 0;
        }
    }
    w
}

fn raw_diffs(a: &[u32; sw::WORDS], b: &[u32; sw::WORDS]) -> Vec<WordDiff> {
    (0..sw::WORDS)
        .filter(|&i| a[i] != b[i])
        .map(|i| WordDiff {
            index: i,
            name: STATE_LAYOUT[i].name.into(),
            expected: a[i],
            actual: b[i],
        })
        .collect()
}

/// Differences at a quiesce point: timing words and `IRQ_PENDING` aside
/// (messages owed are compared separately).
fn word_diffs(a: &DeviceState, b: &DeviceState) -> Vec<WordDiff> {
    let mut wa = comparable_words(a);
    let mut wb = comparable_words(b);
    wa[sw::IRQ_PENDING] = 0;
    wb[sw::IRQ_PENDING] = 0;
    raw_diffs(&wa, &wb)
}

fn is_race_free_write(offset: u64) -> bool {
    RACE_FREE_WRITES.iter().any(|&o| u64::from(o) == offset)
}

fn is_read_clear(offset: u64) -> bool {
    offset == u64::from(offsets::DIRTY_BITS) || offset == u64::from(offsets::DMALOG_BITS)
}

/// What one side's racing accesses reported: pages per bitmap (as sets:
/// a page may be reported by a racing read and again by the drain when the
/// burst marked it again after the read), select-register reads (name,
/// offset, tracked value, value read), bitmap reads.
#[derive(Default)]
struct RaceMarks {
    dirty: std::collections::BTreeSet<u32>,
    log: std::collections::BTreeSet<u32>,
    sel: Vec<(&'static str, u64, u64, u64)>,
    reads: u64,
}

/// Accesses [`Lockstep::racing_burst`] takes: writes of `SQ_TAIL`,
/// `DIRTY_SEL`, `DMALOG_SEL`, `SCRATCH` and BAR2; reads of `DIRTY_SEL`,
/// `DIRTY_BITS`, `DMALOG_SEL`, `DMALOG_BITS`, `SCRATCH` and BAR2 (a 64-bit
/// BAR0 access: both halves must qualify).
fn racing_access_ok(a: &WaitAccess) -> bool {
    if a.bar2 {
        return a.len > 0 && a.offset % 8 + u64::from(a.len) <= 8;
    }
    if !(a.len == 4 || (a.len == 8 && a.offset.is_multiple_of(8))) || !a.offset.is_multiple_of(4) {
        return false;
    }
    let ok: &[u32] = if a.write.is_some() {
        &[
            offsets::SQ_TAIL,
            offsets::DIRTY_SEL,
            offsets::DMALOG_SEL,
            offsets::SCRATCH,
        ]
    } else {
        &[
            offsets::DIRTY_SEL,
            offsets::DIRTY_BITS,
            offsets::DMALOG_SEL,
            offsets::DMALOG_BITS,
            offsets::SCRATCH,
        ]
    };
    (0..u64::from(a.len / 4)).all(|h| ok.iter().any(|&o| u64::from(o) == a.offset + 4 * h))
}

/// Pages of bitmap group `g` whose bits are set in `bits`.
fn group_pages(g: u64, bits: u64) -> impl Iterator<Item = u32> {
    (0..32u64)
        .filter(move |b| bits >> b & 1 != 0)
        .map(move |b| (g * 32 + b) as u32)
}

/// The first 32-bit word of `d` (zero-padded).
fn le_word(d: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = d.len().min(4);
    b[..n].copy_from_slice(&d[..n]);
    u32::from_le_bytes(b)
}

fn is_timing_reg(offset: u64) -> bool {
    offset == u64::from(offsets::TIMER_LO) || offset == u64::from(offsets::TIMER_HI)
}

fn bitmap_pages(words: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for b in 0..64 {
            if w >> b & 1 != 0 {
                out.push((i * 64 + b) as u32);
            }
        }
    }
    out
}

impl<A: Device, B: Device> Device for Lockstep<A, B> {
    fn info(&self) -> DeviceInfo {
        self.a.dev.info()
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.begin(|| format!("read {bar:?} {offset:#x} ({} bytes)", data.len()))?;
        if bar == Bar::Regs && is_read_clear(offset) && !self.aligned {
            self.settle_inner()?;
        }
        let mut other = vec![0u8; data.len()];
        let ra = self.a.dev.mmio_read(bar, offset, data);
        let rb = self.b.dev.mmio_read(bar, offset, &mut other);
        self.pair("mmio read", ra, rb)?;
        let quiesced_pending = bar == Bar::Regs
            && offset == u64::from(offsets::IRQ_PENDING)
            && self.a.dev.status()?.contains(Status::QUIESCED);
        let compare =
            self.aligned && !(bar == Bar::Regs && is_timing_reg(offset)) && !quiesced_pending;
        if compare {
            self.compared += 1;
            if data != other.as_slice() {
                let e = match bar {
                    Bar::Regs => {
                        let word = |d: &[u8]| {
                            let mut b = [0u8; 4];
                            let n = d.len().min(4);
                            b[..n].copy_from_slice(&d[..n]);
                            u32::from_le_bytes(b)
                        };
                        Effect::Register {
                            name: vfpga_regs::register_at(offset as u32)
                                .map_or("?", |r| r.name)
                                .into(),
                            offset: offset as u32,
                            expected: word(data),
                            actual: word(&other),
                        }
                    }
                    Bar::DevMem => Effect::DevMemRead {
                        offset,
                        expected: data.to_vec(),
                        actual: other,
                    },
                };
                return Err(self.diverge(e));
            }
        }
        Ok(())
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.begin(|| format!("write {bar:?} {offset:#x} {data:02x?}"))?;
        let quiesced = self.both_quiesced()?;
        if bar == Bar::Regs && !quiesced && !is_race_free_write(offset) && !self.aligned {
            self.settle_inner()?;
        }
        let ra = self.a.dev.mmio_write(bar, offset, data);
        let rb = self.b.dev.mmio_write(bar, offset, data);
        self.pair("mmio write", ra, rb)?;
        if bar == Bar::Regs && !quiesced {
            self.aligned = false;
        }
        Ok(())
    }

    /// Settles both sides (runs each until idle, see [`Lockstep::settle`]);
    /// `budget` is not used: the limits are in [`LockstepOptions`].
    fn advance(&mut self, _budget: u64) -> Result<Progress, DeviceError> {
        self.settle()
    }

    fn run_until_idle(&mut self, _max_units: u64) -> Result<u64, DeviceError> {
        Ok(self.settle()?.used)
    }

    /// Quiesces the checked side where it is, aligns the reference to it,
    /// then compares everything (state words included).
    fn quiesce(&mut self) -> Result<(), DeviceError> {
        self.begin(|| "quiesce".into())?;
        if self.aligned {
            let ra = self.a.dev.quiesce();
            let rb = self.b.dev.quiesce();
            self.pair("quiesce", ra, rb)?;
        } else {
            self.b.dev.quiesce()?;
            self.align_reference()?;
            self.aligned = true;
        }
        self.check_point(true)
    }

    fn resume(&mut self) -> Result<(), DeviceError> {
        self.begin(|| "resume".into())?;
        let ra = self.a.dev.resume();
        let rb = self.b.dev.resume();
        let r = self.pair("resume", ra, rb).map(|_| ());
        if r.is_ok() {
            self.aligned = false;
        }
        r
    }

    fn soft_reset(&mut self) -> Result<(), DeviceError> {
        self.begin(|| "soft_reset".into())?;
        if !self.aligned {
            self.settle_inner()?;
        }
        let ra = self.a.dev.soft_reset();
        let rb = self.b.dev.soft_reset();
        self.pair("soft_reset", ra, rb)?;
        self.settle_inner().map(|_| ())
    }

    fn save_state(&mut self) -> Result<DeviceState, DeviceError> {
        self.begin(|| "save_state".into())?;
        let ra = self.a.dev.save_state();
        let rb = self.b.dev.save_state();
        let (sa, sb) = self.pair("save_state", ra, rb)?;
        self.compared += 1;
        let words = word_diffs(&sa, &sb);
        if !words.is_empty() {
            return Err(self.diverge(Effect::State { words }));
        }
        Ok(sa)
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        self.begin(|| "restore_state".into())?;
        let ra = self.a.dev.restore_state(state);
        let rb = self.b.dev.restore_state(state);
        self.compared += 1;
        self.pair("restore_state", ra, rb).map(|_| ())
    }

    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.begin(|| format!("devmem_read {offset:#x} +{}", buf.len()))?;
        let mut other = vec![0u8; buf.len()];
        let ra = self.a.dev.devmem_read(offset, buf);
        let rb = self.b.dev.devmem_read(offset, &mut other);
        self.pair("devmem_read", ra, rb)?;
        if self.aligned {
            self.compared += 1;
            if let Some(i) = first_diff(buf, &other) {
                let o = i & !15;
                let e = (o + 16).min(buf.len());
                return Err(self.diverge(Effect::DevMemRead {
                    offset: offset + o as u64,
                    expected: buf[o..e].to_vec(),
                    actual: other[o..e].to_vec(),
                }));
            }
        }
        Ok(())
    }

    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.begin(|| format!("devmem_write {offset:#x} +{}", data.len()))?;
        let ra = self.a.dev.devmem_write(offset, data);
        let rb = self.b.dev.devmem_write(offset, data);
        self.pair("devmem_write", ra, rb).map(|_| ())
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError> {
        self.begin(|| "take_dirty_pages".into())?;
        if !self.aligned {
            self.settle_inner()?;
        }
        let ra = self.a.dev.take_dirty_pages();
        let rb = self.b.dev.take_dirty_pages();
        let (x, y) = self.pair("take_dirty_pages", ra, rb)?;
        self.compared += 1;
        if x != y {
            return Err(self.diverge(Effect::DirtyBitmap {
                expected: bitmap_pages(&x),
                actual: bitmap_pages(&y),
            }));
        }
        Ok(x)
    }

    fn dma_log_take(&mut self) -> Result<(Vec<u64>, bool), DeviceError> {
        self.begin(|| "dma_log_take".into())?;
        if !self.aligned {
            self.settle_inner()?;
        }
        let ra = self.a.dev.dma_log_take();
        let rb = self.b.dev.dma_log_take();
        let (x, y) = self.pair("dma_log_take", ra, rb)?;
        self.compared += 1;
        if x != y {
            return Err(self.diverge(Effect::DmaLog {
                expected: (bitmap_pages(&x.0), x.1),
                actual: (bitmap_pages(&y.0), y.1),
            }));
        }
        Ok(x)
    }
}

impl<A: Device, B: Device> std::fmt::Debug for Lockstep<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockstep")
            .field("op_index", &self.op_index)
            .field("aligned", &self.aligned)
            .field("divergence", &self.divergence)
            .finish_non_exhaustive()
    }
}
