//! vfpga-sim: the device's RTL (`rtl/`), Verilated and run in-process, as a
//! [`Device`] backend.
//!
//! `build.rs` verilates `rtl/` and compiles it with a small C ABI shim
//! (`csrc/shim.cpp`). The model and its harness sit behind a mutex: an MMIO
//! access or command runs on the caller's thread, holding the mutex, with
//! no hand-off to another thread (an access costs the cycles the RTL takes
//! to answer it, nothing more). In free-running mode a clock thread holds
//! it while it clocks a busy device, a chunk of cycles at a time, and gives
//! way to a caller between chunks.
//!
//! The harness serves the RTL's ports:
//! - DMA requests go to the [`DmaPort`] (bounds-checked guest memory); a
//!   refused access is answered with a fault, which is the RTL's error path;
//! - device memory is a host buffer (zero pages cost nothing until written);
//! - interrupt messages go to the [`IrqSink`].
//!
//! It also checks the core's side of those ports: an MMIO response nobody
//! asked for, a DMA or device-memory request presented when no step may
//! issue one (after a reset, before the core was first idle, or while it is
//! idle), or a second DMA request before the first one's response is a
//! broken port rule. The harness then stops clocking the core and every
//! later call fails with [`SimError::Protocol`]'s message (a cross-check
//! reports it as an error). [`SimDevice::set_stall`] makes the request and
//! response ports stall at random (back-pressure, deterministic per seed).
//!
//! Two clockings ([`Clocking`]): **explicit** (`advance(n)` runs exactly `n`
//! cycles; deterministic, used by the cross-check) and **free-running** (the
//! clock thread clocks while the device is busy and blocks while it is idle, so an
//! idle device costs no CPU; `info().self_running` is true). MMIO accesses
//! take the cycles the RTL needs to answer in both modes. In free-running
//! mode `advance(n)` waits until `n` more cycles have passed or the device is
//! idle, and reports `used: 0` (the device runs by itself); the timer then
//! counts simulated cycles, which stop while the device is idle.
//! [`SimDevice::run_steps`] runs the RTL engine step by step (explicit mode),
//! for the lockstep cross-check against the model.
//!
//! Device memory backdoor: [`Device::devmem_read`] and
//! [`Device::devmem_write`] copy directly from and to the buffer (under one
//! lock), and `devmem_write` then writes one byte of every page it touched
//! again through the RTL's BAR2 path, so the RTL's dirty bitmap is exactly
//! as if the whole range had been written through BAR2.
//!
//! Built without Verilator, [`SimDevice::new`] returns
//! [`SimError::Unavailable`], which says what to install.

#![deny(unsafe_code)]

mod ffi;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vfpga_device::DeviceState;
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DmaFault, DmaPort, Identity, IrqSink, Progress,
};
use vfpga_regs::{ArchState, StateCtrl, Status, consts, offsets, state as sw};

pub use ffi::AVAILABLE;

/// How the simulated device is clocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clocking {
    /// The caller advances the clock: `advance(n)` runs exactly `n` cycles.
    #[default]
    Explicit,
    /// The thread clocks while the device is busy and sleeps while idle.
    FreeRunning,
}

/// Options of a simulated device.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Device memory in 4 KiB pages: a power of two, 1..=`MAX_DEVMEM_PAGES`.
    pub devmem_pages: u32,
    /// Largest DMA-log window (`DMALOG_MAX_PAGES`), at most `MAX_DMALOG_PAGES`.
    pub dmalog_max_pages: u32,
    /// Clocking mode.
    pub clocking: Clocking,
    /// Write a VCD waveform of the whole run to this file.
    pub vcd: Option<PathBuf>,
    /// Seed of the random values every register and memory bit of the RTL
    /// holds before its first reset (0: all zeros). A register the reset
    /// forgets then differs between seeds instead of reading 0.
    pub x_seed: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            devmem_pages: 256,
            dmalog_max_pages: consts::MAX_DMALOG_PAGES,
            clocking: Clocking::Explicit,
            vcd: None,
            x_seed: 0,
        }
    }
}

/// Counters of a simulated device since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Clock cycles simulated (reset, MMIO accesses and `advance` included).
    pub cycles: u64,
    /// DMA read requests the RTL issued.
    pub dma_reads: u64,
    /// DMA write requests the RTL issued.
    pub dma_writes: u64,
    /// DMA requests the DMA port refused (answered with a fault).
    pub dma_faults: u64,
    /// Interrupt messages sent.
    pub irqs: u64,
    /// Engine steps completed (datasheet §5.3: fetch, burst or complete).
    pub steps: u64,
}

/// The kind of an engine step (datasheet §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// A descriptor fetch.
    Fetch,
    /// A data burst.
    Burst,
    /// A completion.
    Complete,
}

/// Time a benchmark run took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchTime {
    /// Wall-clock time.
    pub wall: Duration,
    /// CPU time of the thread that ran the model (the caller's; from
    /// `/proc/thread-self/schedstat`;
    /// `None` where that is not available). Unlike wall time it does not count
    /// time other processes took the CPU away.
    pub cpu: Option<Duration>,
}

