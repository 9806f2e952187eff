//! Live migration of a running device and its guest, VMM side.
//!
//! The source plays QEMU's part for a VFIO device with pre-copy: it starts
//! dirty logging of guest memory, sends every guest page, moves the device to
//! PRE_COPY and streams device data pass after pass while the guest workload
//! keeps running, follows the migration engine's convergence advice, then
//! stops the device (STOP_COPY), sends what is left (remaining device data,
//! the guest pages dirtied since the last pass, the guest driver's state) and
//! waits for the destination's verdict. The destination loads everything into
//! a fresh device that stays in RESUMING until the stream is complete and
//! valid, and only then runs it.
//!
//! Failure at any phase leaves the source device running with its state
//! intact (the save session only reads the device); a destination that
//! refuses the stream never runs its device.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vfpga_device::ring::RingDriver;
use vfpga_device::{Device, DmaPort, Perm, VecMemory};
use vfpga_migration::save::{Advice, ConvergencePolicy};
use vfpga_migration::{EngineConfig, MigState, MigrationEngine};
use vfpga_regs::{IrqStatus, offsets};

use crate::channel::{self, ChannelError, MAX_PAGES_PER_RECORD, PAGE, Record};
use crate::workload::{Layout, Snapshot, Workload, WorkloadError};

/// Guest memory of one VM: one mapping at `layout.base`.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The DMA port the device uses.
    pub dma: DmaPort,
    /// The memory.
    pub mem: Arc<VecMemory>,
    /// Layout of the workload in it.
    pub layout: Layout,
}

impl Guest {
    /// Allocates and maps guest memory for `layout`.
    pub fn new(layout: Layout) -> Result<Self, LiveError> {
        let dma = DmaPort::new();
        let mem = Arc::new(VecMemory::new(layout.size as usize));
        dma.map(layout.base, mem.clone(), Perm::RW)
            .map_err(|e| LiveError::Protocol(format!("mapping guest memory: {e}")))?;
        Ok(Guest { dma, mem, layout })
    }

    fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        (self.layout.base..self.layout.base + self.layout.size).step_by(PAGE)
    }
}

/// Errors of a live migration.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The migration engine refused an operation.
    #[error("migration engine")]
    Engine(#[from] vfpga_migration::EngineError),
    /// The workload failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] vfpga_device::DeviceError),
    /// The peer broke the protocol or refused the migration.
    #[error("{0}")]
    Protocol(String),
}

/// One pre-copy pass.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pass {
    /// 0 = the full pass.
    pub pass: u32,
    /// Device migration-stream bytes sent in the pass.
    pub device_bytes: u64,
    /// Guest pages sent in the pass.
    pub guest_pages: u64,
    /// Descriptors the guest completed during the pass.
    pub descriptors_during: u64,
    /// Milliseconds since the migration started, at the end of the pass.
    pub at_ms: f64,
}

/// What the source did.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Pre-copy passes.
    pub passes: Vec<Pass>,
    /// Device bytes sent after the device stopped.
    pub stop_copy_device_bytes: u64,
    /// Guest pages sent after the device stopped.
    pub stop_copy_guest_pages: u64,
    /// Why pre-copy ended.
    pub stop_reason: String,
    /// Source device stopped (µs since the epoch).
    pub stopped_at_us: u64,
    /// Milliseconds since the migration started when the device stopped.
    pub stopped_at_ms: f64,
}

/// What the destination did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DestReport {
    /// Source stop time (µs since the epoch), as sent.
    pub stopped_at_us: u64,
    /// Destination device running (µs since the epoch).
    pub resumed_at_us: u64,
    /// Device stream bytes received.
    pub device_bytes: u64,
    /// Guest pages received.
    pub guest_pages: u64,
}

impl DestReport {
    /// Device stopped on the source → running on the destination, in ms.
    pub fn downtime_ms(&self) -> f64 {
        self.resumed_at_us.saturating_sub(self.stopped_at_us) as f64 / 1000.0
    }
}

/// Source options.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Pre-copy convergence policy.
    pub policy: ConvergencePolicy,
    /// Workload rounds between two passes (the guest keeps running).
    pub rounds_per_pass: u32,
    /// Device units per workload round.
    pub budget: u64,
    /// Inject a failure: drop the connection after this many passes.
    pub fail_after_passes: Option<u32>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            policy: ConvergencePolicy {
                downtime_bytes: 64 << 10,
                max_dirty_passes: 8,
                stall_passes: 3,
            },
            rounds_per_pass: 20,
            budget: 256,
            fail_after_passes: None,
        }
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn send_pages(
    conn: &mut impl Write,
    guest: &Guest,
    pass: u32,
    iovas: &[u64],
) -> Result<u64, LiveError> {
    for chunk in iovas.chunks(MAX_PAGES_PER_RECORD) {
        let mut pages = Vec::with_capacity(chunk.len());
        for &iova in chunk {
            let mut b = vec![0u8; PAGE];
            guest
                .dma
                .host_read(iova, &mut b)
                .map_err(|e| LiveError::Protocol(format!("reading guest page: {e}")))?;
            pages.push((iova, b));
        }
        channel::write_record(conn, &Record::GuestPages { pass, pages })?;
    }
    Ok(iovas.len() as u64)
}

