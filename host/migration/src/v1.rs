//! The VFIO migration v1 region: the 32-byte `vfio_device_migration_info`
//! register block followed by a data window, served from the same
//! [`MigrationEngine`] as v2.
//!
//! ```text
//! offset 0   device_state  u32  RW  bits RESUMING|SAVING|RUNNING, 3..31 kept as written
//! offset 4   reserved      u32  --  reads 0, writes ignored
//! offset 8   pending_bytes u64  RO
//! offset 16  data_offset   u64  RO  (= DATA_OFFSET, page aligned)
//! offset 24  data_size     u64  RW  (read when saving, written when resuming)
//! [data_offset, data_offset + window)   the data window
//! ```
//!
//! Registers take only their native width at their own offset; anything
//! else is [`V1Error::BadAccess`] and changes nothing.
//!
//! # Iteration semantics (Alex Williamson's reply to Thanos Makatos, 2020)
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Idle
//!     Idle --> Idle: pending_bytes read (no side effect)
//!     Idle --> Prepared: data_offset read (prepares up to one window)
//!     Prepared --> Prepared: data_offset / data_size / data reads (same data)
//!     Prepared --> Idle: pending_bytes read (data consumed)
//!     Prepared --> Idle: device_state write or engine state change
//! ```
//!
//! - `pending_bytes` may be polled any number of times without effect until
//!   `data_offset` is read; it is volatile (it may grow in pre-copy) and only
//!   zero / non-zero is meaningful: in stop-and-copy it is the exact number of
//!   bytes left, so zero means the stream is complete.
//! - The first `data_offset` read of an iteration prepares the data (also when
//!   `pending_bytes` was never read); `data_offset` and `data_size` are then
//!   invariant, and the data can be read in one access or many, until a
//!   `pending_bytes` read concludes the iteration. Without that read the same
//!   data is presented again.
//! - `data_size` read outside an iteration, data reads outside the prepared
//!   bytes, writes to read-only fields, and data-window access in the wrong
//!   state are clear errors that change nothing.
//! - Resuming: the user writes the data into the window, then writes
//!   `data_size`; that write returns only after exactly `data_size` bytes were
//!   consumed (validated by the stream decoder, written to the quiesced
//!   device).
//! - `device_state` values 101b and 111b are invalid and 110b (ERROR) cannot
//!   be requested; every accepted write ends the current iteration.

use vfpga_device::Device;

use crate::engine::{EngineError, MigrationEngine};
use crate::fsm::MigState;

/// Offset of `device_state`.
pub const DEVICE_STATE: u64 = 0;
/// Offset of `reserved`.
pub const RESERVED: u64 = 4;
/// Offset of `pending_bytes`.
pub const PENDING_BYTES: u64 = 8;
/// Offset of `data_offset`.
pub const DATA_OFFSET_REG: u64 = 16;
/// Offset of `data_size`.
pub const DATA_SIZE: u64 = 24;
/// Size of `struct vfio_device_migration_info`.
pub const INFO_LEN: u64 = 32;
/// Where the data window starts (page aligned, so it could be mmapped).
pub const DATA_OFFSET: u64 = 4096;
/// Default data-window size.
pub const DEFAULT_WINDOW: usize = 1 << 20;
/// Largest data window.
pub const MAX_WINDOW: usize = 64 << 20;

/// `device_state` bits.
pub mod bits {
    /// `VFIO_DEVICE_STATE_STOP`.
    pub const STOP: u32 = 0;
    /// `VFIO_DEVICE_STATE_RUNNING`.
    pub const RUNNING: u32 = 1 << 0;
    /// `VFIO_DEVICE_STATE_SAVING`.
    pub const SAVING: u32 = 1 << 1;
    /// `VFIO_DEVICE_STATE_RESUMING`.
    pub const RESUMING: u32 = 1 << 2;
    /// `VFIO_DEVICE_STATE_MASK`.
    pub const MASK: u32 = RUNNING | SAVING | RESUMING;
    /// The error encoding (`SAVING | RESUMING`).
    pub const ERROR: u32 = SAVING | RESUMING;
}