/// CPU time of the calling thread in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Errors of the simulator backend.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// This build has no Verilated RTL.
    #[error(
        "vfpga-sim was built without Verilator: install it (apt-get install verilator, \
         or run scripts/setup) and rebuild"
    )]
    Unavailable,
    /// Bad options.
    #[error("invalid simulator option: {0}")]
    Options(String),
    /// The clock thread could not be started or the model not created.
    #[error("simulator failed to start: {0}")]
    Start(String),
    /// The RTL broke a rule of its ports (see the crate docs).
    #[error("the RTL broke a port rule: {0}")]
    Protocol(String),
}

impl From<SimError> for DeviceError {
    fn from(e: SimError) -> Self {
        DeviceError::Backend {
            msg: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// Cycles a single MMIO access may take before the harness gives up (a soft
/// reset clears both bitmaps: about 4,100 cycles at the largest sizes).
const MMIO_CYCLE_LIMIT: u64 = 1 << 20;
/// Cycles the free-running clock runs between chances for a caller to
/// take the device.
const FREE_RUN_CHUNK: u64 = 512;
/// Longest sleep of the idle clock thread, or of a free-running `advance`,
/// between looks at the device (both are woken early when it changes).
const FREE_RUN_WAIT: Duration = Duration::from_millis(20);

enum Cmd {
    Mmio {
        bar2: bool,
        write: bool,
        addr: u32,
        be: u8,
        wdata: u64,
    },
    Batch(Vec<RegOp>),
    Advance(u64),
    RunUntilIdle(u64),
    RunSteps {
        steps: u64,
        max_cycles: u64,
    },
    DevmemRead {
        offset: u64,
        len: usize,
    },
    DevmemWrite {
        offset: u64,
        data: Vec<u8>,
    },
    Stats,
    Bench {
        cycles: u64,
        bare: Option<(u64, Vec<u8>)>,
    },
    HwReset(u32),
    Pipelined(Vec<PipeReq>),
    HwResetThen(u32, Vec<PipeReq>),
    Stall {
        seed: u64,
        pct: u8,
    },
    Pins,
}

/// One raw request of a pipelined MMIO sequence ([`SimDevice::mmio_pipelined`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeReq {
    /// BAR2 instead of BAR0.
    pub bar2: bool,
    /// Write instead of read.
    pub write: bool,
    /// Address of the 64-bit word (bits 2:0 ignored).
    pub addr: u32,
    /// Byte enables.
    pub be: u8,
    /// Write data on its lanes.
    pub wdata: u64,
    /// Idle cycles between the acceptance of the previous request and the
    /// presentation of this one (0: the very next cycle, while the previous
    /// access is still being served).
    pub gap: u32,
}

/// One BAR0 register access of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// Read the register at this offset.
    Read(u32),
    /// Write a value to the register at this offset.
    Write(u32, u32),
}

enum Reply {
    Mmio(u64),
    Values(Vec<u32>),
    Progress(Progress),
    Data(Vec<u8>),
    Done,
    Stats(SimStats),
    Bench(BenchTime),
    Steps(Vec<StepKind>, u64),
    Values64(Vec<u64>),
    Err(String),
}

/// What the callers and the clock thread share.
struct Shared {
    harness: Mutex<Harness>,
    /// The clock thread waits here while the device is idle.
    work: Condvar,
    /// A free-running `advance` waiting for cycles to pass (taken after
    /// `harness` when both are held).
    slot: Mutex<AdvanceSlot>,
    /// The `advance` caller waits here, on `slot` (not on the harness, so
    /// that the clock thread keeps it).
    progress: Condvar,
    /// Callers waiting for the mutex: the clock thread gives way to them
    /// between chunks.
    wanted: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Harness> {
        self.wanted.fetch_add(1, Ordering::AcqRel);
        let g = self.harness.lock().unwrap_or_else(|e| e.into_inner());
        self.wanted.fetch_sub(1, Ordering::AcqRel);
        g
    }
}

/// What a free-running `advance` waits for.
#[derive(Debug, Default)]
struct AdvanceSlot {
    /// Wake the caller once the simulated cycles reach this.
    target: Option<u64>,
    /// Set by the clock thread when the wait is over: whether the device is
    /// idle.
    done: Option<bool>,
}

impl AdvanceSlot {
    /// Ends the wait if the device is idle, has reached the target, or its
    /// DMA waits for an answer (the caller must not hold the device while
    /// the answer is on its way).
    fn check(&mut self, h: &mut Harness) -> bool {
        let Some(t) = self.target else {
            return false;
        };
        let idle = h.model.idle();
        if idle || h.cycles >= t || h.dma_wait.is_some() || h.fault.is_some() {
            self.target = None;
            self.done = Some(idle);
            return true;
        }
        false
    }
}

fn lock_slot(m: &Mutex<AdvanceSlot>) -> MutexGuard<'_, AdvanceSlot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The vfpga RTL under Verilator, behind the [`Device`] seam.
pub struct SimDevice {
    info: DeviceInfo,
    clocking: Clocking,
    shared: Arc<Shared>,
    clock: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("info", &self.info)
            .field("clocking", &self.clocking)
            .finish_non_exhaustive()
    }
}

