//! The demo: a live migration of the device mid-workload, verified bit-exact.
//!
//! Each VM's device runs behind its own vfio-user server (by default a
//! `vfpga serve` process; see [`Placement`]), with guest memory in a memfd
//! the server maps through DMA_MAP.
//!
//! 1. A reference VM runs the whole seeded workload without migrating.
//! 2. A source VM runs the same workload; part-way through, it live-migrates
//!    (pre-copy passes while the workload runs, then stop-and-copy) over TCP
//!    to a destination VM in another thread, whose device server was started
//!    beforehand and waits in RESUMING; the destination resumes the device
//!    and the workload and runs it to the end.
//! 3. Every completion was checked against the plain-Rust shadow on whichever
//!    side it arrived; the destination's final guest memory and device memory
//!    must equal the reference run's byte for byte, and the interrupts the
//!    two sides received must add up to the descriptors that asked for one.

use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde::Serialize;
use vfpga_device::Device;
use vfpga_regs::consts;

use crate::backend::Kind;
use crate::live::{self, Guest, Link, LiveError, Pass, SourceOptions, ThrottleStep};
use crate::server::Launch;
use crate::vm::{self, Placement};
use crate::workload::{Layout, Mix, Workload};

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Backend of all three devices.
    pub kind: Kind,
    /// Where the devices run.
    pub placement: Placement,
    /// Device memory in bytes.
    pub devmem: u64,
    /// Guest memory in bytes.
    pub guest_mem: u64,
    /// Descriptors in the workload.
    pub descriptors: u64,
    /// Workload seed.
    pub seed: u64,
    /// Fraction of the workload done before migrating.
    pub migrate_at: f64,
    /// What the workload's descriptors do.
    pub mix: Mix,
    /// Source options.
    pub source: SourceOptions,
}

impl DemoOptions {
    /// Defaults for `kind` with `devmem` bytes of device memory, each device
    /// behind an in-process vfio-user server (the `vfpga` binary passes
    /// [`Launch::Process`] instead).
    pub fn new(kind: Kind, devmem: u64) -> Self {
        DemoOptions {
            kind,
            placement: Placement::Server(Launch::InThread),
            devmem,
            guest_mem: 4 << 20,
            descriptors: match kind {
                Kind::Model => 3000,
                Kind::Sim => 1200,
                // The simulated board runs a few thousand cycles per second.
                Kind::Board => 40,
            },
            seed: 0x5eed_2026,
            migrate_at: 0.3,
            mix: Mix::Mixed,
            source: SourceOptions::default(),
        }
    }

    /// The workload that outpaces its link: 256 KiB of device memory
    /// rewritten by back-to-back fills and copies ([`Mix::DirtyDevmem`]),
    /// 1 MiB of guest memory, a 4 MiB/s link (the device in this process
    /// runs 256 Ki units per second of link time) and a 20 ms downtime
    /// limit, 8 passes at most. Unthrottled, every pass leaves the whole
    /// device memory dirty (about 60 ms at 4 MiB/s): pre-copy ends on the
    /// pass limit. With auto-converge (a step after every pass that leaves
    /// half of what it sent), the throttle brings it under the limit.
    pub fn dirty(kind: Kind) -> Self {
        let mut o = DemoOptions::new(kind, 256 << 10);
        o.guest_mem = 1 << 20;
        o.descriptors = 1000;
        o.migrate_at = 0.2;
        o.mix = Mix::DirtyDevmem;
        o.source.link = Some(Link {
            bytes_per_sec: 4 << 20,
            device_units_per_sec: 256 << 10,
        });
        o.source.policy.downtime_limit = std::time::Duration::from_millis(20);
        o.source.policy.max_passes = 8;
        o.source.policy.stall_passes = 0;
        if let Some(ac) = o.source.policy.auto_converge.as_mut() {
            ac.high_passes = 1;
        }
        o
    }

