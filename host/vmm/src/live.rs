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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vfpga_device::ring::RingDriver;
use vfpga_migration::MigState;
use vfpga_migration::save::{ConvergencePolicy, StopReason};
use vfpga_regs::{IrqStatus, offsets};

use crate::channel::{self, ChannelError, MAX_PAGES_PER_RECORD, PAGE, Record};
pub use crate::vm::Guest;
use crate::vm::VmDevice;
use crate::workload::{Snapshot, Workload, WorkloadError};

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
    /// A vfio-user request to the device server failed.
    #[error("vfio-user")]
    Wire(#[from] vfpga_vfio_user::ClientError),
    /// A device server could not be started or reached.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
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
    #[serde(serialize_with = "crate::ms")]
    pub at_ms: f64,
    /// Device bytes stop-and-copy would still send after this pass
    /// (MIG_DATA_SIZE).
    pub pending_bytes: u64,
}

/// What the source reports while it migrates (for progress displays).
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Bytes sent so far in pass `pass` (`u32::MAX`: stop-and-copy).
    Sending {
        /// Pass.
        pass: u32,
        /// Device and guest bytes sent in this pass so far.
        bytes: u64,
    },
    /// A pre-copy pass ended.
    PassDone(&'a Pass),
    /// The source device stopped: stop-and-copy begins.
    Stopped,
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
    /// Why pre-copy ended: `converged`, `max-passes` or `not-converging`.
    pub stop_reason: String,
    /// Source device stopped (µs since the epoch).
    pub stopped_at_us: u64,
    /// Milliseconds since the migration started when the device stopped.
    #[serde(serialize_with = "crate::ms")]
    pub stopped_at_ms: f64,
    /// Where the source's part of the downtime went.
    pub stop_copy: StopCopyTimes,
}

/// The source's part of the downtime, phase by phase (ms), and the messages
/// it took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StopCopyTimes {
    /// PRE_COPY → STOP_COPY: the device quiesces (its engine finishes the
    /// step in progress) and the save session switches to stop-and-copy.
    #[serde(serialize_with = "crate::ms")]
    pub quiesce_ms: f64,
    /// The rest of the device stream read from the device and written to
    /// the channel: the final pass, the state save, the end marker.
    #[serde(serialize_with = "crate::ms")]
    pub device_stream_ms: f64,
    /// Guest pages dirtied since the last pass (and the driver's pages)
    /// taken from the DMA log and written to the channel.
    #[serde(serialize_with = "crate::ms")]
    pub guest_pages_ms: f64,
    /// The workload snapshot and the end record written and flushed.
    #[serde(serialize_with = "crate::ms")]
    pub handoff_ms: f64,
    /// Device reads (MIG_DATA_READ or engine reads) after the stop.
    pub device_reads: u64,
    /// Channel records written after the stop.
    pub records: u64,
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
    /// The source's end record arrived (µs since the epoch).
    pub end_received_at_us: u64,
    /// RESUMING → RUNNING: the stream checked, the state validated and
    /// restored, the device resumed (ms).
    #[serde(serialize_with = "crate::ms")]
    pub restore_resume_ms: f64,
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
    /// Descriptors the guest completes between two passes (it keeps running;
    /// fewer when the workload ends first).
    pub descriptors_per_pass: u64,
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
            descriptors_per_pass: 50,
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

/// Bytes asked for by one MIG_DATA_READ (the server's transfer limit).
pub const READ_CHUNK: usize = 1 << 20;

/// Reads the device's migration data until a short read (nothing more for
/// now in PRE_COPY; the end of the stream in STOP_COPY) and forwards it.
fn drain_device(
    dev: &mut dyn VmDevice,
    conn: &mut impl Write,
    sent: &mut dyn FnMut(u64),
) -> Result<u64, LiveError> {
    drain_device_counted(dev, conn, sent, &mut StopCopyTimes::default())
}

/// [`drain_device`], counting reads and records into `t`.
fn drain_device_counted(
    dev: &mut dyn VmDevice,
    conn: &mut impl Write,
    sent: &mut dyn FnMut(u64),
    t: &mut StopCopyTimes,
) -> Result<u64, LiveError> {
    let mut total = 0;
    loop {
        let d = dev.read_data(READ_CHUNK)?;
        t.device_reads += 1;
        let n = d.len();
        if n > 0 {
            channel::write_record(conn, &Record::DeviceData(d))?;
            t.records += 1;
            total += n as u64;
            sent(total);
        }
        if n < READ_CHUNK {
            return Ok(total);
        }
    }
}

/// The VMM's pre-copy convergence decision, from what a vfio-user device
/// tells a VMM: MIG_DATA_SIZE (the bytes stop-and-copy would read now).
#[derive(Debug, Default)]
struct Convergence {
    history: Vec<u64>,
}