impl SimDevice {
    /// Starts a simulated device whose DMA goes to `dma` and whose interrupt
    /// messages go to `irq`.
    pub fn new(opts: SimOptions, dma: DmaPort, irq: Arc<dyn IrqSink>) -> Result<Self, SimError> {
        if !AVAILABLE {
            return Err(SimError::Unavailable);
        }
        let p = opts.devmem_pages;
        if p == 0 || !p.is_power_of_two() || p > consts::MAX_DEVMEM_PAGES {
            return Err(SimError::Options(format!(
                "devmem_pages {p} is not a power of two in 1..={}",
                consts::MAX_DEVMEM_PAGES
            )));
        }
        if opts.dmalog_max_pages > consts::MAX_DMALOG_PAGES {
            return Err(SimError::Options(format!(
                "dmalog_max_pages {} is above {}",
                opts.dmalog_max_pages,
                consts::MAX_DMALOG_PAGES
            )));
        }
        let Some(model) = ffi::Model::new(
            opts.devmem_pages,
            opts.dmalog_max_pages,
            opts.vcd.as_deref(),
            opts.x_seed,
        ) else {
            return Err(SimError::Start(
                "the Verilated model could not be created".into(),
            ));
        };
        let bytes = opts.devmem_pages as usize * consts::PAGE_SIZE as usize;
        let mut h = Harness {
            model,
            mem: vec![0u8; bytes],
            dma,
            irq,
            ev: ffi::SimEvent::default(),
            mmio_rsp: None,
            cycles: 0,
            stats: SimStats::default(),
            dma_wait: None,
            fault: None,
        };
        // Let the reset sweep of the bitmaps finish.
        h.run_until_idle(1 << 20);
        if let Some(f) = h.fault.take() {
            return Err(SimError::Protocol(f));
        }
        let shared = Arc::new(Shared {
            harness: Mutex::new(h),
            work: Condvar::new(),
            slot: Mutex::new(AdvanceSlot::default()),
            progress: Condvar::new(),
            wanted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let clock = if opts.clocking == Clocking::FreeRunning {
            let sh = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("vfpga-sim-clock".into())
                    .spawn(move || clock_thread(&sh))
                    .map_err(|e| SimError::Start(e.to_string()))?,
            )
        } else {
            None
        };
        let info = DeviceInfo {
            identity: Identity::this_build(p, opts.dmalog_max_pages),
            bar0_size: consts::BAR0_SIZE.into(),
            bar2_size: u64::from(p) * u64::from(consts::PAGE_SIZE),
            self_running: opts.clocking == Clocking::FreeRunning,
        };
        Ok(SimDevice {
            info,
            clocking: opts.clocking,
            shared,
            clock,
        })
    }

    /// The clocking mode.
    pub fn clocking(&self) -> Clocking {
        self.clocking
    }

    /// Runs `cmd` on this thread with the harness locked.
    fn call(&mut self, cmd: Cmd) -> Result<Reply, DeviceError> {
        let free = self.clocking == Clocking::FreeRunning;
        let mut h = self.shared.lock();
        let reply = match cmd {
            Cmd::Advance(n) if free => {
                // The device runs by itself: wait until `n` more cycles have
                // passed or it is idle (the clock thread decides; see
                // `AdvanceSlot::check`), with the harness unlocked.
                {
                    let mut slot = lock_slot(&self.shared.slot);
                    slot.target = Some(h.cycles.saturating_add(n));
                    slot.done = None;
                    slot.check(&mut h);
                }
                self.shared.work.notify_one();
                drop(h);
                let mut slot = lock_slot(&self.shared.slot);
                let idle = loop {
                    if let Some(idle) = slot.done.take() {
                        break idle;
                    }
                    slot = self
                        .shared
                        .progress
                        .wait_timeout(slot, FREE_RUN_WAIT)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                };
                drop(slot);
                return Ok(Reply::Progress(Progress { used: 0, idle }));
            }
            cmd => handle(&mut h, cmd),
        };
        // A broken port rule fails this call and every later one.
        let reply = match &h.fault {
            Some(f) => Reply::Err(SimError::Protocol(f.clone()).to_string()),
            None => reply,
        };
        if free && !h.model.idle() {
            self.shared.work.notify_one();
        }
        drop(h);
        match reply {
            Reply::Err(msg) => Err(DeviceError::Backend { msg, source: None }),
            r => Ok(r),
        }
    }

    fn mmio(
        &mut self,
        bar2: bool,
        write: bool,
        addr: u32,
        be: u8,
        wdata: u64,
    ) -> Result<u64, DeviceError> {
        match self.call(Cmd::Mmio {
            bar2,
            write,
            addr,
            be,
            wdata,
        })? {
            Reply::Mmio(v) => Ok(v),
            _ => Err(protocol_error()),
        }
    }

    /// Performs BAR0 register accesses in order, under one lock of the
    /// simulator, and returns the values read (one per `Read`). Each
    /// access goes through the RTL's MMIO port exactly as a single one would.
    pub fn reg_batch(&mut self, ops: &[RegOp]) -> Result<Vec<u32>, DeviceError> {
        for op in ops {
            let (RegOp::Read(o) | RegOp::Write(o, _)) = *op;
            check_access(&self.info, Bar::Regs, u64::from(o), 4)?;
            if o % 4 != 0 {
                return Err(DeviceError::BadAccess {
                    bar: Bar::Regs,
                    offset: u64::from(o),
                    len: 4,
                });
            }
        }
        match self.call(Cmd::Batch(ops.to_vec()))? {
            Reply::Values(v) => Ok(v),
            _ => Err(protocol_error()),
        }
    }

    /// Runs until `steps` more engine steps have completed, or the device is
    /// idle, or `max_cycles` cycles have passed (explicit clocking only).
    /// Returns the kinds of the steps taken and the cycles used. The
    /// cross-check uses this to compare the RTL with the model step by step.
    pub fn run_steps(
        &mut self,
        steps: u64,
        max_cycles: u64,
    ) -> Result<(Vec<StepKind>, u64), DeviceError> {
        if self.clocking != Clocking::Explicit {
            return Err(DeviceError::Device(
                "run_steps needs explicit clocking".into(),
            ));
        }
        match self.call(Cmd::RunSteps { steps, max_cycles })? {
            Reply::Steps(k, c) => Ok((k, c)),
            _ => Err(protocol_error()),
        }
    }

    /// Hardware reset: holds the core's `rst_n` low for `cycles` cycles
    /// (at least 1) wherever it is, even inside a step. A DMA request the
    /// core is waiting for is abandoned (no response is given; a pending
    /// answer is dropped). Then lets the bitmap sweep finish. Device memory
    /// (the harness buffer, outside the core) keeps its contents.
    pub fn hw_reset(&mut self, cycles: u32) -> Result<(), DeviceError> {
        match self.call(Cmd::HwReset(cycles))? {
            Reply::Done => Ok(()),
            _ => Err(protocol_error()),
        }
    }

    /// Hardware reset ([`SimDevice::hw_reset`]) with `reqs` presented on
    /// the MMIO port from the cycle the reset is released, back to back as
    /// in [`SimDevice::mmio_pipelined`]: the first is taken as soon as the
    /// core takes any access, inside or right at the end of the post-reset
    /// bitmap sweep. Returns the response data of each, in order; then lets
    /// the core run until idle.
    pub fn hw_reset_then(
        &mut self,
        cycles: u32,
        reqs: &[PipeReq],
    ) -> Result<Vec<u64>, DeviceError> {
        match self.call(Cmd::HwResetThen(cycles, reqs.to_vec()))? {
            Reply::Values64(v) => Ok(v),
            _ => Err(protocol_error()),
        }
    }

    /// Presents `reqs` back to back on the RTL's MMIO port: each request is
    /// presented `gap` cycles after the previous one was accepted (gap 0:
    /// while the previous one is still being served), without waiting for
    /// its response. Returns the response data of each, in order. Raw port
    /// requests: BAR0 accesses are not split (`be` as given).
    pub fn mmio_pipelined(&mut self, reqs: &[PipeReq]) -> Result<Vec<u64>, DeviceError> {
        match self.call(Cmd::Pipelined(reqs.to_vec()))? {
            Reply::Values64(v) => Ok(v),
            _ => Err(protocol_error()),
        }
    }

    /// Back-pressure from now on: the DMA request, device-memory request
    /// and MMIO response ports each drop `ready` on `pct` percent of the
    /// cycles (at most 95; 0: always ready), drawn from a generator seeded
    /// with `seed`, as a vendor bridge or memory controller may stall. The
    /// same seed gives the same stalls for the same run (deterministic).
    pub fn set_stall(&mut self, seed: u64, pct: u8) -> Result<(), DeviceError> {
        match self.call(Cmd::Stall { seed, pct })? {
            Reply::Done => Ok(()),
            _ => Err(protocol_error()),
        }
    }

    /// One request presented to the RTL's MMIO port as it is, with no
    /// check of width, alignment or range (unlike [`Device::mmio_read`] and
    /// [`Device::mmio_write`], which refuse what the seam cannot express):
    /// the 64-bit word at `addr & !7` with byte enables `be`, written with
    /// `write` (on its lanes) or read. Returns the port's response data (0
    /// for a write). For the cross-check and tests, which compare the RTL's
    /// own answer to such accesses with the datasheet; a driver never needs
    /// it.
    pub fn mmio_raw(
        &mut self,
        bar2: bool,
        write: Option<u64>,
        addr: u32,
        be: u8,
    ) -> Result<u64, DeviceError> {
        let r = PipeReq {
            bar2,
            write: write.is_some(),
            addr,
            be,
            wdata: write.unwrap_or(0),
            gap: 0,
        };
        match self.call(Cmd::Pipelined(vec![r]))? {
            Reply::Values64(v) => v.first().copied().ok_or_else(protocol_error),
            _ => Err(protocol_error()),
        }
    }

    /// The core's `intx` output (the legacy INTx level, datasheet §4) and
    /// whether the core is idle (nothing changes until an MMIO access), as
    /// they are now, between accesses.
    pub fn intx_idle(&mut self) -> Result<(bool, bool), DeviceError> {
        match self.call(Cmd::Pins)? {
            Reply::Values(v) if v.len() == 2 => Ok((v[0] != 0, v[1] != 0)),
            _ => Err(protocol_error()),
        }
    }

    /// What the simulator has done so far.
    pub fn stats(&mut self) -> Result<SimStats, DeviceError> {
        match self.call(Cmd::Stats)? {
            Reply::Stats(s) => Ok(s),
            _ => Err(protocol_error()),
        }
    }

    /// Benchmark: runs `cycles` cycles and returns the wall time they took.
    /// With `bare = Some((iova, memory))` the model is clocked instead by the
    /// shim's minimal C++ loop, which serves DMA from that one flat copy of
    /// guest memory (the baseline of the harness-overhead figure).
    pub fn bench_run(
        &mut self,
        cycles: u64,
        bare: Option<(u64, Vec<u8>)>,
    ) -> Result<BenchTime, DeviceError> {
        match self.call(Cmd::Bench { cycles, bare })? {
            Reply::Bench(t) => Ok(t),
            _ => Err(protocol_error()),
        }
    }
}

fn protocol_error() -> DeviceError {
    DeviceError::Backend {
        msg: "unexpected reply from the simulator".into(),
        source: None,
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.work.notify_all();
        if let Some(t) = self.clock.take() {
            let _ = t.join();
        }
        self.shared.lock().model.flush_trace();
    }
}

/// Splits a BAR0 access into the 64-bit words the RTL takes: `(addr, be,
/// shift)` per word. `None`: a width the registers do not take.
fn bar0_words(offset: u64, len: usize) -> Option<Vec<(u32, u8, u32)>> {
    let o = offset as u32;
    match (len, o % 8) {
        (4, 0) => Some(vec![(o, 0x0f, 0)]),
        (4, 4) => Some(vec![(o & !7, 0xf0, 0)]),
        (8, 0) => Some(vec![(o, 0xff, 0)]),
        (8, 4) => Some(vec![(o & !7, 0xf0, 0), (o + 4, 0x0f, 32)]),
        _ => None,
    }
}

impl Device for SimDevice {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let len = data.len();
        check_access(&self.info, bar, offset, len)?;
        match bar {
            Bar::Regs => {
                let Some(words) = bar0_words(offset, len) else {
                    data.fill(0xff);
                    return Ok(());
                };
                let mut v = 0u64;
                for (addr, be, shift) in words {
                    let r = self.mmio(false, false, addr, be, 0)?;
                    let r = if be == 0xf0 { r >> 32 } else { r };
                    let r = if be == 0xff { r } else { r & 0xffff_ffff };
                    v |= r << shift;
                }
                data.copy_from_slice(&v.to_le_bytes()[..len]);
            }
            Bar::DevMem => {
                // One RTL access per 8-byte word the access touches.
                let mut i = 0;
                while i < len {
                    let a = offset + i as u64;
                    let lane = (a % 8) as usize;
                    let n = (8 - lane).min(len - i);
                    let be = (((1u16 << n) - 1) << lane) as u8;
                    let r = self.mmio(true, false, (a & !7) as u32, be, 0)?;
                    data[i..i + n].copy_from_slice(&r.to_le_bytes()[lane..lane + n]);
                    i += n;
                }
            }
        }
        Ok(())
    }

    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let len = data.len();
        check_access(&self.info, bar, offset, len)?;
        match bar {
            Bar::Regs => {
                let Some(words) = bar0_words(offset, len) else {
                    return Ok(());
                };
                let mut b = [0u8; 8];
                b[..len].copy_from_slice(data);
                let v = u64::from_le_bytes(b);
                for (addr, be, shift) in words {
                    let w = (v >> shift) & 0xffff_ffff;
                    let w = match be {
                        0xf0 => w << 32,
                        0xff => v,
                        _ => w,
                    };
                    self.mmio(false, true, addr, be, w)?;
                }
            }
            Bar::DevMem => {
                let mut i = 0;
                while i < len {
                    let a = offset + i as u64;
                    let lane = (a % 8) as usize;
                    let n = (8 - lane).min(len - i);
                    let be = (((1u16 << n) - 1) << lane) as u8;
                    let mut b = [0u8; 8];
                    b[lane..lane + n].copy_from_slice(&data[i..i + n]);
                    self.mmio(true, true, (a & !7) as u32, be, u64::from_le_bytes(b))?;
                    i += n;
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, budget: u64) -> Result<Progress, DeviceError> {
        match self.call(Cmd::Advance(budget))? {
            Reply::Progress(p) => Ok(p),
            _ => Err(protocol_error()),
        }
    }

    fn run_until_idle(&mut self, max_units: u64) -> Result<u64, DeviceError> {
        match self.call(Cmd::RunUntilIdle(max_units))? {
            Reply::Progress(p) => Ok(p.used),
            _ => Err(protocol_error()),
        }
    }

    fn save_state(&mut self) -> Result<DeviceState, DeviceError> {
        // The provided sequence, under one lock.
        let mut ops = vec![
            RegOp::Read(offsets::STATUS),
            RegOp::Write(offsets::STATE_IDX, 0),
        ];
        ops.extend((0..sw::WORDS).map(|_| RegOp::Read(offsets::STATE_DATA)));
        if !Status::from_bits_retain(self.read_reg(offsets::STATUS)?).contains(Status::QUIESCED) {
            return Err(DeviceError::NotQuiesced("save_state"));
        }
        let v = self.reg_batch(&ops[1..])?;
        let mut w = [0u32; sw::WORDS];
        w.copy_from_slice(&v);
        Ok(DeviceState::new(
            self.info.identity,
            ArchState::from_words(&w),
        ))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        if !Status::from_bits_retain(self.read_reg(offsets::STATUS)?).contains(Status::QUIESCED) {
            return Err(DeviceError::NotQuiesced("restore_state"));
        }
        vfpga_device::check_compatible(&self.info.identity, &state.identity)?;
        let mut ops = vec![RegOp::Write(offsets::STATE_IDX, 0)];
        ops.extend(
            state
                .arch
                .to_words()
                .iter()
                .map(|&w| RegOp::Write(offsets::STATE_DATA, w)),
        );
        ops.push(RegOp::Write(
            offsets::STATE_CTRL,
            StateCtrl::VALIDATE.bits(),
        ));
        self.reg_batch(&ops)?;
        match self.state_error()? {
            None => Ok(()),
            Some(v) => Err(v.into()),
        }
    }

    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_devmem(&self.info, offset, buf.len())?;
        match self.call(Cmd::DevmemRead {
            offset,
            len: buf.len(),
        })? {
            Reply::Data(d) => {
                buf.copy_from_slice(&d);
                Ok(())
            }
            _ => Err(protocol_error()),
        }
    }

    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        check_devmem(&self.info, offset, data.len())?;
        match self.call(Cmd::DevmemWrite {
            offset,
            data: data.to_vec(),
        })? {
            Reply::Done => Ok(()),
            _ => Err(protocol_error()),
        }
    }
}