    /// The guest layout both sides of a migration use.
    pub fn layout(&self) -> Layout {
        Layout {
            base: 0x1_0000_0000,
            size: self.guest_mem,
            sq_entries: 64,
            cq_entries: 64,
            devmem: self.devmem,
        }
    }
}

/// Version of the demo's JSON report ([`DemoReport`] serialized).
pub const SCHEMA_VERSION: u32 = 1;

/// The downtime window phase by phase (ms): on the source, then the
/// destination catching up with what the source sent, then the
/// destination's restore. Each end times its own phases; both run on one
/// clock here, so the phases add up to `downtime_ms`, except where a
/// thread was preempted at the end of a source phase (the time it waited
/// for the CPU counts in that phase while the destination went on).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DowntimeBreakdown {
    /// The source's phases and messages (quiesce, device stream, guest
    /// pages, hand-off; device reads and records after the stop), as the
    /// source measured them.
    #[serde(flatten)]
    pub source: crate::live::StopCopyTimes,
    /// Destination: from the source's last record sent to its arrival (the
    /// destination still writing the stream into its device and guest).
    #[serde(serialize_with = "crate::ms")]
    pub transfer_tail_ms: f64,
    /// Destination: end record to RESUMING → RUNNING started (checks).
    #[serde(serialize_with = "crate::ms")]
    pub destination_checks_ms: f64,
    /// Destination: RESUMING → RUNNING (state validated and restored,
    /// device resumed).
    #[serde(serialize_with = "crate::ms")]
    pub restore_resume_ms: f64,
    /// State changes in the window (source stop, destination resume).
    pub state_changes: u64,
}

impl DowntimeBreakdown {
    /// The breakdown of one migration from both ends' reports.
    pub fn from_reports(src: &crate::live::SourceReport, dst: &crate::live::DestReport) -> Self {
        let t = src.stop_copy;
        let source_ms = t.quiesce_ms + t.device_stream_ms + t.guest_pages_ms + t.handoff_ms;
        let end_ms = dst.end_received_at_us.saturating_sub(dst.stopped_at_us) as f64 / 1000.0;
        let after_end = dst.resumed_at_us.saturating_sub(dst.end_received_at_us) as f64 / 1000.0;
        DowntimeBreakdown {
            source: t,
            transfer_tail_ms: (end_ms - source_ms).max(0.0),
            destination_checks_ms: (after_end - dst.restore_resume_ms).max(0.0),
            restore_resume_ms: dst.restore_resume_ms,
            state_changes: 2,
        }
    }
}

