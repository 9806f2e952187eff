//! `vfpga-model`: the Rust reference model of the vfpga device, the
//! executable form of `bitstream-docs/datasheet.md`.
//!
//! The model is pure, deterministic, `unsafe`-free Rust behind the same
//! [`Device`](vfpga_device::Device) seam as the Verilated RTL and the board.
//! The RTL is cross-checked against it step by step; it runs where there is
//! neither a board nor a simulator; and a state saved from either restores
//! into it.
//!
//! # Structure
//!
//! ```text
//!             mmio_read / mmio_write (BAR0)           BAR2 / devmem_*
//!                      │                                   │
//!               ┌──────▼──────┐   state port (§9)   ┌──────▼──────┐
//!               │  regs.rs    │◄───────────────────►│ device      │
//!               │ register    │  ArchState words    │ memory      │──► dirty bitmap (§6)
//!               │ file        │  (stored raw)       │ Vec<u8>     │
//!               └──────┬──────┘                     └──────▲──────┘
//!                      │ step() / advance()                │
//!               ┌──────▼──────────────────────────────────┴──┐
//!               │ model.rs engine: complete > burst > fetch   │──► DMA write log (§7)
//!               └──────┬─────────────────────────┬────────────┘
//!                      │ DmaPort (bounds-checked) │ IrqSink (MSI-X, §4)
//!                      ▼                          ▼
//!                 guest memory                 vectors 0, 1
//! ```
//!
//! - **State** ([`model`]): the architectural state *is* a
//!   [`vfpga_regs::ArchState`], the 38 state words exactly as the state port
//!   reads and writes them (§9.1: stored raw, reserved bits included). The
//!   registers that are state words read and write those words; everything
//!   else (quiesce flags, `STATE_IDX`, `STATE_ERR`, the timer latch, both
//!   bitmaps, the DMA-log window) lives beside them. Validation is
//!   [`vfpga_device::validate_arch`], the Rust form of §9.3, so the model and
//!   the host reject a bad state for the same word.
//! - **Engine** ([`Model::step`]): one call is one step of §5.3: complete the
//!   in-flight descriptor, else move one burst (at most `BURST_BYTES`, never
//!   across a 4 KiB boundary of the source or the destination), else fetch.
//!   Interrupt delivery is checked after every step and after writes to
//!   `IRQ_MASK`, `IRQ_STATUS` and `CTRL`. The returned [`Step`] says what was
//!   done, so a cross-check can align the model and the RTL at step
//!   boundaries.
//! - **Time**: [`Device::advance`](vfpga_device::Device::advance) counts in
//!   steps; the timer advances by one per step (or idle tick) while not
//!   quiesced. Steps are atomic, so `CTRL.QUIESCE` takes effect at once and
//!   `STATUS.QUIESCING` is never seen. A step may wait for the answer to its
//!   DMA (guest memory reached by messages, where the port answers
//!   [`DmaFault::Pending`](vfpga_device::DmaFault::Pending)): it is then
//!   repeated until it completes. During such a wait the model serves the
//!   MMIO accesses the datasheet (§5.3) serves, before the step commits; any
//!   other access (a `DIRTY_BITS`, `DMALOG_BITS` or `STATE_DATA` read, a
//!   write of any register but `SQ_TAIL`, `CQ_HEAD`, `IRQ_STATUS`,
//!   `IRQ_MASK` and `SCRATCH`, BAR2) first repeats the waiting step until it
//!   ends, as the RTL makes it wait.
//! - **Speed**: device memory is a `Vec<u8>` (up to 256 MiB) served directly
//!   by `devmem_read`/`devmem_write`; with [`ModelConfig::batch_bursts`],
//!   `advance` runs consecutive bursts of one descriptor as one copy when
//!   that cannot be told apart from running them one by one (every access of
//!   the batch succeeds and a host-to-host copy does not overlap itself).
//!   One caveat: two IOVA ranges that alias the same guest memory are
//!   assumed distinct; use [`Model::step`] (or turn batching off) for such
//!   a stimulus.
//! - **Free running** ([`runner`]): [`ModelRunner`] owns a model on its own
//!   thread, runs it while it has work and sleeps (no spinning) while idle,
//!   for use behind vfio-user.
//!
//! # Verification
//!
//! `tests/` holds the datasheet checks (`engine.rs`), the shared
//! save/restore conformance suite of `vfpga_device::conformance` on the
//! stepped, unbatched and free-running model (`conformance.rs`, with mutants
//! it must catch), 13,000 property cases against plain Rust and against
//! uninterrupted runs (`properties.rs`), quiesce and migrate at every step
//! boundary (`quiesce_points.rs`), and, with `--features rtl`, the same suite
//! and a differential check against the Verilated RTL (`rtl_conformance.rs`).
//!
//! # Choices where the datasheet left room
//!
//! Each is now written into `bitstream-docs/datasheet.md`.
//! - A BAR0 register that is a state word reads the word's defined bits:
//!   reserved bits written through the state port (which a refused restore
//!   leaves in place) read 0 through the register, so a read-modify-write of
//!   `CTRL` can never turn them into `SOFT_RESET`/`QUIESCE`/`RESUME` pulses.
//!   `STATE_DATA` returns the raw word.
//! - `STATE_DATA` accesses move `STATE_IDX` on only while it is below
//!   `STATE_WORDS` and the device is quiesced (it stops at `STATE_WORDS`).
//! - `DMALOG_SEL` is stored as written; a `DMALOG_BITS` read with it at or
//!   past the last group returns 0 and sets it to 0.
//! - The DMA-log bitmap and `OVERFLOW` are cleared only when `ENABLE` goes
//!   from 0 to 1, so writing `ENABLE | OVERFLOW` while logging clears just
//!   the overflow flag.
//! - A `CTRL` write with `SOFT_RESET` does only the reset (other bits of the
//!   same write are ignored).
//! - Ring addresses (`SQ_BASE + HEAD*32`, `CQ_BASE + INDEX*16`, `SRC/DST +
//!   DONE`) wrap modulo 2^64 like a hardware adder; the DMA port then
//!   refuses what is not mapped.
//! - Ring base and size registers are also ignored while a descriptor is in
//!   flight (datasheet §5.1, clarified), so `CUR_SLOT` always stays below
//!   `SQ_SIZE`.

#![forbid(unsafe_code)]

pub mod crc;
pub mod model;
mod regs;
pub mod runner;

pub use model::{Fault, Model, ModelConfig, Step, StepKind};
pub use runner::ModelRunner;
use vfpga_device::{DeviceError, StateViolation};

/// Errors building a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An instance parameter is out of range.
    #[error("invalid model parameter {name} = {value}: {reason}")]
    Config {
        /// Parameter.
        name: &'static str,
        /// Value given.
        value: u64,
        /// What is allowed.
        reason: &'static str,
    },
    /// The `DeviceState` structure has a version this build does not know.
    #[error(
        "device state structure version {found} is not supported (this build reads {expected})"
    )]
    StateVersion {
        /// Version in the state.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The state was saved from an incompatible device.
    #[error("state was saved from an incompatible device")]
    Incompatible(#[source] DeviceError),
    /// The state words failed validation (datasheet §9.3).
    #[error("restored state refused")]
    State(#[source] StateViolation),
    /// The runner thread could not be started or has died.
    #[error("model runner: {0}")]
    Runner(&'static str, #[source] std::io::Error),
}

impl From<ModelError> for DeviceError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::State(v) => DeviceError::StateRejected(v),
            ModelError::Incompatible(d) => d,
            other => DeviceError::Backend {
                msg: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