fn check_access(info: &DeviceInfo, bar: Bar, offset: u64, len: usize) -> Result<(), DeviceError> {
    let size = match bar {
        Bar::Regs => info.bar0_size,
        Bar::DevMem => info.bar2_size,
    };
    let ok =
        matches!(len, 1 | 2 | 4 | 8) && offset.checked_add(len as u64).is_some_and(|e| e <= size);
    if ok {
        Ok(())
    } else {
        Err(DeviceError::BadAccess { bar, offset, len })
    }
}

fn check_devmem(info: &DeviceInfo, offset: u64, len: usize) -> Result<(), DeviceError> {
    if offset
        .checked_add(len as u64)
        .is_some_and(|e| e <= info.bar2_size)
    {
        Ok(())
    } else {
        Err(DeviceError::BadAccess {
            bar: Bar::DevMem,
            offset,
            len,
        })
    }
}

// ---------------------------------------------------------------------------
// The harness (runs on whichever thread holds the mutex).

struct Harness {
    model: ffi::Model,
    mem: Vec<u8>,
    dma: DmaPort,
    irq: Arc<dyn IrqSink>,
    ev: ffi::SimEvent,
    mmio_rsp: Option<u64>,
    cycles: u64,
    stats: SimStats,
    /// A DMA request the RTL made whose answer has not arrived
    /// ([`DmaFault::Pending`]): the RTL waits for its response while the
    /// harness keeps serving MMIO.
    dma_wait: Option<DmaReq>,
    /// The first port rule the core broke: the harness no longer clocks it.
    fault: Option<String>,
}