/// The demo's report. As JSON: milliseconds to the microsecond, names as
/// documented on each field.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Backend.
    pub backend: String,
    /// Where the devices ran.
    pub devices: String,
    /// Device memory bytes.
    pub devmem_bytes: u64,
    /// Descriptors in the workload.
    pub descriptors: u64,
    /// What they do (`mixed`, `dirty-devmem`).
    pub workload: String,
    /// Descriptors verified on the source.
    pub verified_on_source: u64,
    /// Descriptors verified on the destination.
    pub verified_on_destination: u64,
    /// Pre-copy passes.
    pub passes: Vec<Pass>,
    /// Why pre-copy ended: `converged`, `byte-budget`, `pass-limit` or
    /// `not-converging`.
    pub stop_reason: String,
    /// The same in words, with the figures.
    pub stop_detail: String,
    /// The downtime limit pre-copy aimed at.
    #[serde(serialize_with = "crate::ms")]
    pub downtime_limit_ms: f64,
    /// Link rate limit, bytes per second (`null`: none).
    pub link_bytes_per_sec: Option<u64>,
    /// Auto-converge steps (`DMA_THROTTLE` raised after a pass).
    pub throttle_steps: Vec<ThrottleStep>,
    /// Device bytes after the stop.
    pub stop_copy_device_bytes: u64,
    /// Guest pages after the stop.
    pub stop_copy_guest_pages: u64,
    /// ms since migration start when the source device stopped.
    #[serde(serialize_with = "crate::ms")]
    pub stopped_at_ms: f64,
    /// How long the source waited, device still running, for the
    /// destination to acknowledge the pre-copy data before it stopped (ms).
    #[serde(serialize_with = "crate::ms")]
    pub switchover_wait_ms: f64,
    /// Device stopped on the source → running on the destination.
    #[serde(serialize_with = "crate::ms")]
    pub downtime_ms: f64,
    /// Where the downtime went.
    pub downtime_breakdown: DowntimeBreakdown,
    /// Whole migration, first pass to destination running.
    #[serde(serialize_with = "crate::ms")]
    pub migration_ms: f64,
    /// Whole demo.
    #[serde(serialize_with = "crate::ms")]
    pub total_ms: f64,
    /// Same-run baseline for the total: the unmigrated reference run.
    #[serde(serialize_with = "crate::ms")]
    pub reference_ms: f64,
    /// Same-run baseline for the downtime: a memcpy of the stop-and-copy bytes.
    #[serde(serialize_with = "crate::ms")]
    pub stop_copy_memcpy_ms: f64,
    /// Interrupts wanted / received (source + destination).
    pub irqs_wanted: u64,
    /// Interrupts received on the completion vector.
    pub irqs_received: u64,
    /// Every check passed.
    pub pass: bool,
    /// What failed, if anything.
    pub failure: Option<String>,
}

fn run_to_end(
    dev: &mut dyn Device,
    wl: &mut Workload,
    ring: &mut vfpga_device::ring::RingDriver,
    budget: u64,
) -> Result<(), LiveError> {
    live::run_for(dev, wl, ring, budget, u64::MAX)
}

fn final_memory(dev: &mut dyn Device, guest: &Guest) -> Result<(Vec<u8>, Vec<u8>), LiveError> {
    let mut d = vec![0u8; dev.info().bar2_size as usize];
    dev.devmem_read(0, &mut d)?;
    Ok((guest.read_all()?, d))
}

