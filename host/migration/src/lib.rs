//! vfpga-migration: moves a vfpga device's state between hosts through the
//! VFIO migration protocols, independent of the transport (vfio-user, a
//! VMM of our own, a test).
//!
//! # Parts
//!
//! - [`stream`]: the versioned, checksummed, sequence-numbered stream
//!   (`bitstream-docs/migration-stream.md`), with a streaming encoder and a
//!   validating streaming decoder.
//! - [`fsm`]: the v2 device state machine as data (the kernel's next-step
//!   table and shortest-path rule).
//! - [`save`] / [`load`]: one save stream with pre-copy (FULL pass, DIRTY
//!   passes, FINAL pass, state) and one load stream with validation.
//! - [`engine`]: [`MigrationEngine`], the state machine wired to a
//!   [`vfpga_device::Device`] and the sessions.
//! - [`v1`]: the v1 migration region (`vfio_device_migration_info` plus a
//!   data window), served from the same engine.
//! - [`converge`]: when pre-copy ends (a downtime limit from the measured
//!   bandwidth, a pass limit as fallback) and auto-converge (raising the
//!   device's DMA throttle step by step).
//! - [`dirty`]: DMA logging (`DMA_LOGGING_START/STOP/REPORT`) over the host
//!   [`vfpga_device::DmaPort`] or the device's own DMA write log.
//!
//! # How a server uses it
//!
//! | vfio-user / VFIO request | call |
//! |---|---|
//! | `DEVICE_FEATURE` GET `MIGRATION` | [`MigrationEngine::flags`] (STOP_COPY \| PRE_COPY) |
//! | GET / SET `MIG_DEVICE_STATE` | [`MigrationEngine::state`] / [`MigrationEngine::set_state`] (raw value; bad values are errors, never indices) |
//! | `MIG_DATA_READ` | [`MigrationEngine::read_data`] (short = end of data) |
//! | `MIG_DATA_WRITE` | [`MigrationEngine::write_data`] (all or error) |
//! | `MIG_DATA_SIZE` | [`MigrationEngine::stop_copy_size`] |
//! | `PRECOPY_INFO` | [`MigrationEngine::precopy_info`] |
//! | `DEVICE_RESET` | [`MigrationEngine::reset`] |
//! | `DMA_LOGGING_*` | [`dirty::DmaLogging`] |
//! | v1 region read / write | [`v1::V1Region::read`] / [`v1::V1Region::write`] |
//!
//! # States and what the device does in each arc
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> RUNNING
//!     RUNNING --> STOP: quiesce (no DMA, no IRQ, frozen)
//!     STOP --> RUNNING: resume (device re-validates its state)
//!     RUNNING --> PRE_COPY: open save stream, FULL pass
//!     PRE_COPY --> PRE_COPY: MIG_DATA_READ (DIRTY passes)
//!     PRE_COPY --> RUNNING: close stream (cancel)
//!     PRE_COPY --> STOP_COPY: quiesce, same stream continues
//!     STOP --> STOP_COPY: open save stream
//!     STOP_COPY --> STOP: close stream
//!     STOP --> RESUMING: open load stream
//!     RESUMING --> STOP: complete + valid stream, state restored
//!     ERROR --> RUNNING: reset
//! ```
//!
//! Combination targets (RUNNING → STOP_COPY, RESUMING → RUNNING, …) walk
//! these arcs by the kernel's shortest-path rule. STOP_COPY → PRE_COPY is
//! refused. A failed arc leaves the state where the walk was, or ERROR when
//! the device's condition is unknown; a bad resumed stream leaves RESUMING
//! (the device never runs it) until a reset.
//!
//! Failure and cancel: a save session only reads the device, so leaving
//! the saving group at any point (PRE_COPY → RUNNING, STOP_COPY → RUNNING)
//! gives back a running device with its state intact, and a new session
//! starts a fresh, complete stream.

pub mod converge;
pub mod crc;
pub mod dirty;
pub mod engine;
pub mod fsm;
pub mod load;
pub mod save;
pub mod stream;
pub mod v1;

pub use engine::{ArcError, EngineConfig, EngineError, MigrationEngine};
pub use fsm::{MigState, MigrationFlags};
pub use stream::StreamError;
