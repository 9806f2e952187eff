//! Live migration of a running device and its guest, VMM side.
//!
//! The source plays QEMU's part for a VFIO device with pre-copy: it starts
//! dirty logging of guest memory, sends every guest page, moves the device to
//! PRE_COPY and streams device data pass after pass while the guest workload
//! keeps running, ends pre-copy once the bytes left fit a downtime limit at
//! the bandwidth it measures (raising the device's DMA throttle step by step
//! when the device dirties faster than the link drains; a pass limit is the
//! fallback), then stops the device (STOP_COPY), sends what is left (remaining device data,
//! the guest pages dirtied since the last pass, the guest driver's state) and
//! waits for the destination's verdict. The destination loads everything into
//! a fresh device that stays in RESUMING until the stream is complete and
//! valid, and only then runs it.
//!
//! Failure at any phase leaves the source device running with its state
//! intact (the save session only reads the device); a destination that
//! refuses the stream never runs its device.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vfpga_device::ring::RingDriver;
use vfpga_migration::MigState;
use vfpga_migration::converge::{Convergence, DowntimePolicy, EndReason, PassSample, Verdict};
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
    /// All bytes stop-and-copy would send after this pass: `pending_bytes`
    /// and the guest pages dirtied since they were last sent.
    pub remaining_bytes: u64,
    /// Bandwidth the pass measured (bytes sent / link time), MiB/s.
    pub bandwidth_mib_s: f64,
    /// `remaining_bytes` at that bandwidth: the downtime stopping now would
    /// cost, in ms.
    pub estimated_downtime_ms: f64,
    /// The device's `DMA_THROTTLE` during the pass (0 = not throttled).
    pub throttle: u32,
}

impl Pass {
    /// One line for a person: what the pass sent, what it left and the
    /// downtime it estimated.
    pub fn summary(&self) -> String {
        format!(
            "pre-copy pass {:>2}: device {:>9} bytes, guest {:>5} pages, {:>4} descriptors meanwhile; {} bytes left, {:.1} MiB/s, estimated downtime {:.1} ms{}",
            self.pass,
            self.device_bytes,
            self.guest_pages,
            self.descriptors_during,
            self.remaining_bytes,
            self.bandwidth_mib_s,
            self.estimated_downtime_ms,
            if self.throttle > 0 {
                format!(", DMA throttle {}", self.throttle)
            } else {
                String::new()
            }
        )
    }
}

/// One auto-converge step: the source raised the device's DMA throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThrottleStep {
    /// After this pass.
    pub after_pass: u32,
    /// New `DMA_THROTTLE.IDLE` (idle cycles after each DMA burst).
    pub value: u32,
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
    /// Why pre-copy ended: `converged`, `byte-budget`, `pass-limit` or
    /// `not-converging`.
    pub stop_reason: String,
    /// The same in words, with the figures (e.g. `converged (estimated
    /// downtime 3.1 ms <= limit 300 ms at 95.0 MiB/s)`).
    pub stop_detail: String,
    /// The downtime limit pre-copy aimed at, ms.
    #[serde(serialize_with = "crate::ms")]
    pub downtime_limit_ms: f64,
    /// Auto-converge steps, in order.
    pub throttle_steps: Vec<ThrottleStep>,
    /// Source device stopped (µs since the epoch).
    pub stopped_at_us: u64,
    /// Milliseconds since the migration started when the device stopped.
    #[serde(serialize_with = "crate::ms")]
    pub stopped_at_ms: f64,
    /// Where the source's part of the downtime went.
    pub stop_copy: StopCopyTimes,
    /// How long the source waited, device still running, for the
    /// destination to acknowledge it had applied the pre-copy data (ms).
    #[serde(serialize_with = "crate::ms")]
    pub switchover_wait_ms: f64,
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

/// A migration link slower than the machine, as QEMU's `max-bandwidth`
/// makes one: the source sends no faster than `bytes_per_sec`, and the
/// guest keeps running for as long as the link is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Link rate, bytes per second.
    pub bytes_per_sec: u64,
    /// How fast a device in this process runs while the link is busy, in
    /// its units ([`vfpga_device::Device::advance`]) per second of link
    /// time: the guest runs that many units per pass, so what a pass dirties
    /// follows the link time, not this machine's speed. A device in a server
    /// runs on its own, in real time.
    pub device_units_per_sec: u64,
}

