//! The VFIO migration v2 device state machine, as data.
//!
//! [`MigState`] is the uAPI's `enum vfio_device_mig_state` (same numbers),
//! [`NEXT_STEP`] is the kernel's one-step table (`vfio_from_fsm_table` in
//! `drivers/vfio/vfio_main.c`, rows and columns in uAPI order), and
//! [`next_step`] is `vfio_mig_get_next_state()` with the 2026 fix: the skip
//! loop stops on ERROR, so STOP_COPY → PRE_COPY is rejected at once instead of
//! spinning. [`Fsm::set_state`] walks the path one arc at a time and calls an
//! [`ArcHooks`] implementation for each arc, exactly like a kernel driver's
//! `step_state` loop.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> RUNNING
//!     RUNNING --> STOP: quiesce
//!     STOP --> RUNNING: resume
//!     RUNNING --> PRE_COPY: new save stream
//!     PRE_COPY --> RUNNING: end stream
//!     PRE_COPY --> STOP_COPY: quiesce, same stream
//!     STOP --> STOP_COPY: new save stream
//!     STOP_COPY --> STOP: end stream
//!     STOP --> RESUMING: new load stream
//!     RESUMING --> STOP: validate + restore
//!     note right of STOP_COPY: STOP_COPY to PRE_COPY is rejected
//!     ERROR --> RUNNING: device reset only
//! ```
//!
//! Failure rule: when a hook fails, the state is the last state reached
//! (the `from` of the failed arc), unless the hook reports that the device is
//! in an unknown condition, in which case the state becomes ERROR. ERROR is
//! left only through [`Fsm::reset`].

use std::fmt;