impl Convergence {
    /// After dirty pass `pass` (0 = the full pass), with `left` bytes of
    /// device data for stop-and-copy: stop now, and why?
    fn decide(&mut self, pass: u32, left: u64, p: &ConvergencePolicy) -> Option<StopReason> {
        if pass == 0 {
            return None;
        }
        self.history.push(left);
        if left <= p.downtime_bytes {
            return Some(StopReason::Converged);
        }
        if self.history.len() >= p.max_dirty_passes as usize {
            return Some(StopReason::MaxPasses);
        }
        let k = p.stall_passes as usize;
        let h = &self.history;
        if k > 0 && h.len() > k && h[h.len() - k - 1..].windows(2).all(|w| w[1] >= w[0]) {
            return Some(StopReason::NotConverging);
        }
        None
    }
}

/// Rounds without a completion after which a workload is declared stuck (a
/// hang guard: a working device completes within a few rounds).
pub const STUCK_ROUNDS: u64 = 2_000_000;

/// Runs the workload until `n` more descriptors are verified or it is done.
pub fn run_for(
    dev: &mut dyn vfpga_device::Device,
    wl: &mut Workload,
    ring: &mut RingDriver,
    budget: u64,
    n: u64,
) -> Result<(), LiveError> {
    let goal = wl.stats().verified.saturating_add(n);
    let mut idle = 0u64;
    while wl.stats().verified < goal && !wl.done() {
        let before = wl.stats().verified;
        wl.pump(dev, ring, budget)?;
        idle = if wl.stats().verified == before {
            idle + 1
        } else {
            0
        };
        if idle > STUCK_ROUNDS {
            return Err(LiveError::Protocol(format!(
                "the device made no progress ({} descriptors in flight)",
                wl.in_flight()
            )));
        }
    }
    Ok(())
}

/// Source side: migrates `dev` and its guest over `conn` while `wl` keeps
/// running. On any failure the device is put back to RUNNING (its state was
/// only read) and the error returned, so the caller can continue the
/// workload or try again.
pub fn migrate_out<S: Read + Write>(
    dev: &mut dyn VmDevice,
    guest: &Guest,
    wl: &mut Workload,
    ring: &mut RingDriver,
    conn: &mut S,
    opts: &SourceOptions,
) -> Result<SourceReport, LiveError> {
    migrate_out_with_progress(dev, guest, wl, ring, conn, opts, &mut |_| {})
}

