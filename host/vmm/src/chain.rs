//! A chain of live migrations across device forms: one seeded workload
//! starts on the first device and migrates, mid-workload, to each next one
//! in turn (for example the simulated board, then the model, then the RTL,
//! then the board again). The stream format is the same for every form, so
//! state saved by one restores into any other; at the end the last device's
//! guest memory and device memory must equal a never-migrated reference run
//! on the model byte for byte, every completion must have matched the
//! plain-Rust shadow wherever it arrived, and the completion interrupts of
//! all devices must add up to what the workload asked for.

use std::time::Instant;

use serde::Serialize;
use vfpga_regs::consts;

use crate::backend::Kind;
use crate::live::{self, Guest, LiveError, SourceOptions};
use crate::vm::{self, Placement, VmDevice};
use crate::workload::{Layout, Workload};

/// Chain parameters.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// The devices, in order (at least two).
    pub kinds: Vec<Kind>,
    /// Where the devices run.
    pub placement: Placement,
    /// Device memory in bytes (the same for every device).
    pub devmem: u64,
    /// Guest memory in bytes.
    pub guest_mem: u64,
    /// Descriptors in the whole workload.
    pub descriptors: u64,
    /// Workload seed.
    pub seed: u64,
    /// Source options of every hop (the device units per workload round
    /// are [`ChainOptions::budget`]'s, per form).
    pub source: SourceOptions,
}

impl ChainOptions {
    /// Device units per workload round for `kind`: small enough that a fast
    /// form does not finish the workload between two hops (a model step, a
    /// few RTL cycles), large enough for the simulated board's round trips.
    pub fn budget(kind: Kind) -> u64 {
        match kind {
            Kind::Model => 1,
            Kind::Sim => 32,
            Kind::Board => 2000,
        }
    }
}

impl ChainOptions {
    /// Defaults for `kinds`: 16 KiB of device memory and a workload of
    /// [`ChainOptions::segment`] descriptors per device, so every hop comes
    /// mid-workload and the simulated board (a few thousand cycles per
    /// second) gets a short stretch.
    pub fn new(kinds: Vec<Kind>) -> Self {
        let descriptors = kinds.iter().map(|k| Self::segment(*k)).sum();
        ChainOptions {
            kinds,
            placement: Placement::Local,
            devmem: 16 << 10,
            guest_mem: 1 << 20,
            descriptors,
            seed: 0x5eed_c4a1,
            source: SourceOptions {
                descriptors_per_pass: 2,
                ..SourceOptions::default()
            },
        }
    }

    /// Descriptors each form runs before it migrates on (the last one runs
    /// the rest): more than a free-running form completes while a hop is
    /// being prepared and its pre-copy passes run.
    pub fn segment(kind: Kind) -> u64 {
        match kind {
            Kind::Board => 48,
            Kind::Model | Kind::Sim => 160,
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            base: 0x1_0000_0000,
            size: self.guest_mem,
            // A small ring: a free-running form completes at most this
            // many descriptors past the point the VMM stops submitting.
            sq_entries: 4,
            cq_entries: 4,
            devmem: self.devmem,
        }
    }
}

/// One migration of the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// Source form.
    pub from: String,
    /// Destination form.
    pub to: String,
    /// Descriptors verified when the hop started.
    pub at_descriptor: u64,
    /// Descriptors verified when the source stopped (in stop-and-copy).
    pub verified_at_stop: u64,
    /// Pre-copy passes.
    pub passes: usize,
    /// Why pre-copy ended.
    pub stop_reason: String,
    /// Device bytes in stop-and-copy.
    pub stop_copy_device_bytes: u64,
    /// Device stopped on the source → running on the destination.
    #[serde(serialize_with = "crate::ms")]
    pub downtime_ms: f64,
}

/// The chain's report.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The forms, in order.
    pub kinds: Vec<String>,
    /// Descriptors in the workload.
    pub descriptors: u64,
    /// Descriptors verified against the shadow, all devices together.
    pub verified: u64,
    /// The migrations.
    pub hops: Vec<Hop>,
    /// Completion interrupts wanted / received (all devices).
    pub irqs_wanted: u64,
    /// Completion interrupts received.
    pub irqs_received: u64,
    /// Whole run.
    #[serde(serialize_with = "crate::ms")]
    pub total_ms: f64,
    /// Every check passed.
    pub pass: bool,
    /// What failed, if anything.
    pub failure: Option<String>,
}

fn final_memory(dev: &mut dyn VmDevice, guest: &Guest) -> Result<(Vec<u8>, Vec<u8>), LiveError> {
    let d = dev.dev();
    let mut m = vec![0u8; d.info().bar2_size as usize];
    d.devmem_read(0, &mut m)?;
    Ok((guest.read_all()?, m))
}