fn drain_device<D: Device + ?Sized>(
    eng: &mut MigrationEngine,
    dev: &mut D,
    conn: &mut impl Write,
) -> Result<u64, LiveError> {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = eng.read_data(dev, &mut buf)?;
        if n > 0 {
            channel::write_record(conn, &Record::DeviceData(buf[..n].to_vec()))?;
            total += n as u64;
        }
        if n < buf.len() {
            return Ok(total);
        }
    }
}

/// Source side: migrates `dev` and its guest over `conn` while `wl` keeps
/// running. On any failure the device is put back to RUNNING (its state was
/// only read) and the error returned, so the caller can continue the
/// workload or try again.
pub fn migrate_out<D: Device + ?Sized, S: Read + Write>(
    dev: &mut D,
    guest: &Guest,
    wl: &mut Workload,
    ring: &mut RingDriver,
    conn: &mut S,
    opts: &SourceOptions,
) -> Result<SourceReport, LiveError> {
    let mut eng = MigrationEngine::new(EngineConfig::default());
    let r = migrate_out_inner(&mut eng, dev, guest, wl, ring, conn, opts);
    guest.dma.dirty_log_stop();
    if r.is_err() {
        // Cancel: leave the saving states; the device resumes where it stopped.
        if let Err(e) = eng.set_state(dev, MigState::Running as u32) {
            tracing::error!("source could not return to RUNNING after a failed migration: {e}");
            eng.reset(dev)?;
        }
    }
    r
}

fn migrate_out_inner<D: Device + ?Sized, S: Read + Write>(
    eng: &mut MigrationEngine,
    dev: &mut D,
    guest: &Guest,
    wl: &mut Workload,
    ring: &mut RingDriver,
    conn: &mut S,
    opts: &SourceOptions,
) -> Result<SourceReport, LiveError> {
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    channel::write_hello(conn)?;
    guest.dma.dirty_log_start();
    eng.set_state(dev, MigState::PreCopy as u32)?;
    let mut passes = Vec::new();
    let all: Vec<u64> = guest.pages().collect();
    let mut guest_pages = send_pages(conn, guest, 0, &all)?;
    let mut pass = 0u32;
    let stop_reason;
    loop {
        let device_bytes = drain_device(eng, dev, conn)?;
        let before = wl.stats().verified;
        for _ in 0..opts.rounds_per_pass {
            wl.pump(dev, ring, opts.budget)?;
        }
        passes.push(crate::live::Pass {
            pass,
            device_bytes,
            guest_pages,
            descriptors_during: wl.stats().verified - before,
            at_ms: ms(Instant::now()),
        });
        if opts.fail_after_passes == Some(pass) {
            return Err(LiveError::Protocol(format!(
                "injected failure after pass {pass}"
            )));
        }
        match eng.advice(dev, &opts.policy)? {
            Advice::StopAndCopy(r) => {
                stop_reason = format!("{r:?}");
                break;
            }
            Advice::Iterate => {}
        }
        pass += 1;
        let dirty = guest.dma.dirty_log_take();
        guest_pages = send_pages(conn, guest, pass, &dirty)?;
    }
    // Stop-and-copy: the device quiesces, the guest stops with it.
    let t_stop = Instant::now();
    let stopped_at_us = now_us();
    eng.set_state(dev, MigState::StopCopy as u32)?;
    let stop_copy_device_bytes = drain_device(eng, dev, conn)?;
    let mut last = guest.dma.dirty_log_take();
    last.extend(guest.layout.driver_pages());
    last.sort_unstable();
    last.dedup();
    let stop_copy_guest_pages = send_pages(conn, guest, u32::MAX, &last)?;
    let snap = serde_json::to_vec(&wl.snapshot())
        .map_err(|e| LiveError::Protocol(format!("encoding the workload snapshot: {e}")))?;
    channel::write_record(conn, &Record::Workload(snap))?;
    channel::write_record(conn, &Record::End { stopped_at_us })?;
    conn.flush().map_err(ChannelError::Io)?;
    match channel::read_record(conn)? {
        Record::Done { .. } => {}
        Record::Failed(why) => {
            return Err(LiveError::Protocol(format!("destination refused: {why}")));
        }
        other => {
            return Err(LiveError::Protocol(format!(
                "unexpected answer from the destination: {other:?}"
            )));
        }
    }
    // The guest now runs on the destination; this device stays stopped.
    eng.set_state(dev, MigState::Stop as u32)?;
    Ok(SourceReport {
        passes,
        stop_copy_device_bytes,
        stop_copy_guest_pages,
        stop_reason,
        stopped_at_us,
        stopped_at_ms: ms(t_stop),
    })
}