/// [`migrate_out`], calling `progress` as data goes out.
pub fn migrate_out_with_progress<S: Read + Write>(
    dev: &mut dyn VmDevice,
    guest: &Guest,
    wl: &mut Workload,
    ring: &mut RingDriver,
    conn: &mut S,
    opts: &SourceOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<SourceReport, LiveError> {
    let r = migrate_out_inner(dev, guest, wl, ring, conn, opts, progress);
    if let Err(e) = dev.dirty_stop(guest) {
        tracing::warn!("stopping DMA logging on the source: {e}");
    }
    if r.is_err() {
        // Cancel: leave the saving states; the device resumes where it stopped.
        if let Err(e) = dev.set_state(MigState::Running) {
            tracing::error!("source could not return to RUNNING after a failed migration: {e}");
            dev.reset()?;
        }
    }
    r
}

fn migrate_out_inner<S: Read + Write>(
    dev: &mut dyn VmDevice,
    guest: &Guest,
    wl: &mut Workload,
    ring: &mut RingDriver,
    conn: &mut S,
    opts: &SourceOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<SourceReport, LiveError> {
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    channel::write_hello(conn)?;
    dev.dirty_start(guest)?;
    dev.set_state(MigState::PreCopy)?;
    let mut passes = Vec::new();
    let all: Vec<u64> = guest.pages().collect();
    let mut guest_pages = send_pages(conn, guest, 0, &all)?;
    progress(Progress::Sending {
        pass: 0,
        bytes: guest_pages * PAGE as u64,
    });
    let mut pass = 0u32;
    let mut conv = Convergence::default();
    let stop_reason;
    loop {
        let base = guest_pages * PAGE as u64;
        let device_bytes = drain_device(dev, conn, &mut |b| {
            progress(Progress::Sending {
                pass,
                bytes: base + b,
            })
        })?;
        let before = wl.stats().verified;
        run_for(dev.dev(), wl, ring, opts.budget, opts.descriptors_per_pass)?;
        let left = dev.stop_copy_size()?;
        passes.push(Pass {
            pass,
            device_bytes,
            guest_pages,
            descriptors_during: wl.stats().verified - before,
            at_ms: ms(Instant::now()),
            pending_bytes: left,
        });
        if let Some(p) = passes.last() {
            progress(Progress::PassDone(p));
        }
        if opts.fail_after_passes == Some(pass) {
            return Err(LiveError::Protocol(format!(
                "injected failure after pass {pass}"
            )));
        }
        if let Some(r) = conv.decide(pass, left, &opts.policy) {
            stop_reason = r.name().to_string();
            break;
        }
        pass += 1;
        let dirty = dev.dirty_take(guest)?;
        guest_pages = send_pages(conn, guest, pass, &dirty)?;
    }
    // Stop-and-copy: the device quiesces, the guest stops with it.
    let t_stop = Instant::now();
    let stopped_at_us = now_us();
    let mut times = StopCopyTimes::default();
    let lap = |t: &mut Instant| {
        let now = Instant::now();
        let d = now.duration_since(*t).as_secs_f64() * 1000.0;
        *t = now;
        d
    };
    let mut t = t_stop;
    dev.set_state(MigState::StopCopy)?;
    times.quiesce_ms = lap(&mut t);
    progress(Progress::Stopped);
    let stop_copy_device_bytes = drain_device_counted(
        dev,
        conn,
        &mut |b| {
            progress(Progress::Sending {
                pass: u32::MAX,
                bytes: b,
            })
        },
        &mut times,
    )?;
    times.device_stream_ms = lap(&mut t);
    let mut last = dev.dirty_take(guest)?;
    last.extend(guest.layout.driver_pages());
    last.sort_unstable();
    last.dedup();
    let stop_copy_guest_pages = send_pages(conn, guest, u32::MAX, &last)?;
    times.records += stop_copy_guest_pages.div_ceil(MAX_PAGES_PER_RECORD as u64);
    times.guest_pages_ms = lap(&mut t);
    let snap = serde_json::to_vec(&wl.snapshot())
        .map_err(|e| LiveError::Protocol(format!("encoding the workload snapshot: {e}")))?;
    channel::write_record(conn, &Record::Workload(snap))?;
    channel::write_record(conn, &Record::End { stopped_at_us })?;
    conn.flush().map_err(ChannelError::Io)?;
    times.records += 2;
    times.handoff_ms = lap(&mut t);
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
    dev.set_state(MigState::Stop)?;
    Ok(SourceReport {
        passes,
        stop_copy_device_bytes,
        stop_copy_guest_pages,
        stop_reason,
        stopped_at_us,
        stopped_at_ms: ms(t_stop),
        stop_copy: times,
    })
}

/// The migrated VM on the destination.
pub struct Arrived {
    /// The device, running.
    pub dev: Box<dyn VmDevice>,
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
            .field("device", &self.dev.describe())
            .field("report", &self.report)
            .finish()
    }
}

/// Destination side: receives a VM from `conn` into `dev`, a fresh device
/// set up over `guest` (fresh guest memory laid out as the source's). The
/// device runs only once the whole stream arrived and was accepted;
/// otherwise the source is told why and the error returned.
pub fn migrate_in<S: Read + Write>(
    guest: Guest,
    mut dev: Box<dyn VmDevice>,
    conn: &mut S,
) -> Result<Arrived, LiveError> {
    let r = migrate_in_inner(&guest, dev.as_mut(), conn);
    match r {
        Ok((snap, report)) => {
            let workload = Workload::from_snapshot(guest.layout, &snap);
            let ring = RingDriver::attach_counted(dev.dev(), &guest.dma, workload.in_flight())
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
    dev: &mut dyn VmDevice,
    conn: &mut S,
) -> Result<(Snapshot, DestReport), LiveError> {
    channel::read_hello(conn)?;
    dev.set_state(MigState::Resuming)?;
    let mut snap = None;
    let mut device_bytes = 0u64;
    let mut guest_pages = 0u64;
    let (stopped_at_us, end_received_at_us) = loop {
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
                dev.write_data(&d)?;
                device_bytes += d.len() as u64;
            }
            Record::Workload(j) => {
                snap = Some(
                    serde_json::from_slice::<Snapshot>(&j)
                        .map_err(|e| LiveError::Protocol(format!("bad workload snapshot: {e}")))?,
                );
            }
            Record::End { stopped_at_us } => break (stopped_at_us, now_us()),
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
    let t_restore = Instant::now();
    dev.set_state(MigState::Running)?;
    // The device runs from here: the end of the downtime window.
    let resumed_at_us = now_us();
    let restore_resume_ms = t_restore.elapsed().as_secs_f64() * 1000.0;
    Ok((
        snap,
        DestReport {
            stopped_at_us,
            resumed_at_us,
            device_bytes,
            guest_pages,
            end_received_at_us,
            restore_resume_ms,
        },
    ))
}

/// Acknowledges every interrupt cause (what the guest's handler does).
pub fn ack_irqs<D: vfpga_device::Device + ?Sized>(
    dev: &mut D,
) -> Result<(), vfpga_device::DeviceError> {
    dev.write_reg(offsets::IRQ_STATUS, IrqStatus::all().bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_follows_the_policy() {
        let p = ConvergencePolicy {
            downtime_bytes: 100,
            max_dirty_passes: 4,
            stall_passes: 2,
        };
        let mut c = Convergence::default();
        assert_eq!(c.decide(0, 5, &p), None, "never after the full pass");
        assert_eq!(c.decide(1, 100, &p), Some(StopReason::Converged));
        let mut c = Convergence::default();
        assert_eq!(c.decide(1, 500, &p), None);
        assert_eq!(c.decide(2, 400, &p), None);
        assert_eq!(c.decide(3, 450, &p), None);
        assert_eq!(c.decide(4, 300, &p), Some(StopReason::MaxPasses));
        let mut c = Convergence::default();
        assert_eq!(c.decide(1, 300, &p), None);
        assert_eq!(c.decide(2, 300, &p), None);
        assert_eq!(c.decide(3, 310, &p), Some(StopReason::NotConverging));
    }
}