/// Runs the chain. `Err` means it could not run; a run whose checks failed
/// returns a report with `pass == false`.
pub fn run(o: &ChainOptions) -> Result<ChainReport, LiveError> {
    if o.kinds.len() < 2 {
        return Err(LiveError::Protocol(
            "a chain needs at least two devices".into(),
        ));
    }
    let t0 = Instant::now();
    let layout = o.layout();

    // The reference: the whole workload on the model, never migrated.
    let ref_guest = Guest::new(layout)?;
    let mut ref_dev = vm::open(&Placement::Local, Kind::Model, o.devmem, &ref_guest)?;
    let mut ref_wl = Workload::new(layout, o.seed, o.descriptors);
    let mut ref_ring = ref_wl.start(ref_dev.dev(), &ref_guest.dma)?;
    live::run_for(ref_dev.dev(), &mut ref_wl, &mut ref_ring, 256, u64::MAX)?;
    ref_wl.verify_memory(ref_dev.dev(), &ref_guest.dma)?;
    let (ref_g, ref_d) = final_memory(ref_dev.as_mut(), &ref_guest)?;
    drop(ref_dev);

    let mut guest = Guest::new(layout)?;
    let mut dev = vm::open(&o.placement, o.kinds[0], o.devmem, &guest)?;
    let mut wl = Workload::new(layout, o.seed, o.descriptors);
    let mut ring = wl.start(dev.dev(), &guest.dma)?;
    let mut irqs = 0u64;
    let mut errs = 0u64;
    let mut hops = Vec::new();
    let mut target = 0;
    for pair in o.kinds.windows(2) {
        target += ChainOptions::segment(pair[0]) * o.descriptors
            / o.kinds
                .iter()
                .map(|k| ChainOptions::segment(*k))
                .sum::<u64>()
                .max(1);
        let done = wl.stats().verified;
        let budget = ChainOptions::budget(pair[0]);
        live::run_for(
            dev.dev(),
            &mut wl,
            &mut ring,
            budget,
            target.saturating_sub(done),
        )?;
        let at_descriptor = wl.stats().verified;
        let (listener, addr) = crate::demo::loopback()?;
        let dst_guest = Guest::new(layout)?;
        let dst_dev = vm::open(&o.placement, pair[1], o.devmem, &dst_guest)?;
        let dest = std::thread::spawn(move || -> Result<live::Arrived, LiveError> {
            let mut conn = crate::demo::accept(&listener)?;
            live::migrate_in(dst_guest, dst_dev, &mut conn)
        });
        let mut conn = crate::demo::connect(addr)?;
        let source = SourceOptions { budget, ..o.source };
        let src = live::migrate_out(dev.as_mut(), &guest, &mut wl, &mut ring, &mut conn, &source)?;
        let verified_at_stop = wl.stats().verified;
        irqs += dev.irqs(consts::VECTOR_CPL as u16);
        errs += dev.irqs(consts::VECTOR_ERR as u16);
        let arrived = dest
            .join()
            .map_err(|_| LiveError::Protocol("destination thread panicked".into()))??;
        tracing::info!(
            from = pair[0].name(),
            to = pair[1].name(),
            at_descriptor,
            "chain: hop done"
        );
        hops.push(Hop {
            from: pair[0].name().into(),
            to: pair[1].name().into(),
            at_descriptor,
            verified_at_stop,
            passes: src.passes.len(),
            stop_reason: src.stop_reason,
            stop_copy_device_bytes: src.stop_copy_device_bytes,
            downtime_ms: arrived.report.downtime_ms(),
        });
        drop(dev);
        dev = arrived.dev;
        guest = arrived.guest;
        wl = arrived.workload;
        ring = arrived.ring;
    }
    let last = o.kinds[o.kinds.len() - 1];
    live::run_for(
        dev.dev(),
        &mut wl,
        &mut ring,
        ChainOptions::budget(last),
        u64::MAX,
    )?;
    wl.verify_memory(dev.dev(), &guest.dma)?;
    let (g, d) = final_memory(dev.as_mut(), &guest)?;
    irqs += dev.irqs(consts::VECTOR_CPL as u16);
    errs += dev.irqs(consts::VECTOR_ERR as u16);
    let wanted = ref_wl.snapshot().irq_wanted;
    let verified = wl.stats().verified;
    let first = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
    let failure = if g != ref_g {
        Some(format!(
            "guest memory differs from the reference run at offset {:#x}",
            first(&g, &ref_g)
        ))
    } else if d != ref_d {
        Some(format!(
            "device memory differs from the reference run at offset {:#x}",
            first(&d, &ref_d)
        ))
    } else if irqs != wanted {
        Some(format!(
            "{irqs} completion interrupts received, {wanted} wanted"
        ))
    } else if errs != 0 {
        Some(format!("{errs} error interrupts"))
    } else if verified != o.descriptors {
        Some(format!(
            "{verified} of {} descriptors verified",
            o.descriptors
        ))
    } else {
        hops.iter()
            .find(|h| h.verified_at_stop >= o.descriptors)
            .map(|h| {
                format!(
                    "the {} -> {} hop came after the workload had ended (not mid-workload)",
                    h.from, h.to
                )
            })
    };
    Ok(ChainReport {
        kinds: o.kinds.iter().map(|k| k.name().to_string()).collect(),
        descriptors: o.descriptors,
        verified,
        hops,
        irqs_wanted: wanted,
        irqs_received: irqs,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        pass: failure.is_none(),
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_model_to_model_is_bit_exact() {
        let r = run(&ChainOptions::new(vec![
            Kind::Model,
            Kind::Model,
            Kind::Model,
        ]))
        .unwrap();
        assert!(r.pass, "{r:?}");
        assert_eq!(r.hops.len(), 2);
        assert!(r.hops.iter().all(|h| h.at_descriptor > 0), "{r:?}");
    }
}