/// Runs the demo. `Err` means it could not run; a run whose checks failed
/// returns a report with `pass == false`.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, LiveError> {
    let t0 = Instant::now();
    let layout = opts.layout();

    // 1. Reference run, never migrated.
    let t_ref = Instant::now();
    let ref_guest = Guest::new(layout)?;
    let mut ref_dev = vm::open(&opts.placement, opts.kind, opts.devmem, &ref_guest)?;
    let mut ref_wl = Workload::with_mix(layout, opts.seed, opts.descriptors, opts.mix);
    let mut ref_ring = ref_wl.start(ref_dev.dev(), &ref_guest.dma)?;
    run_to_end(
        ref_dev.dev(),
        &mut ref_wl,
        &mut ref_ring,
        opts.source.budget,
    )?;
    ref_wl.verify_memory(ref_dev.dev(), &ref_guest.dma)?;
    let (ref_g, ref_d) = final_memory(ref_dev.dev(), &ref_guest)?;
    drop(ref_dev);
    let reference_ms = t_ref.elapsed().as_secs_f64() * 1000.0;

    // 2. The destination VM waits with its device set up (like QEMU's
    // -incoming); the source connects over TCP on loopback.
    let (listener, addr) = loopback()?;
    let dst_guest = Guest::new(layout)?;
    let dst_dev = vm::open(&opts.placement, opts.kind, opts.devmem, &dst_guest)?;
    let dst_where = dst_dev.describe();
    let budget = opts.source.budget;
    let dest = std::thread::spawn(move || -> Result<_, LiveError> {
        let mut conn = accept(&listener)?;
        let mut arrived = live::migrate_in(dst_guest, dst_dev, &mut conn)?;
        let resumed = Instant::now();
        let verified_before = arrived.workload.stats().verified;
        run_to_end(
            arrived.dev.dev(),
            &mut arrived.workload,
            &mut arrived.ring,
            budget,
        )?;
        arrived
            .workload
            .verify_memory(arrived.dev.dev(), &arrived.guest.dma)?;
        let (g, d) = final_memory(arrived.dev.dev(), &arrived.guest)?;
        let irqs = (
            arrived.dev.irqs(consts::VECTOR_CPL as u16),
            arrived.dev.irqs(consts::VECTOR_ERR as u16),
        );
        Ok((
            arrived.report,
            arrived.workload.stats().verified - verified_before,
            g,
            d,
            resumed,
            irqs,
        ))
    });

    let src_guest = Guest::new(layout)?;
    let mut src_dev = vm::open(&opts.placement, opts.kind, opts.devmem, &src_guest)?;
    let src_where = src_dev.describe();
    let mut wl = Workload::with_mix(layout, opts.seed, opts.descriptors, opts.mix);
    let mut ring = wl.start(src_dev.dev(), &src_guest.dma)?;
    let switch_at = (opts.descriptors as f64 * opts.migrate_at) as u64;
    let before = wl.stats().verified;
    live::run_for(
        src_dev.dev(),
        &mut wl,
        &mut ring,
        budget,
        switch_at.saturating_sub(before),
    )?;
    let mut conn = connect(addr)?;
    let t_mig = Instant::now();
    let src = live::migrate_out(
        src_dev.as_mut(),
        &src_guest,
        &mut wl,
        &mut ring,
        &mut conn,
        &opts.source,
    )?;
    let verified_on_source = wl.stats().verified;
    let irqs_wanted = wl.snapshot().irq_wanted;
    let src_irqs = (
        src_dev.irqs(consts::VECTOR_CPL as u16),
        src_dev.irqs(consts::VECTOR_ERR as u16),
    );
    let (dst, verified_on_destination, g, d, resumed, dst_irqs) = dest
        .join()
        .map_err(|_| LiveError::Protocol("destination thread panicked".into()))??;
    drop(src_dev);
    let migration_ms = resumed.duration_since(t_mig).as_secs_f64() * 1000.0;

    // 3. Checks.
    let mut failure = None;
    if g != ref_g {
        let i = g.iter().zip(&ref_g).position(|(a, b)| a != b).unwrap_or(0);
        failure = Some(format!(
            "guest memory differs from the reference run at offset {i:#x}"
        ));
    } else if d != ref_d {
        let i = d.iter().zip(&ref_d).position(|(a, b)| a != b).unwrap_or(0);
        failure = Some(format!(
            "device memory differs from the reference run at offset {i:#x}"
        ));
    }
    let irqs_received = src_irqs.0 + dst_irqs.0;
    let err_irqs = src_irqs.1 + dst_irqs.1;
    let all_wanted = irqs_wanted.max(ref_wl.snapshot().irq_wanted);
    if failure.is_none() && irqs_received != all_wanted {
        failure = Some(format!(
            "{irqs_received} completion interrupts received, {all_wanted} wanted"
        ));
    }
    if failure.is_none() && err_irqs != 0 {
        failure = Some(format!("{err_irqs} error interrupts"));
    }
    if failure.is_none() && verified_on_source + verified_on_destination != opts.descriptors {
        failure = Some("not every descriptor was verified".into());
    }
    let n = (src.stop_copy_device_bytes + src.stop_copy_guest_pages * 4096) as usize;
    let from = vec![0x5au8; n];
    let mut to = vec![0u8; n];
    let t_copy = Instant::now();
    to.copy_from_slice(std::hint::black_box(&from));
    std::hint::black_box(&mut to);
    let stop_copy_memcpy_ms = t_copy.elapsed().as_secs_f64() * 1000.0;
    let downtime_breakdown = DowntimeBreakdown::from_reports(&src, &dst);
    Ok(DemoReport {
        schema_version: SCHEMA_VERSION,
        reference_ms,
        stop_copy_memcpy_ms,
        backend: opts.kind.name().into(),
        devices: format!(
            "{}: source {src_where}, destination {dst_where}",
            opts.placement.describe()
        ),
        devmem_bytes: opts.devmem,
        descriptors: opts.descriptors,
        workload: opts.mix.name().into(),
        verified_on_source,
        verified_on_destination,
        passes: src.passes,
        stop_reason: src.stop_reason,
        stop_detail: src.stop_detail,
        downtime_limit_ms: src.downtime_limit_ms,
        link_bytes_per_sec: opts.source.link.map(|l| l.bytes_per_sec),
        throttle_steps: src.throttle_steps,
        stop_copy_device_bytes: src.stop_copy_device_bytes,
        stop_copy_guest_pages: src.stop_copy_guest_pages,
        stopped_at_ms: src.stopped_at_ms,
        switchover_wait_ms: src.switchover_wait_ms,
        downtime_ms: dst.downtime_ms(),
        downtime_breakdown,
        migration_ms,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        irqs_wanted: all_wanted,
        irqs_received,
        pass: failure.is_none(),
        failure,
    })
}