/// One DMA request of the RTL (at most one 64-byte beat).
#[derive(Debug)]
struct DmaReq {
    write: bool,
    addr: u64,
    len: usize,
    data: [u8; 64],
}

/// How long the harness waits for a pending DMA answer before it looks for
/// MMIO again.
const DMA_WAIT_SLICE: Duration = Duration::from_micros(200);

impl Harness {
    /// Runs up to `max` cycles serving every port; stops early when an MMIO
    /// response arrives and `stop_on_mmio` is set. Returns the cycles run.
    /// While a DMA answer is pending, MMIO still runs (the RTL answers it
    /// while its DMA waits); otherwise the harness waits a slice for the
    /// answer and returns without clocking if it has not come.
    fn run(&mut self, max: u64, stop_on_mmio: bool) -> u64 {
        let mut used = 0;
        while used < max && self.fault.is_none() {
            if !self.retry_dma() && !stop_on_mmio {
                self.dma.wait_pending(DMA_WAIT_SLICE);
                if !self.retry_dma() {
                    break;
                }
            }
            self.model.run(max - used, &mut self.mem, &mut self.ev);
            used += self.ev.cycles;
            let f = self.ev.flags;
            if f & ffi::EV_FAULT != 0 {
                self.fault = Some(fault_text(self.ev.fault, self.cycles + used));
                break;
            }
            if f & ffi::EV_DMA != 0 {
                self.serve_dma();
            }
            if f & ffi::EV_IRQ != 0 {
                self.stats.irqs += 1;
                self.irq.raise(self.ev.irq_vector as u16);
            }
            if f & ffi::EV_MMIO != 0 {
                self.mmio_rsp = Some(self.ev.mmio_rdata);
                if stop_on_mmio {
                    break;
                }
            }
            if f & ffi::EV_STEP != 0 {
                break; // only reported while run_steps asks for it
            }
        }
        self.cycles += used;
        used
    }