/// The migrated VM on the destination.
pub struct Arrived {
    /// The device, running.
    pub dev: Box<dyn Device>,
    /// Its guest memory.
    pub guest: Guest,
    /// The workload, where the source left it.
    pub workload: Workload,
    /// The ring driver, re-attached.
    pub ring: RingDriver,
    /// Figures.
    pub report: DestReport,
}

impl std::fmt::Debug for Arrived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrived")
            .field("report", &self.report)
            .finish()
    }
}

/// Destination side: receives a VM from `conn` into a device made by
/// `make_dev` over fresh guest memory laid out as `layout`. The device runs
/// only once the whole stream arrived and was accepted; otherwise the source
/// is told why and the error returned.
pub fn migrate_in<S: Read + Write>(
    layout: Layout,
    make_dev: impl FnOnce(DmaPort) -> Result<Box<dyn Device>, LiveError>,
    conn: &mut S,
) -> Result<Arrived, LiveError> {
    let guest = Guest::new(layout)?;
    let mut dev = make_dev(guest.dma.clone())?;
    let r = migrate_in_inner(&guest, dev.as_mut(), conn);
    match r {
        Ok((snap, report)) => {
            let workload = Workload::from_snapshot(layout, &snap);
            let ring = RingDriver::attach_counted(dev.as_mut(), &guest.dma, workload.in_flight())
                .map_err(|e| LiveError::Protocol(format!("re-attaching the rings: {e}")))?;
            channel::write_record(
                conn,
                &Record::Done {
                    resumed_at_us: report.resumed_at_us,
                },
            )?;
            Ok(Arrived {
                dev,
                guest,
                workload,
                ring,
                report,
            })
        }
        Err(e) => {
            let _ = channel::write_record(conn, &Record::Failed(e.to_string()));
            Err(e)
        }
    }
}

fn migrate_in_inner<S: Read + Write>(
    guest: &Guest,
    dev: &mut dyn Device,
    conn: &mut S,
) -> Result<(Snapshot, DestReport), LiveError> {
    let mut eng = MigrationEngine::new(EngineConfig {
        dma: Some(guest.dma.clone()),
    });
    channel::read_hello(conn)?;
    eng.set_state(dev, MigState::Resuming as u32)?;
    let mut snap = None;
    let mut device_bytes = 0u64;
    let mut guest_pages = 0u64;
    let stopped_at_us = loop {
        match channel::read_record(conn)? {
            Record::GuestPages { pages, .. } => {
                for (iova, data) in pages {
                    if iova % PAGE as u64 != 0 {
                        return Err(LiveError::Protocol(format!(
                            "guest page at unaligned IOVA {iova:#x}"
                        )));
                    }
                    guest.dma.host_write(iova, &data).map_err(|e| {
                        LiveError::Protocol(format!("guest page outside guest memory: {e}"))
                    })?;
                    guest_pages += 1;
                }
            }
            Record::DeviceData(d) => {
                eng.write_data(dev, &d)?;
                device_bytes += d.len() as u64;
            }
            Record::Workload(j) => {
                snap = Some(
                    serde_json::from_slice::<Snapshot>(&j)
                        .map_err(|e| LiveError::Protocol(format!("bad workload snapshot: {e}")))?,
                );
            }
            Record::End { stopped_at_us } => break stopped_at_us,
            other => {
                return Err(LiveError::Protocol(format!(
                    "unexpected record from the source: {other:?}"
                )));
            }
        }
    };
    let snap = snap.ok_or_else(|| LiveError::Protocol("no workload snapshot".into()))?;
    if snap.layout != guest.layout {
        return Err(LiveError::Protocol(format!(
            "the source's guest layout {:?} differs from this destination's {:?}",
            snap.layout, guest.layout
        )));
    }
    // RESUMING → STOP validates and restores; STOP → RUNNING resumes.
    eng.set_state(dev, MigState::Running as u32)?;
    // The device runs from here: the end of the downtime window.
    let resumed_at_us = now_us();
    Ok((
        snap,
        DestReport {
            stopped_at_us,
            resumed_at_us,
            device_bytes,
            guest_pages,
        },
    ))
}

/// Acknowledges every interrupt cause (what the guest's handler does).
pub fn ack_irqs<D: Device + ?Sized>(dev: &mut D) -> Result<(), vfpga_device::DeviceError> {
    dev.write_reg(offsets::IRQ_STATUS, IrqStatus::all().bits())
}