/// [`Link::device_units_per_sec`] when a link rate is set without one.
pub const DEVICE_UNITS_PER_SEC: u64 = 256 << 10;

/// Source options.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// When pre-copy ends, and auto-converge.
    pub policy: DowntimePolicy,
    /// A rate-limited link; `None`: as fast as the connection goes, the
    /// guest running `descriptors_per_pass` between passes.
    pub link: Option<Link>,
    /// Descriptors the guest completes between two passes (it keeps running;
    /// fewer when the workload ends first). Without a [`Link`] only.
    pub descriptors_per_pass: u64,
    /// Device units per workload round.
    pub budget: u64,
    /// Inject a failure: drop the connection after this many passes.
    pub fail_after_passes: Option<u32>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            policy: DowntimePolicy {
                max_passes: 8,
                ..DowntimePolicy::default()
            },
            link: None,
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

/// The guest runs while the link carries a pass of `link_time`: a device
/// in this process runs `link_time * device_units_per_sec` units, a device
/// in a server runs on its own meanwhile; then the source waits for the
/// link until `t_pass + link_time`.
fn run_while_sending(
    dev: &mut dyn VmDevice,
    wl: &mut Workload,
    ring: &mut RingDriver,
    budget: u64,
    link: &Link,
    link_time: Duration,
    t_pass: Instant,
) -> Result<(), LiveError> {
    let deadline = t_pass + link_time;
    let d = dev.dev();
    if d.info().self_running {
        while !wl.done() && Instant::now() < deadline {
            wl.pump(d, ring, budget)?;
        }
    } else {
        let mut left = (link_time.as_secs_f64() * link.device_units_per_sec as f64) as u64;
        while left > 0 && !wl.done() {
            wl.submit(d, ring)?;
            let p = d.advance(budget.min(left))?;
            wl.collect(d, ring)?;
            if p.used == 0 {
                break;
            }
            left = left.saturating_sub(p.used);
        }
    }
    let now = Instant::now();
    if now < deadline {
        std::thread::sleep(deadline - now);
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
        // The guest goes on here, at full speed again.
        if let Err(e) = dev.dev().write_reg(offsets::DMA_THROTTLE, 0) {
            tracing::warn!("clearing the DMA throttle after a failed migration: {e}");
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
    let mut to_send: Vec<u64> = guest.pages().collect();
    let mut pass = 0u32;
    let mut conv = Convergence::new(opts.policy);
    let mut throttle = 0u32;
    let mut throttle_steps = Vec::new();
    let (end, leftover) = loop {
        let t_pass = Instant::now();
        let guest_pages = send_pages(conn, guest, pass, &to_send)?;
        let base = guest_pages * PAGE as u64;
        progress(Progress::Sending { pass, bytes: base });
        let device_bytes = drain_device(dev, conn, &mut |b| {
            progress(Progress::Sending {
                pass,
                bytes: base + b,
            })
        })?;
        let sent = base + device_bytes;
        let send_time = t_pass.elapsed();
        let before = wl.stats().verified;
        // How long the link was busy with this pass: the bandwidth the
        // downtime estimate uses.
        let transfer = match &opts.link {
            None => {
                run_for(dev.dev(), wl, ring, opts.budget, opts.descriptors_per_pass)?;
                send_time
            }
            Some(link) => {
                let link_time =
                    Duration::from_secs_f64(sent as f64 / link.bytes_per_sec.max(1) as f64);
                run_while_sending(dev, wl, ring, opts.budget, link, link_time, t_pass)?;
                send_time.max(link_time)
            }
        };
        let dirty = dev.dirty_take(guest)?;
        let left = dev.stop_copy_size()?;
        let remaining = left + dirty.len() as u64 * PAGE as u64;
        let verdict = conv.after_pass(&PassSample {
            pass,
            bytes_sent: sent,
            transfer,
            remaining,
        });
        let bw = conv.bandwidth().unwrap_or(0.0);
        passes.push(Pass {
            pass,
            device_bytes,
            guest_pages,
            descriptors_during: wl.stats().verified - before,
            at_ms: ms(Instant::now()),
            pending_bytes: left,
            remaining_bytes: remaining,
            bandwidth_mib_s: bw / f64::from(1u32 << 20),
            estimated_downtime_ms: conv
                .estimate(remaining)
                .map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0),
            throttle,
        });
        if let Some(p) = passes.last() {
            tracing::debug!(
                pass,
                remaining,
                bandwidth_mib_s = p.bandwidth_mib_s,
                estimated_ms = p.estimated_downtime_ms,
                "pre-copy pass"
            );
            progress(Progress::PassDone(p));
        }
        if opts.fail_after_passes == Some(pass) {
            return Err(LiveError::Protocol(format!(
                "injected failure after pass {pass}"
            )));
        }
        match verdict {
            Verdict::Stop(r) => break (r, dirty),
            Verdict::Continue { throttle: t } => {
                if let Some(t) = t {
                    // Auto-converge: slow the device's DMA down, through its
                    // register, as a VMM does (a BAR0 region write).
                    dev.dev().write_reg(offsets::DMA_THROTTLE, t)?;
                    tracing::info!(
                        after_pass = pass,
                        throttle = t,
                        "auto-converge: device DMA throttled (idle cycles per burst)"
                    );
                    throttle = t;
                    throttle_steps.push(ThrottleStep {
                        after_pass: pass,
                        value: t,
                    });
                }
            }
        }
        pass += 1;
        to_send = dirty;
    };
    tracing::info!(reason = %end, "pre-copy ended");
    let stop_reason = end.name().to_string();
    // Switchover acknowledgement: the destination applies what is still
    // queued for it (the pre-copy data the link delivered faster than it
    // loaded) while the guest runs here, so that its catch-up is not part
    // of the downtime.
    let t_sync = Instant::now();
    channel::write_record(conn, &Record::Sync)?;
    conn.flush().map_err(ChannelError::Io)?;
    match channel::read_record(conn)? {
        Record::SyncAck => {}
        Record::Failed(why) => {
            return Err(LiveError::Protocol(format!("destination refused: {why}")));
        }
        other => {
            return Err(LiveError::Protocol(format!(
                "expected the destination's switchover acknowledgement, got {other:?}"
            )));
        }
    }
    let switchover_wait_ms = t_sync.elapsed().as_secs_f64() * 1000.0;
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
    let mut last = leftover;
    last.extend(dev.dirty_take(guest)?);
    last.extend(guest.layout.driver_pages());
    last.sort_unstable();
    last.dedup();
    let stop_copy_guest_pages = send_pages(conn, guest, u32::MAX, &last)?;
    times.records += stop_copy_guest_pages.div_ceil(MAX_PAGES_PER_RECORD as u64);
    if let Some(link) = &opts.link {
        // The rate-limited link carries the rest too: the downtime it costs.
        let bytes = stop_copy_device_bytes + stop_copy_guest_pages * PAGE as u64;
        let done =
            t_stop + Duration::from_secs_f64(bytes as f64 / link.bytes_per_sec.max(1) as f64);
        let now = Instant::now();
        if now < done {
            std::thread::sleep(done - now);
        }
    }
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
        stop_detail: end_detail(&end),
        downtime_limit_ms: opts.policy.downtime_limit.as_secs_f64() * 1000.0,
        throttle_steps,
        stopped_at_us,
        stopped_at_ms: ms(t_stop),
        stop_copy: times,
        switchover_wait_ms,
    })
}

fn end_detail(r: &EndReason) -> String {
    r.to_string()
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
            Record::Sync => {
                channel::write_record(conn, &Record::SyncAck)?;
                conn.flush().map_err(ChannelError::Io)?;
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
    // A throttle the source applied is host policy, not device state: it
    // did not travel, and this side runs the device at full speed.
    dev.dev().write_reg(offsets::DMA_THROTTLE, 0)?;
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