    fn serve_dma(&mut self) {
        let req = DmaReq {
            write: self.ev.dma_write != 0,
            addr: self.ev.dma_addr,
            len: (self.ev.dma_len as usize).min(64),
            data: self.ev.dma_data,
        };
        if req.write {
            self.stats.dma_writes += 1;
        } else {
            self.stats.dma_reads += 1;
        }
        self.dma_wait = Some(req);
        self.retry_dma();
    }

    /// Tries the pending DMA request (if any) and responds to the RTL once
    /// it is answered. Returns `false` while the answer is still pending.
    fn retry_dma(&mut self) -> bool {
        let Some(req) = self.dma_wait.take() else {
            return true;
        };
        let mut buf = [0u8; 64];
        let r = if req.write {
            self.dma.write(req.addr, &req.data[..req.len])
        } else {
            self.dma.read(req.addr, &mut buf[..req.len])
        };
        match r {
            Err(DmaFault::Pending { .. }) => {
                self.dma_wait = Some(req);
                false
            }
            Ok(()) => {
                let data: &[u8] = if req.write { &[] } else { &buf[..req.len] };
                self.model.dma_respond(true, data);
                true
            }
            Err(_) => {
                self.stats.dma_faults += 1;
                self.model.dma_respond(false, &[]);
                true
            }
        }
    }

