//! [`MigrationEngine`]: the v2 state machine wired to the device, with the
//! current save or load session. The vfio-user server (v2 features 1, 2, 9,
//! MIG_DATA_READ/WRITE) and the v1 region ([`crate::v1`]) both drive it.

use vfpga_device::{Device, DeviceError, DmaPort};

use crate::dirty::DmaLogging;
use crate::fsm::{ArcFailure, ArcHooks, Fsm, FsmError, MigState, MigrationFlags};
use crate::load::{LoadError, LoadSession};
use crate::save::{Advice, ConvergencePolicy, PrecopyInfo, SaveSession};
use crate::stream::{StreamError, Summary, image_bytes};

/// What an arc of the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ArcError {
    /// The device failed (quiesce, resume, state port, device memory).
    #[error("device operation failed")]
    Device(#[source] DeviceError),
    /// The stream received in RESUMING is incomplete or invalid.
    #[error("the resumed stream is not valid")]
    Load(#[source] LoadError),
    /// An arc this engine has no implementation for (a state it does not
    /// advertise). Never reached with the advertised flags.
    #[error("no implementation for the arc {from} -> {to}")]
    NoArc {
        /// Start.
        from: MigState,
        /// End.
        to: MigState,
    },
}

/// Errors of the engine's operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A state change failed; see [`FsmError`] for the state afterwards.
    #[error(transparent)]
    Transition(#[from] FsmError<ArcError>),
    /// The operation is not valid in the current state (e.g. MIG_DATA_READ
    /// outside PRE_COPY/STOP_COPY, PRECOPY_INFO outside PRE_COPY).
    #[error("{op} is not allowed in state {state}")]
    WrongState {
        /// The operation.
        op: &'static str,
        /// The current state.
        state: MigState,
    },
    /// The stream written in RESUMING was rejected.
    #[error("migration data rejected")]
    Stream(#[source] StreamError),
    /// The device failed while producing stream data or estimates.
    #[error("device failure during migration")]
    Device(#[source] DeviceError),
}

/// Engine configuration.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// The destination's DMA port: with it, a resumed state's rings must lie
    /// inside mapped memory before the device may run.
    pub dma: Option<DmaPort>,
}

/// The migration engine of one device. It does not own the device: every
/// operation takes it, so the caller (a vfio-user server, a VMM, a test)
/// keeps its own locking.
#[derive(Debug)]
pub struct MigrationEngine {
    fsm: Fsm,
    save: Option<SaveSession>,
    load: Option<LoadSession>,
    dma: Option<DmaPort>,
    generation: u64,
    last_load: Option<Summary>,
    logging: DmaLogging,
}

impl Default for MigrationEngine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

struct Arcs<'a, D: ?Sized> {
    dev: &'a mut D,
    save: &'a mut Option<SaveSession>,
    load: &'a mut Option<LoadSession>,
    dma: Option<&'a DmaPort>,
    last_load: &'a mut Option<Summary>,
}

fn recoverable(e: DeviceError) -> ArcFailure<ArcError> {
    ArcFailure::recoverable(ArcError::Device(e))
}

fn fatal(e: DeviceError) -> ArcFailure<ArcError> {
    ArcFailure::fatal(ArcError::Device(e))
}

impl<D: Device + ?Sized> ArcHooks for Arcs<'_, D> {
    type Error = ArcError;

    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), ArcFailure<ArcError>> {
        use MigState as S;
        match (from, to) {
            (S::Running, S::Stop) => self.dev.quiesce().map_err(fatal),
            (S::Stop, S::Running) => match self.dev.resume() {
                // The device refused its state and stays quiesced: still STOP.
                Err(e @ DeviceError::StateRejected(_)) => Err(recoverable(e)),
                r => r.map_err(fatal),
            },
            (S::Running, S::PreCopy) => {
                *self.save = Some(SaveSession::start(self.dev).map_err(recoverable)?);
                Ok(())
            }
            (S::PreCopy, S::Running) | (S::StopCopy, S::Stop) => {
                *self.save = None;
                Ok(())
            }
            (S::PreCopy, S::StopCopy) => {
                self.dev.quiesce().map_err(fatal)?;
                match self.save.as_mut() {
                    Some(s) => {
                        s.enter_stop_copy();
                        Ok(())
                    }
                    None => Err(ArcFailure::fatal(ArcError::NoArc { from, to })),
                }
            }
            (S::Stop, S::StopCopy) => {
                let mut s = SaveSession::start(self.dev).map_err(recoverable)?;
                s.enter_stop_copy();
                *self.save = Some(s);
                Ok(())
            }
            (S::Stop, S::Resuming) => {
                *self.load = Some(LoadSession::new(self.dev));
                Ok(())
            }
            (S::Resuming, S::Stop) => {
                let Some(l) = self.load.as_mut() else {
                    return Err(ArcFailure::fatal(ArcError::NoArc { from, to }));
                };
                // A bad stream leaves RESUMING (the device is quiesced and
                // never ran it); only a reset aborts the session.
                let sum = l
                    .finish(self.dma)
                    .map_err(|e| ArcFailure::recoverable(ArcError::Load(e)))?;
                *self.load = None;
                *self.last_load = Some(sum);
                Ok(())
            }
            _ => Err(ArcFailure::fatal(ArcError::NoArc { from, to })),
        }
    }
}