/// `enum vfio_device_mig_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MigState {
    /// `VFIO_DEVICE_STATE_ERROR` (0).
    Error = 0,
    /// `VFIO_DEVICE_STATE_STOP` (1).
    Stop = 1,
    /// `VFIO_DEVICE_STATE_RUNNING` (2).
    Running = 2,
    /// `VFIO_DEVICE_STATE_STOP_COPY` (3).
    StopCopy = 3,
    /// `VFIO_DEVICE_STATE_RESUMING` (4).
    Resuming = 4,
    /// `VFIO_DEVICE_STATE_RUNNING_P2P` (5).
    RunningP2p = 5,
    /// `VFIO_DEVICE_STATE_PRE_COPY` (6).
    PreCopy = 6,
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P` (7).
    PreCopyP2p = 7,
}

/// `VFIO_DEVICE_STATE_NR`.
pub const NUM_STATES: usize = 8;

impl MigState {
    /// Every state, in uAPI order.
    pub const ALL: [MigState; NUM_STATES] = [
        MigState::Error,
        MigState::Stop,
        MigState::Running,
        MigState::StopCopy,
        MigState::Resuming,
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ];

    /// Decodes a uAPI value; `None` for anything out of range.
    pub fn from_raw(v: u32) -> Option<Self> {
        MigState::ALL.get(usize::try_from(v).ok()?).copied()
    }

    /// The uAPI value.
    pub fn raw(self) -> u32 {
        self as u32
    }

    /// The migration flags a device must advertise to support this state
    /// (`state_flags_table`); `None` for ERROR, which is never a target.
    pub fn required_flags(self) -> Option<MigrationFlags> {
        use MigState::*;
        Some(match self {
            Stop | Running | StopCopy | Resuming => MigrationFlags::STOP_COPY,
            PreCopy => MigrationFlags::STOP_COPY.with(MigrationFlags::PRE_COPY),
            RunningP2p => MigrationFlags::STOP_COPY.with(MigrationFlags::P2P),
            PreCopyP2p => MigrationFlags::STOP_COPY
                .with(MigrationFlags::P2P)
                .with(MigrationFlags::PRE_COPY),
            Error => return None,
        })
    }

    /// Whether the state belongs to the saving group (a save stream is open).
    pub fn is_saving(self) -> bool {
        matches!(
            self,
            MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy
        )
    }

    /// Whether the device runs (issues DMA, raises interrupts) in this state.
    pub fn is_running(self) -> bool {
        matches!(self, MigState::Running | MigState::PreCopy)
    }

    /// The uAPI name.
    pub fn name(self) -> &'static str {
        match self {
            MigState::Error => "ERROR",
            MigState::Stop => "STOP",
            MigState::Running => "RUNNING",
            MigState::StopCopy => "STOP_COPY",
            MigState::Resuming => "RESUMING",
            MigState::RunningP2p => "RUNNING_P2P",
            MigState::PreCopy => "PRE_COPY",
            MigState::PreCopyP2p => "PRE_COPY_P2P",
        }
    }
}

impl fmt::Display for MigState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `VFIO_DEVICE_FEATURE_MIGRATION` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationFlags(pub u64);

impl MigrationFlags {
    /// `VFIO_MIGRATION_STOP_COPY`.
    pub const STOP_COPY: MigrationFlags = MigrationFlags(1 << 0);
    /// `VFIO_MIGRATION_P2P`.
    pub const P2P: MigrationFlags = MigrationFlags(1 << 1);
    /// `VFIO_MIGRATION_PRE_COPY`.
    pub const PRE_COPY: MigrationFlags = MigrationFlags(1 << 2);
    /// What vfpga advertises: STOP_COPY | PRE_COPY (no P2P).
    pub const VFPGA: MigrationFlags = MigrationFlags(Self::STOP_COPY.0 | Self::PRE_COPY.0);

    /// Union.
    pub const fn with(self, o: MigrationFlags) -> MigrationFlags {
        MigrationFlags(self.0 | o.0)
    }

    /// Whether every bit of `o` is set.
    pub const fn contains(self, o: MigrationFlags) -> bool {
        self.0 & o.0 == o.0
    }

    /// Whether a device with these flags supports `s`.
    pub fn supports(self, s: MigState) -> bool {
        s.required_flags().is_some_and(|r| self.contains(r))
    }
}

use MigState as S;

/// The kernel's one-step table: `NEXT_STEP[cur][target]` is the next state
/// on the way from `cur` to `target` for a device with every optional state.
pub const NEXT_STEP: [[MigState; NUM_STATES]; NUM_STATES] = [
    // from ERROR: nowhere.
    [S::Error; NUM_STATES],
    // from STOP
    [
        S::Error,
        S::Stop,
        S::RunningP2p,
        S::StopCopy,
        S::Resuming,
        S::RunningP2p,
        S::RunningP2p,
        S::RunningP2p,
    ],
    // from RUNNING
    [
        S::Error,
        S::RunningP2p,
        S::Running,
        S::RunningP2p,
        S::RunningP2p,
        S::RunningP2p,
        S::PreCopy,
        S::RunningP2p,
    ],
    // from STOP_COPY
    [
        S::Error,
        S::Stop,
        S::Stop,
        S::StopCopy,
        S::Stop,
        S::Stop,
        S::Error,
        S::Error,
    ],
    // from RESUMING
    [
        S::Error,
        S::Stop,
        S::Stop,
        S::Stop,
        S::Resuming,
        S::Stop,
        S::Stop,
        S::Stop,
    ],
    // from RUNNING_P2P
    [
        S::Error,
        S::Stop,
        S::Running,
        S::Stop,
        S::Stop,
        S::RunningP2p,
        S::Running,
        S::PreCopyP2p,
    ],
    // from PRE_COPY
    [
        S::Error,
        S::Running,
        S::Running,
        S::PreCopyP2p,
        S::Running,
        S::Running,
        S::PreCopy,
        S::PreCopyP2p,
    ],
    // from PRE_COPY_P2P
    [
        S::Error,
        S::RunningP2p,
        S::RunningP2p,
        S::StopCopy,
        S::RunningP2p,
        S::RunningP2p,
        S::PreCopy,
        S::PreCopyP2p,
    ],
];

/// Why a transition was refused before any arc ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is not a uAPI state value.
    #[error("{0} is not a device state")]
    NotAState(u32),
    /// The target is ERROR, or a state this device does not advertise.
    #[error("{0} cannot be requested on this device")]
    Unsupported(MigState),
    /// The current state is not one this device supports (internal error).
    #[error("current state {0} is not supported by this device")]
    BadCurrent(MigState),
    /// No path (STOP_COPY → PRE_COPY, or anything from ERROR).
    #[error("no transition from {from} to {to}")]
    NoPath {
        /// Current state.
        from: MigState,
        /// Requested state.
        to: MigState,
    },
}

/// The next state on the way from `cur` to the raw target `new`
/// (`vfio_mig_get_next_state`, with the loop terminated on ERROR).
pub fn next_step(flags: MigrationFlags, cur: MigState, new: u32) -> Result<MigState, PathError> {
    let new = MigState::from_raw(new).ok_or(PathError::NotAState(new))?;
    if cur != MigState::Error && !flags.supports(cur) {
        return Err(PathError::BadCurrent(cur));
    }
    if !flags.supports(new) {
        return Err(PathError::Unsupported(new));
    }
    let mut next = NEXT_STEP[cur as usize][new as usize];
    // At most NUM_STATES skips: the table has no cycles of unsupported
    // states, and ERROR ends the walk.
    for _ in 0..NUM_STATES {
        if next == MigState::Error || flags.supports(next) {
            break;
        }
        next = NEXT_STEP[next as usize][new as usize];
    }
    if next == MigState::Error || !flags.supports(next) {
        return Err(PathError::NoPath { from: cur, to: new });
    }
    Ok(next)
}

/// The whole path from `cur` to the raw target `new`, excluding `cur`
/// (empty for a self-transition).
pub fn path(flags: MigrationFlags, cur: MigState, new: u32) -> Result<Vec<MigState>, PathError> {
    let target = MigState::from_raw(new).ok_or(PathError::NotAState(new))?;
    let mut out = Vec::new();
    let mut at = cur;
    while at != target {
        let n = next_step(flags, at, new)?;
        out.push(n);
        at = n;
        if out.len() > NUM_STATES {
            return Err(PathError::NoPath {
                from: cur,
                to: target,
            });
        }
    }
    Ok(out)
}

/// A failed arc: what went wrong and whether the device is still in the
/// arc's `from` state.
#[derive(Debug)]
pub struct ArcFailure<E> {
    /// The device is in an unknown condition: the machine goes to ERROR.
    pub fatal: bool,
    /// The error.
    pub error: E,
}

impl<E> ArcFailure<E> {
    /// The arc failed and nothing changed: the state stays at `from`.
    pub fn recoverable(error: E) -> Self {
        ArcFailure {
            fatal: false,
            error,
        }
    }

    /// The arc failed half-way: the state becomes ERROR.
    pub fn fatal(error: E) -> Self {
        ArcFailure { fatal: true, error }
    }
}

/// The device-side work of each arc.
pub trait ArcHooks {
    /// The error a hook reports.
    type Error;
    /// Performs the direct arc `from` → `to`.
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), ArcFailure<Self::Error>>;
}

/// Why [`Fsm::set_state`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FsmError<E: std::error::Error + 'static> {
    /// The request was refused; nothing ran and the state is unchanged.
    #[error(transparent)]
    Refused(#[from] PathError),
    /// The device is in ERROR: only a reset leaves it.
    #[error("the device is in the ERROR state; reset it")]
    InError,
    /// An arc failed. `now` is the state the machine is in afterwards.
    #[error("transition {from} -> {to} failed (state is now {now})")]
    Arc {
        /// Start of the failed arc.
        from: MigState,
        /// End of the failed arc.
        to: MigState,
        /// The state afterwards: `from`, or ERROR.
        now: MigState,
        /// The hook's error.
        #[source]
        source: E,
    },
}

/// The state machine of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsm {
    state: MigState,
    flags: MigrationFlags,
}

impl Fsm {
    /// A machine in RUNNING for a device advertising `flags` (which must
    /// include STOP_COPY; without it the device has no migration support).
    pub fn new(flags: MigrationFlags) -> Self {
        Fsm {
            state: MigState::Running,
            flags: flags.with(MigrationFlags::STOP_COPY),
        }
    }

    /// The current state.
    pub fn state(&self) -> MigState {
        self.state
    }

    /// The advertised flags.
    pub fn flags(&self) -> MigrationFlags {
        self.flags
    }

    /// Moves to the raw target `target`, one arc at a time, calling `hooks`
    /// for each arc. A self-transition calls nothing. Returns the new state.
    pub fn set_state<H>(
        &mut self,
        target: u32,
        hooks: &mut H,
    ) -> Result<MigState, FsmError<H::Error>>
    where
        H: ArcHooks,
        H::Error: std::error::Error + 'static,
    {
        if self.state == MigState::Error {
            // Validate the value anyway so a bad target gets its own error.
            MigState::from_raw(target).ok_or(PathError::NotAState(target))?;
            return Err(FsmError::InError);
        }
        // Compute and check the whole path before running any arc.
        let steps = path(self.flags, self.state, target)?;
        for to in steps {
            let from = self.state;
            tracing::debug!(%from, %to, "migration arc");
            if let Err(f) = hooks.arc(from, to) {
                self.state = if f.fatal { MigState::Error } else { from };
                tracing::warn!(%from, %to, now = %self.state, "migration arc failed");
                return Err(FsmError::Arc {
                    from,
                    to,
                    now: self.state,
                    source: f.error,
                });
            }
            self.state = to;
        }
        Ok(self.state)
    }

    /// Device reset: back to RUNNING from any state.
    pub fn reset(&mut self) {
        self.state = MigState::Running;
    }
}