    fn mmio(
        &mut self,
        bar2: bool,
        write: bool,
        addr: u32,
        be: u8,
        wdata: u64,
    ) -> Result<u64, String> {
        if !bar2 && be == 0xff && self.dma.any_may_pend() {
            // A 64-bit BAR0 access is two 32-bit accesses, low half first
            // (datasheet §1). Where DMA may wait for a client (the only case
            // in which a step can wait long), it is issued as such, so that
            // each half may be served during that wait (datasheet §5.3).
            let lo = self.mmio(false, write, addr, 0x0f, wdata & 0xffff_ffff)?;
            let hi = self.mmio(false, write, addr, 0xf0, wdata & !0xffff_ffff)?;
            return Ok((lo & 0xffff_ffff) | (hi & !0xffff_ffff));
        }
        self.mmio_rsp = None;
        self.model.mmio(bar2, write, addr, be, wdata);
        let mut spent = 0;
        while self.mmio_rsp.is_none() {
            if let Some(f) = &self.fault {
                return Err(f.clone());
            }
            if self.dma_wait.is_some() && spent >= 64 {
                // The RTL answers a 32-bit BAR0 read during a long DMA wait
                // (it has had the cycles for that); anything else waits for
                // the DMA answer, which is not counted against the limit.
                self.dma.wait_pending(DMA_WAIT_SLICE);
                self.retry_dma();
                spent = 0;
            }
            if spent >= MMIO_CYCLE_LIMIT {
                return Err(format!(
                    "MMIO access to {} offset {addr:#x} not answered in {MMIO_CYCLE_LIMIT} cycles",
                    if bar2 { "BAR2" } else { "BAR0" }
                ));
            }
            spent += self.run(if self.dma_wait.is_some() { 64 } else { 4096 }, true);
        }
        Ok(self.mmio_rsp.take().unwrap_or(0))
    }

    fn run_steps(&mut self, steps: u64, max: u64) -> (Vec<StepKind>, u64) {
        let mut kinds = Vec::new();
        let mut used = 0;
        self.model.stop_on_step(true);
        while (kinds.len() as u64) < steps
            && used < max
            && !self.model.idle()
            && self.fault.is_none()
        {
            used += self.run(max - used, false);
            if self.ev.flags & ffi::EV_STEP != 0 {
                kinds.push(match self.ev.step_kind {
                    0 => StepKind::Fetch,
                    1 => StepKind::Burst,
                    _ => StepKind::Complete,
                });
            }
        }
        self.model.stop_on_step(false);
        (kinds, used)
    }

    fn run_until_idle(&mut self, max: u64) -> u64 {
        let mut used = 0;
        while used < max && !self.model.idle() && self.fault.is_none() {
            used += self.run((max - used).min(256), false);
        }
        used
    }

    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let o = offset as usize;
        self.mem[o..o + data.len()].copy_from_slice(data);
        // Mark the pages dirty through the RTL: rewrite one byte of each page
        // touched (its new value) through the BAR2 path.
        let page = u64::from(consts::PAGE_SIZE);
        let mut a = offset;
        let end = offset + data.len() as u64;
        while a < end {
            let byte = self.mem[a as usize];
            let lane = (a % 8) as u32;
            self.mmio(
                true,
                true,
                (a & !7) as u32,
                1u8 << lane,
                u64::from(byte) << (8 * lane),
            )?;
            a = (a / page + 1) * page;
        }
        Ok(())
    }
}

/// What a `FAULT_*` bit set means, for an error message.
fn fault_text(bits: u32, cycle: u64) -> String {
    let mut what = Vec::new();
    if bits & ffi::FAULT_MMIO_RSP != 0 {
        what.push("an MMIO response with no request outstanding");
    }
    if bits & ffi::FAULT_DMA_IDLE != 0 {
        what.push("a DMA request while no step may issue one (after reset, or idle)");
    }
    if bits & ffi::FAULT_DMA_TWICE != 0 {
        what.push("a DMA request before the previous one's response");
    }
    if bits & ffi::FAULT_DM_IDLE != 0 {
        what.push("a device-memory request while nothing may issue one (after reset, or idle)");
    }
    format!("{} (cycle {cycle})", what.join("; "))
}