/// The v1 encoding of a v2 state.
pub fn state_bits(s: MigState) -> u32 {
    match s {
        MigState::Running => bits::RUNNING,
        MigState::Stop => bits::STOP,
        MigState::StopCopy => bits::SAVING,
        MigState::PreCopy => bits::SAVING | bits::RUNNING,
        MigState::Resuming => bits::RESUMING,
        // Not reachable with vfpga's flags; reported as the error encoding.
        MigState::Error | MigState::RunningP2p | MigState::PreCopyP2p => bits::ERROR,
    }
}

/// The v2 state a v1 `device_state` value asks for; `None` for 101b, 110b
/// and 111b.
pub fn target_state(v: u32) -> Option<MigState> {
    Some(match v & bits::MASK {
        0b000 => MigState::Stop,
        0b001 => MigState::Running,
        0b010 => MigState::StopCopy,
        0b011 => MigState::PreCopy,
        0b100 => MigState::Resuming,
        _ => return None,
    })
}

/// Why a region access failed. Every error leaves the region and the
/// engine as they were (except a rejected resume stream, which is final).
#[derive(Debug, thiserror::Error)]
pub enum V1Error {
    /// Wrong width, misaligned, inside the gap before the data window, or
    /// beyond the region.
    #[error("bad migration region access: {len} bytes at offset {offset:#x}")]
    BadAccess {
        /// Region offset.
        offset: u64,
        /// Access width.
        len: usize,
    },
    /// A write to a read-only field.
    #[error("{0} is read-only")]
    ReadOnly(&'static str),
    /// A `device_state` value that is invalid or cannot be requested.
    #[error("invalid device_state {0:#b}")]
    InvalidDeviceState(u32),
    /// A field or the data window used in a state where it means nothing.
    #[error("{what} is not valid in state {state}")]
    WrongState {
        /// The access.
        what: &'static str,
        /// The current state.
        state: MigState,
    },
    /// A read out of the iteration sequence.
    #[error("out of sequence: {0}")]
    OutOfSequence(&'static str),
    /// A `data_size` write larger than the window.
    #[error("data_size {size} is larger than the {window}-byte window")]
    WindowOverflow {
        /// Value written.
        size: u64,
        /// Window size.
        window: usize,
    },
    /// The engine refused (a transition, or the resumed data).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iter {
    Idle,
    Prepared { size: u64 },
}

/// The v1 region of one device.
#[derive(Debug, Clone)]
pub struct V1Region {
    window: Vec<u8>,
    reserved_bits: u32,
    iter: Iter,
    generation: u64,
}

impl Default for V1Region {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl V1Region {
    /// A region with a `window`-byte data window (clamped to
    /// 4 KiB..=[`MAX_WINDOW`]).
    pub fn new(window: usize) -> Self {
        V1Region {
            window: vec![0; window.clamp(4096, MAX_WINDOW)],
            reserved_bits: 0,
            iter: Iter::Idle,
            generation: 0,
        }
    }

    /// Total region size (for `VFIO_DEVICE_GET_REGION_INFO`).
    pub fn size(&self) -> u64 {
        DATA_OFFSET + self.window.len() as u64
    }

    /// The data-window size.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }

    /// Whether an iteration is in progress (data prepared).
    pub fn in_iteration(&self) -> bool {
        matches!(self.iter, Iter::Prepared { .. })
    }

    /// Forgets the iteration and the reserved bits (after a device reset).
    pub fn reset(&mut self) {
        self.iter = Iter::Idle;
        self.reserved_bits = 0;
    }

    fn sync(&mut self, engine: &MigrationEngine) {
        if engine.generation() != self.generation {
            self.iter = Iter::Idle;
            self.generation = engine.generation();
        }
    }

    fn window_range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = offset.checked_sub(DATA_OFFSET)?;
        let end = start.checked_add(len as u64)?;
        (end <= self.window.len() as u64).then_some(start as usize..end as usize)
    }

    fn pending<D: Device + ?Sized>(
        &mut self,
        engine: &mut MigrationEngine,
        dev: &mut D,
    ) -> Result<u64, V1Error> {
        let state = engine.state();
        match state {
            MigState::StopCopy => Ok(engine.stop_copy_size(dev)?),
            MigState::PreCopy => {
                let i = engine.precopy_info(dev)?;
                Ok(i.initial_bytes + i.dirty_bytes)
            }
            _ => Err(V1Error::WrongState {
                what: "pending_bytes",
                state,
            }),
        }
    }

    /// A region read of `buf.len()` bytes at `offset`.
    pub fn read<D: Device + ?Sized>(
        &mut self,
        engine: &mut MigrationEngine,
        dev: &mut D,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), V1Error> {
        self.sync(engine);
        let bad = V1Error::BadAccess {
            offset,
            len: buf.len(),
        };
        let state = engine.state();
        match (offset, buf.len()) {
            (DEVICE_STATE, 4) => {
                let v = state_bits(state) | self.reserved_bits;
                buf.copy_from_slice(&v.to_le_bytes());
            }
            (RESERVED, 4) => buf.fill(0),
            (PENDING_BYTES, 8) => {
                let p = self.pending(engine, dev)?;
                // Reading pending_bytes concludes an iteration (the data was
                // consumed); before data_offset it has no effect at all.
                if let Iter::Prepared { size } = self.iter {
                    tracing::trace!(size, "v1 iteration concluded");
                    self.iter = Iter::Idle;
                }
                buf.copy_from_slice(&p.to_le_bytes());
            }
            (DATA_OFFSET_REG, 8) => {
                if state.is_saving() && self.iter == Iter::Idle {
                    let n = engine.read_data(dev, &mut self.window)?;
                    self.iter = Iter::Prepared { size: n as u64 };
                } else if !state.is_saving() && state != MigState::Resuming {
                    return Err(V1Error::WrongState {
                        what: "data_offset",
                        state,
                    });
                }
                buf.copy_from_slice(&DATA_OFFSET.to_le_bytes());
            }
            (DATA_SIZE, 8) => match self.iter {
                Iter::Prepared { size } if state.is_saving() => {
                    buf.copy_from_slice(&size.to_le_bytes());
                }
                _ => {
                    return Err(V1Error::OutOfSequence(
                        "data_size read without data prepared by a data_offset read",
                    ));
                }
            },
            (o, _) if o < DATA_OFFSET => return Err(bad),
            _ => {
                let r = self.window_range(offset, buf.len()).ok_or(bad)?;
                let Iter::Prepared { size } = self.iter else {
                    return Err(V1Error::OutOfSequence(
                        "data read before data_offset prepared it",
                    ));
                };
                if !state.is_saving() {
                    return Err(V1Error::WrongState {
                        what: "data window read",
                        state,
                    });
                }
                if r.end as u64 > size {
                    return Err(V1Error::OutOfSequence("data read beyond data_size"));
                }
                buf.copy_from_slice(&self.window[r]);
            }
        }
        Ok(())
    }

    /// A region write of `data` at `offset`.
    pub fn write<D: Device + ?Sized>(
        &mut self,
        engine: &mut MigrationEngine,
        dev: &mut D,
        offset: u64,
        data: &[u8],
    ) -> Result<(), V1Error> {
        self.sync(engine);
        let bad = V1Error::BadAccess {
            offset,
            len: data.len(),
        };
        let state = engine.state();
        match (offset, data.len()) {
            (DEVICE_STATE, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                let v = u32::from_le_bytes(b);
                let target = target_state(v).ok_or(V1Error::InvalidDeviceState(v))?;
                let r = engine.set_state(dev, target.raw());
                self.sync(engine);
                r?;
                self.reserved_bits = v & !bits::MASK;
                self.iter = Iter::Idle;
            }
            (RESERVED, 4) => {}
            (PENDING_BYTES, 8) => return Err(V1Error::ReadOnly("pending_bytes")),
            (DATA_OFFSET_REG, 8) => return Err(V1Error::ReadOnly("data_offset")),
            (DATA_SIZE, 8) => {
                if state != MigState::Resuming {
                    return Err(V1Error::ReadOnly("data_size (except when resuming)"));
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                let size = u64::from_le_bytes(b);
                if size > self.window.len() as u64 {
                    return Err(V1Error::WindowOverflow {
                        size,
                        window: self.window.len(),
                    });
                }
                engine.write_data(dev, &self.window[..size as usize])?;
            }
            (o, _) if o < DATA_OFFSET => return Err(bad),
            _ => {
                let r = self.window_range(offset, data.len()).ok_or(bad)?;
                if state != MigState::Resuming {
                    return Err(V1Error::WrongState {
                        what: "data window write",
                        state,
                    });
                }
                self.window[r].copy_from_slice(data);
            }
        }
        Ok(())
    }
}