/// A listener on a free loopback port, and its address: where a demo's
/// destination waits for its source (like QEMU's `-incoming tcp:`).
pub(crate) fn loopback() -> Result<(TcpListener, std::net::SocketAddr), LiveError> {
    let io = |e: std::io::Error| LiveError::Protocol(e.to_string());
    let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = l.local_addr().map_err(io)?;
    Ok((l, addr))
}

/// The migration channel's destination end: the source's connection, with
/// Nagle off (records are small and each waits for an answer).
pub(crate) fn accept(l: &TcpListener) -> Result<TcpStream, LiveError> {
    let (conn, _) = l.accept().map_err(|e| LiveError::Protocol(e.to_string()))?;
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

/// The migration channel's source end, with Nagle off.
pub(crate) fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, LiveError> {
    let conn = TcpStream::connect(addr).map_err(|e| LiveError::Protocol(e.to_string()))?;
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_migration_of_the_model_mid_workload_is_bit_exact() {
        let mut o = DemoOptions::new(Kind::Model, 256 << 10);
        o.descriptors = 2000;
        let r = run(&o).unwrap();
        assert!(r.pass, "{r:?}");
        assert!(
            r.verified_on_source > 0 && r.verified_on_destination > 0,
            "{r:?}"
        );
        assert!(
            r.passes.iter().skip(1).any(|p| p.descriptors_during > 0)
                || r.passes[0].descriptors_during > 0
        );
    }

    /// The workload that outpaces its link: without auto-converge pre-copy
    /// never gets under the downtime limit and ends on the pass limit; with
    /// it, the source throttles the device's DMA step by step and pre-copy
    /// converges. Both runs are bit-exact. The devices are models in this
    /// process, so how much a pass dirties follows the link time (device
    /// units per second of link), not this machine's speed; the reason each
    /// run ended is asserted, not a timing.
    #[test]
    fn a_device_that_outpaces_the_link_converges_only_when_throttled() {
        let mut o = DemoOptions::dirty(Kind::Model);
        o.placement = Placement::Local;
        let mut before = o.clone();
        before.source.policy.auto_converge = None;
        let r = run(&before).unwrap();
        assert!(r.pass, "{r:?}");
        assert_eq!(r.stop_reason, "pass-limit", "{}", r.stop_detail);
        assert!(r.throttle_steps.is_empty());
        assert!(r.passes.iter().all(|p| p.throttle == 0));

        let r = run(&o).unwrap();
        assert!(r.pass, "{r:?}");
        assert_eq!(r.stop_reason, "converged", "{}", r.stop_detail);
        assert!(!r.throttle_steps.is_empty(), "{r:?}");
        let steps: Vec<u32> = r.throttle_steps.iter().map(|s| s.value).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
        assert!(r.passes.last().is_some_and(|p| p.throttle > 0));
    }
}