impl MigrationEngine {
    /// An engine in RUNNING advertising [`MigrationFlags::VFPGA`].
    pub fn new(cfg: EngineConfig) -> Self {
        MigrationEngine {
            fsm: Fsm::new(MigrationFlags::VFPGA),
            save: None,
            load: None,
            dma: cfg.dma,
            generation: 0,
            last_load: None,
            logging: DmaLogging::new(),
        }
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the advertised flags.
    pub fn flags(&self) -> MigrationFlags {
        self.fsm.flags()
    }

    /// GET `MIG_DEVICE_STATE`.
    pub fn state(&self) -> MigState {
        self.fsm.state()
    }

    /// Increases on every state change and reset; a v1 region uses it to
    /// end its iteration when the state moved underneath it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the last successful resume loaded.
    pub fn last_load(&self) -> Option<&Summary> {
        self.last_load.as_ref()
    }

    /// DMA logging (`DMA_LOGGING_START/STOP/REPORT`); a reset stops it.
    pub fn dma_logging(&mut self) -> &mut DmaLogging {
        &mut self.logging
    }

    /// The open save session, if any.
    pub fn save_session(&self) -> Option<&SaveSession> {
        self.save.as_ref()
    }

    /// The open load session, if any.
    pub fn load_session(&self) -> Option<&LoadSession> {
        self.load.as_ref()
    }

    /// SET `MIG_DEVICE_STATE` with a raw uAPI value. Runs every arc of the
    /// shortest path; on failure the state is the last one reached (or
    /// ERROR), as [`FsmError`] reports.
    pub fn set_state<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        target: u32,
    ) -> Result<MigState, EngineError> {
        let before = self.fsm.state();
        let mut arcs = Arcs {
            dev,
            save: &mut self.save,
            load: &mut self.load,
            dma: self.dma.as_ref(),
            last_load: &mut self.last_load,
        };
        let r = self.fsm.set_state(target, &mut arcs);
        if self.fsm.state() != before {
            self.generation += 1;
        }
        if self.fsm.state() == MigState::Error {
            self.save = None;
            self.load = None;
        }
        Ok(r?)
    }

    /// VFIO_DEVICE_RESET: soft-resets the device, ends any session, stops
    /// DMA logging and returns to RUNNING from every state, ERROR included.
    pub fn reset<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<(), EngineError> {
        self.save = None;
        self.load = None;
        self.generation += 1;
        self.fsm.reset();
        self.logging.reset();
        dev.soft_reset().map_err(EngineError::Device)
    }

    /// MIG_DATA_READ: the next bytes of the save stream. Fewer bytes than
    /// `buf` holds means end of data: temporary in PRE_COPY, permanent in
    /// STOP_COPY (every later read returns 0).
    pub fn read_data<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        buf: &mut [u8],
    ) -> Result<usize, EngineError> {
        let state = self.fsm.state();
        match (&mut self.save, state.is_saving()) {
            (Some(s), true) => s.read(dev, buf).map_err(EngineError::Device),
            _ => Err(EngineError::WrongState {
                op: "reading migration data",
                state,
            }),
        }
    }

    /// MIG_DATA_WRITE: the next bytes of the stream being resumed. All of
    /// `data` is taken, or the stream is rejected (never a short write).
    pub fn write_data<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        data: &[u8],
    ) -> Result<usize, EngineError> {
        let state = self.fsm.state();
        match (&mut self.load, state) {
            (Some(l), MigState::Resuming) => l.write(dev, data).map_err(EngineError::Stream),
            _ => Err(EngineError::WrongState {
                op: "writing migration data",
                state,
            }),
        }
    }

    /// VFIO_MIG_GET_PRECOPY_INFO (PRE_COPY only).
    pub fn precopy_info<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
    ) -> Result<PrecopyInfo, EngineError> {
        let state = self.fsm.state();
        match (&mut self.save, state) {
            (Some(s), MigState::PreCopy) => s.precopy_info(dev).map_err(EngineError::Device),
            _ => Err(EngineError::WrongState {
                op: "PRECOPY_INFO",
                state,
            }),
        }
    }

    /// VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: bytes still needed to complete
    /// stop-and-copy. With no save session open, the size of a complete
    /// image without pre-copy (never 0).
    pub fn stop_copy_size<D: Device + ?Sized>(&mut self, dev: &mut D) -> Result<u64, EngineError> {
        match &mut self.save {
            Some(s) => s.stop_copy_bytes(dev).map_err(EngineError::Device),
            None => Ok(image_bytes(2, u64::from(dev.info().identity.devmem_pages))),
        }
    }

    /// The pre-copy convergence advice (PRE_COPY only).
    pub fn advice<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        policy: &ConvergencePolicy,
    ) -> Result<Advice, EngineError> {
        let state = self.fsm.state();
        match (&mut self.save, state) {
            (Some(s), MigState::PreCopy) => s.advice(dev, policy).map_err(EngineError::Device),
            _ => Err(EngineError::WrongState {
                op: "pre-copy advice",
                state,
            }),
        }
    }
}