/// The free-running clock: clocks the device while it is busy, a chunk at a
/// time, giving way to callers between chunks; sleeps while it is idle.
fn clock_thread(sh: &Shared) {
    let mut h = sh.lock();
    while !sh.stop.load(Ordering::Acquire) {
        if lock_slot(&sh.slot).check(&mut h) {
            sh.progress.notify_all();
        }
        if h.model.idle() || h.fault.is_some() {
            h = sh
                .work
                .wait_timeout(h, FREE_RUN_WAIT)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        h.run(FREE_RUN_CHUNK, false);
        if lock_slot(&sh.slot).check(&mut h) {
            sh.progress.notify_all();
        }
        if sh.wanted.load(Ordering::Acquire) > 0 {
            // A caller waits for the device: let it in before the next
            // chunk (a mutex is not fair by itself).
            drop(h);
            let mut spins = 0u32;
            while sh.wanted.load(Ordering::Acquire) > 0 && spins < 1000 {
                std::thread::yield_now();
                spins += 1;
            }
            h = sh.lock();
        }
    }
}

/// Queues `reqs` on the MMIO port (presented back to back, see
/// [`PipeReq::gap`]) and runs until each has its response.
fn pipelined(h: &mut Harness, reqs: &[PipeReq]) -> Reply {
    h.mmio_rsp = None;
    for r in reqs {
        h.model.mmio_queue(r);
    }
    let mut out = Vec::with_capacity(reqs.len());
    let mut spent = 0;
    while out.len() < reqs.len() {
        if let Some(f) = &h.fault {
            return Reply::Err(f.clone());
        }
        if spent >= MMIO_CYCLE_LIMIT {
            return Reply::Err(format!(
                "pipelined MMIO: {} of {} responses in {MMIO_CYCLE_LIMIT} cycles",
                out.len(),
                reqs.len()
            ));
        }
        spent += h.run(4096, true);
        if let Some(v) = h.mmio_rsp.take() {
            out.push(v);
        }
    }
    Reply::Values64(out)
}

fn handle(h: &mut Harness, cmd: Cmd) -> Reply {
    match cmd {
        Cmd::Mmio {
            bar2,
            write,
            addr,
            be,
            wdata,
        } => match h.mmio(bar2, write, addr, be, wdata) {
            Ok(v) => Reply::Mmio(v),
            Err(e) => Reply::Err(e),
        },
        Cmd::Batch(ops) => {
            let mut out = Vec::new();
            for op in ops {
                let (write, o, v) = match op {
                    RegOp::Read(o) => (false, o, 0),
                    RegOp::Write(o, v) => (true, o, v),
                };
                let (addr, be, shift) = (o & !7, if o % 8 == 0 { 0x0f } else { 0xf0 }, 8 * (o % 8));
                match h.mmio(false, write, addr, be, u64::from(v) << shift) {
                    Ok(r) if !write => out.push((r >> shift) as u32),
                    Ok(_) => {}
                    Err(e) => return Reply::Err(e),
                }
            }
            Reply::Values(out)
        }
        Cmd::Advance(n) => {
            let used = h.run(n, false);
            Reply::Progress(Progress {
                used,
                idle: h.model.idle(),
            })
        }
        Cmd::RunUntilIdle(max) => {
            let used = h.run_until_idle(max);
            Reply::Progress(Progress {
                used,
                idle: h.model.idle(),
            })
        }
        Cmd::DevmemRead { offset, len } => {
            let o = offset as usize;
            Reply::Data(h.mem[o..o + len].to_vec())
        }
        Cmd::DevmemWrite { offset, data } => match h.devmem_write(offset, &data) {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Err(e),
        },
        Cmd::Pipelined(reqs) => pipelined(h, &reqs),
        Cmd::HwResetThen(cycles, reqs) => {
            h.dma_wait = None;
            h.mmio_rsp = None;
            h.model.hw_reset(cycles);
            h.cycles += u64::from(cycles.max(1));
            let r = pipelined(h, &reqs);
            h.run_until_idle(1 << 20);
            r
        }
        Cmd::HwReset(cycles) => {
            h.dma_wait = None;
            h.mmio_rsp = None;
            h.model.hw_reset(cycles);
            h.cycles += u64::from(cycles.max(1));
            h.run_until_idle(1 << 20);
            Reply::Done
        }
        Cmd::Pins => Reply::Values(vec![u32::from(h.model.intx()), u32::from(h.model.idle())]),
        Cmd::Stall { seed, pct } => {
            h.model.set_stall(seed, pct);
            Reply::Done
        }
        Cmd::Stats => Reply::Stats(SimStats {
            cycles: h.cycles,
            steps: h.model.steps(),
            ..h.stats
        }),
        Cmd::RunSteps { steps, max_cycles } => {
            let (kinds, used) = h.run_steps(steps, max_cycles);
            Reply::Steps(kinds, used)
        }
        Cmd::Bench { cycles, bare } => {
            let t = std::time::Instant::now();
            let cpu0 = thread_cpu_ns();
            match bare {
                Some((base, mut host)) => {
                    h.model.bench_bare(cycles, &mut host, base, &mut h.mem);
                    h.cycles += cycles;
                }
                None => {
                    h.run(cycles, false);
                }
            }
            let wall = t.elapsed().as_nanos() as u64;
            Reply::Bench(BenchTime {
                wall: Duration::from_nanos(wall),
                cpu: thread_cpu_ns()
                    .zip(cpu0)
                    .map(|(b, a)| Duration::from_nanos(b.saturating_sub(a))),
            })
        }
    }
}
