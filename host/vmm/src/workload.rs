//! A verifiable guest workload for the vfpga device.
//!
//! The workload plays a guest driver: it keeps the device busy with a seeded
//! mix of copies, CRC32C and fills, into and out of device memory and guest
//! memory, some with interrupts, and checks every completion against a shadow
//! computed in plain Rust (memcpy, `crc32c`), never against another
//! implementation of the device. Its whole state is plain data (serde), so it
//! can travel with a migration the way a guest's memory and vCPU state do.
//!
//! Guest memory layout (one mapping at [`Layout::base`]):
//! `[SQ ring | CQ ring | data area]`; the data area is where descriptors read
//! and write host memory.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vfpga_device::ring::{Completion, Desc, RingDriver, RingError};
use vfpga_device::{Device, DeviceError, DmaPort};
use vfpga_regs::{CplStatus, Opcode, cpl, desc};

/// Where the workload lives in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// IOVA of the guest memory mapping.
    pub base: u64,
    /// Size of the mapping.
    pub size: u64,
    /// SQ entries.
    pub sq_entries: u32,
    /// CQ entries.
    pub cq_entries: u32,
    /// Device memory size.
    pub devmem: u64,
}

impl Layout {
    /// SQ base IOVA.
    pub fn sq_base(&self) -> u64 {
        self.base
    }
    /// CQ base IOVA (page aligned after the SQ).
    pub fn cq_base(&self) -> u64 {
        self.base + (u64::from(self.sq_entries) * desc::SIZE as u64).next_multiple_of(4096)
    }
    /// First byte of the data area.
    pub fn data_base(&self) -> u64 {
        self.cq_base() + (u64::from(self.cq_entries) * cpl::SIZE as u64).next_multiple_of(4096)
    }
    /// Size of the data area.
    pub fn data_size(&self) -> u64 {
        self.base + self.size - self.data_base()
    }
    /// IOVAs of the pages the guest driver itself writes (the SQ ring), which
    /// a VMM must always resend in the final pass.
    pub fn driver_pages(&self) -> Vec<u64> {
        (self.sq_base()..self.cq_base()).step_by(4096).collect()
    }
}

/// What the workload's descriptors do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Copies both ways, CRC32C and fills, up to 12 KiB each.
    #[default]
    Mixed,
    /// Large fills (three in four) and host-to-device copies of 16-64 KiB
    /// into device memory: dirties device memory as fast as the engine runs
    /// (a device that outpaces a slow migration link).
    DirtyDevmem,
}

impl Mix {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Mixed => "mixed",
            Mix::DirtyDevmem => "dirty-devmem",
        }
    }
}

/// SplitMix64: a tiny deterministic generator whose state is one `u64`, so
/// the workload's position in its sequence migrates with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// What a descriptor must complete with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// The descriptor.
    pub tag: u32,
    /// Status.
    pub status: u8,
    /// BYTES.
    pub bytes: u32,
    /// RESULT.
    pub result: u32,
    /// Opcode, for messages.
    pub opcode: u8,
}

/// Counts of what the workload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Descriptors submitted.
    pub submitted: u64,
    /// Completions checked and correct.
    pub verified: u64,
    /// Bytes moved by verified descriptors.
    pub bytes: u64,
}

/// A mismatch between the device and the shadow.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A completion differs from the expectation.
    #[error("completion mismatch: expected {expected:?}, device wrote {got:?}")]
    Completion {
        /// What the shadow says.
        expected: Expected,
        /// What the device wrote.
        got: Completion,
    },
    /// A completion arrived that nobody submitted.
    #[error("unexpected completion {0:?}")]
    Unexpected(Completion),
    /// Final memory differs from the shadow.
    #[error(
        "{what} differs from the shadow at offset {offset:#x} (device {got:#04x}, shadow {want:#04x})"
    )]
    Memory {
        /// Which memory.
        what: &'static str,
        /// First differing byte.
        offset: u64,
        /// Device value.
        got: u8,
        /// Shadow value.
        want: u8,
    },
    /// The ring driver failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Guest memory access failed.
    #[error(transparent)]
    Dma(#[from] vfpga_device::DmaFault),
}

/// Where a workload is in its sequence: all a destination needs to rebuild
/// it (the sequence is a pure function of the seed), so the guest driver's
/// state crosses a migration in a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Guest layout the workload runs in.
    pub layout: Layout,
    /// Seed of the sequence.
    pub seed: u64,
    /// Descriptors in the whole run.
    pub total: u64,
    /// Counters at the snapshot.
    pub stats: Stats,
    /// Descriptors with the IRQ flag submitted so far.
    pub irq_wanted: u64,
    /// What the descriptors do.
    #[serde(default)]
    pub mix: Mix,
}

/// The workload: generator, shadow memories, and descriptors in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    layout: Layout,
    seed: u64,
    rng: Rng,
    total: u64,
    next_tag: u32,
    in_flight: VecDeque<Expected>,
    /// Shadow of the data area.
    guest: Vec<u8>,
    /// Shadow of device memory.
    devmem: Vec<u8>,
    stats: Stats,
    irq_wanted: u64,
    mix: Mix,
}

const MAX_LEN: u64 = 12 * 1024;

impl Workload {
    /// A workload of `total` descriptors generated from `seed`.
    pub fn new(layout: Layout, seed: u64, total: u64) -> Self {
        Self::with_mix(layout, seed, total, Mix::Mixed)
    }

    /// A workload of `total` descriptors of `mix` generated from `seed`.
    pub fn with_mix(layout: Layout, seed: u64, total: u64, mix: Mix) -> Self {
        let mut rng = Rng(seed);
        let guest: Vec<u8> = (0..layout.data_size()).map(|_| rng.next() as u8).collect();
        Workload {
            layout,
            seed,
            rng,
            total,
            next_tag: 1,
            in_flight: VecDeque::new(),
            guest,
            devmem: vec![0; layout.devmem as usize],
            stats: Stats::default(),
            irq_wanted: 0,
            mix,
        }
    }

    /// Where the workload is (see [`Snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            layout: self.layout,
            seed: self.seed,
            total: self.total,
            stats: self.stats,
            irq_wanted: self.irq_wanted,
            mix: self.mix,
        }
    }

    /// Rebuilds a workload at `snap` by replaying its sequence: the shadow
    /// memories and the descriptors still in flight come out exactly as the
    /// source had them.
    pub fn from_snapshot(layout: Layout, snap: &Snapshot) -> Self {
        let mut w = Workload::with_mix(layout, snap.seed, snap.total, snap.mix);
        let submitted = snap.stats.submitted.min(snap.total);
        for i in 0..submitted {
            let d = w.generate();
            let e = w.shadow_apply(&d);
            if i >= snap.stats.verified {
                w.in_flight.push_back(e);
            }
        }
        w.stats = snap.stats;
        w.irq_wanted = snap.irq_wanted;
        w
    }

    /// Writes the initial data area into guest memory and programs the rings.
    pub fn start<D: Device + ?Sized>(
        &self,
        dev: &mut D,
        dma: &DmaPort,
    ) -> Result<RingDriver, WorkloadError> {
        dma.host_write(self.layout.data_base(), &self.guest)?;
        dev.write_reg(vfpga_regs::offsets::IRQ_MASK, 0)?;
        Ok(RingDriver::setup(
            dev,
            dma,
            self.layout.sq_base(),
            self.layout.sq_entries,
            self.layout.cq_base(),
            self.layout.cq_entries,
        )?)
    }

    /// Layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Descriptors that asked for an interrupt and completed.
    pub fn irqs_wanted(&self) -> u64 {
        self.irq_wanted
    }

    /// Every descriptor submitted and verified.
    pub fn done(&self) -> bool {
        self.stats.submitted == self.total && self.in_flight.is_empty()
    }

    /// Descriptors submitted and not yet verified.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn generate(&mut self) -> Desc {
        if self.mix == Mix::DirtyDevmem {
            return self.generate_dirty();
        }
        let l = self.layout;
        let data = l.data_size();
        let dm = l.devmem;
        let len = 1 + self.rng.below(MAX_LEN.min(data / 2).min(dm));
        let host = |r: &mut Rng| l.data_base() + r.below(data - len + 1);
        let dev = |r: &mut Rng| r.below(dm - len + 1);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let pattern = self.rng.next() as u32;
        let op = match self.rng.below(6) {
            0 => Opcode::CopyH2d,
            1 => Opcode::CopyD2h,
            2 => Opcode::CopyH2h,
            3 => Opcode::Crc32c,
            4 => Opcode::FillDev,
            _ => Opcode::FillHost,
        };
        let (src, dst) = match op {
            Opcode::CopyH2d => (host(&mut self.rng), dev(&mut self.rng)),
            Opcode::CopyD2h => (dev(&mut self.rng), host(&mut self.rng)),
            Opcode::CopyH2h => {
                // Non-overlapping source and destination.
                let half = (data / 2).max(len);
                let a = l.data_base() + self.rng.below(half - len + 1);
                let b = l.data_base() + half + self.rng.below(data - half - len + 1);
                if self.rng.below(2) == 0 {
                    (a, b)
                } else {
                    (b, a)
                }
            }
            Opcode::Crc32c => (host(&mut self.rng), 0),
            Opcode::FillDev => (0, dev(&mut self.rng)),
            _ => (0, host(&mut self.rng)),
        };
        let mut d = Desc::new(op, tag, src, dst, len as u32, pattern);
        if self.rng.below(4) == 0 {
            d = d.with_irq();
        }
        d
    }

    /// [`Mix::DirtyDevmem`]: a large write into device memory.
    fn generate_dirty(&mut self) -> Desc {
        let l = self.layout;
        let data = l.data_size();
        let dm = l.devmem;
        let max = (64 << 10).min(data / 2).min(dm).max(1);
        let min = (16 << 10).min(max);
        let len = min + self.rng.below(max - min + 1);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let pattern = self.rng.next() as u32;
        let dst = self.rng.below(dm - len + 1);
        let mut d = if self.rng.below(4) == 0 {
            let src = l.data_base() + self.rng.below(data - len + 1);
            Desc::new(Opcode::CopyH2d, tag, src, dst, len as u32, pattern)
        } else {
            Desc::new(Opcode::FillDev, tag, 0, dst, len as u32, pattern)
        };
        if self.rng.below(8) == 0 {
            d = d.with_irq();
        }
        d
    }

    /// Applies `d` to the shadow and returns what it must complete with.
    fn shadow_apply(&mut self, d: &Desc) -> Expected {
        let len = d.len as usize;
        let gb = self.layout.data_base();
        let g = |a: u64| (a - gb) as usize;
        let fill = |pattern: u32, n: usize| -> Vec<u8> {
            let p = pattern.to_le_bytes();
            (0..n).map(|i| p[i % 4]).collect()
        };
        let mut result = 0;
        match Opcode::from_raw(u32::from(d.opcode)) {
            Some(Opcode::CopyH2d) => {
                let s = g(d.src);
                let src = self.guest[s..s + len].to_vec();
                self.devmem[d.dst as usize..d.dst as usize + len].copy_from_slice(&src);
            }
            Some(Opcode::CopyD2h) => {
                let src = self.devmem[d.src as usize..d.src as usize + len].to_vec();
                let t = g(d.dst);
                self.guest[t..t + len].copy_from_slice(&src);
            }
            Some(Opcode::CopyH2h) => {
                let (s, t) = (g(d.src), g(d.dst));
                let src = self.guest[s..s + len].to_vec();
                self.guest[t..t + len].copy_from_slice(&src);
            }
            Some(Opcode::Crc32c) => {
                let s = g(d.src);
                result = crc32c::crc32c_append(d.pattern, &self.guest[s..s + len]);
            }
            Some(Opcode::FillDev) => {
                self.devmem[d.dst as usize..d.dst as usize + len]
                    .copy_from_slice(&fill(d.pattern, len));
            }
            Some(Opcode::FillHost) => {
                let t = g(d.dst);
                self.guest[t..t + len].copy_from_slice(&fill(d.pattern, len));
            }
            _ => {}
        }
        Expected {
            tag: d.tag,
            status: CplStatus::Ok.raw() as u8,
            bytes: d.len,
            result,
            opcode: d.opcode,
        }
    }

    /// Submits as many new descriptors as the ring takes.
    pub fn submit<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        ring: &mut RingDriver,
    ) -> Result<usize, WorkloadError> {
        let mut n = 0;
        while self.stats.submitted < self.total && ring.free_slots() > 0 {
            let d = self.generate();
            let e = self.shadow_apply(&d);
            ring.submit(dev, &d)?;
            if d.irq {
                self.irq_wanted += 1;
            }
            self.in_flight.push_back(e);
            self.stats.submitted += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Collects and checks completions.
    pub fn collect<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        ring: &mut RingDriver,
    ) -> Result<usize, WorkloadError> {
        let done = ring.poll(dev)?;
        for c in &done {
            let e = self
                .in_flight
                .pop_front()
                .ok_or(WorkloadError::Unexpected(*c))?;
            if c.tag != e.tag || c.status != e.status || c.bytes != e.bytes || c.result != e.result
            {
                return Err(WorkloadError::Completion {
                    expected: e,
                    got: *c,
                });
            }
            self.stats.verified += 1;
            self.stats.bytes += u64::from(c.bytes);
        }
        if !done.is_empty() {
            // The guest's interrupt handler acknowledges the completion cause.
            dev.write_reg(
                vfpga_regs::offsets::IRQ_STATUS,
                vfpga_regs::IrqStatus::CPL.bits(),
            )?;
        }
        Ok(done.len())
    }

    /// One round: submit, let the device run `budget` units, collect.
    pub fn pump<D: Device + ?Sized>(
        &mut self,
        dev: &mut D,
        ring: &mut RingDriver,
        budget: u64,
    ) -> Result<(), WorkloadError> {
        self.submit(dev, ring)?;
        let p = dev.advance(budget)?;
        if dev.info().self_running && p.used == 0 {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        self.collect(dev, ring)?;
        Ok(())
    }

    /// Compares guest memory and device memory with the shadow.
    pub fn verify_memory<D: Device + ?Sized>(
        &self,
        dev: &mut D,
        dma: &DmaPort,
    ) -> Result<(), WorkloadError> {
        let mut g = vec![0u8; self.guest.len()];
        dma.host_read(self.layout.data_base(), &mut g)?;
        compare("guest memory", &g, &self.guest)?;
        let mut d = vec![0u8; self.devmem.len()];
        dev.devmem_read(0, &mut d)?;
        compare("device memory", &d, &self.devmem)
    }
}

fn compare(what: &'static str, got: &[u8], want: &[u8]) -> Result<(), WorkloadError> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(WorkloadError::Memory {
            what,
            offset: i as u64,
            got: got[i],
            want: want[i],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            base: 0x4000_0000,
            size: 1 << 20,
            sq_entries: 16,
            cq_entries: 16,
            devmem: 256 << 10,
        }
    }

    #[test]
    fn generation_is_deterministic_and_in_bounds() {
        let l = layout();
        let mut a = Workload::new(l, 7, 1000);
        let mut b = Workload::new(l, 7, 1000);
        for _ in 0..1000 {
            let d = a.generate();
            assert_eq!(d, b.generate());
            let len = u64::from(d.len);
            let op = Opcode::from_raw(u32::from(d.opcode)).unwrap();
            let in_host = |x: u64| x >= l.data_base() && x + len <= l.base + l.size;
            let in_dev = |x: u64| x + len <= l.devmem;
            match op {
                Opcode::CopyH2d => assert!(in_host(d.src) && in_dev(d.dst)),
                Opcode::CopyD2h => assert!(in_dev(d.src) && in_host(d.dst)),
                Opcode::CopyH2h => {
                    assert!(in_host(d.src) && in_host(d.dst));
                    assert!(d.src + len <= d.dst || d.dst + len <= d.src);
                }
                Opcode::Crc32c => assert!(in_host(d.src)),
                Opcode::FillDev => assert!(in_dev(d.dst)),
                Opcode::FillHost => assert!(in_host(d.dst)),
                Opcode::Nop => panic!("no NOPs generated"),
            }
        }
    }

    #[test]
    fn snapshot_replay_rebuilds_the_same_workload() {
        let l = layout();
        let mut a = Workload::new(l, 11, 50);
        for _ in 0..20 {
            let d = a.generate();
            let e = a.shadow_apply(&d);
            a.in_flight.push_back(e);
            a.stats.submitted += 1;
        }
        for _ in 0..12 {
            a.in_flight.pop_front();
            a.stats.verified += 1;
        }
        let b = Workload::from_snapshot(l, &a.snapshot());
        assert_eq!(b.in_flight, a.in_flight);
        assert_eq!(b.guest, a.guest);
        assert_eq!(b.devmem, a.devmem);
        assert_eq!(b.rng, a.rng);
    }

    #[test]
    fn shadow_matches_plain_rust() {
        let l = layout();
        let mut w = Workload::new(l, 1, 10);
        let src = l.data_base() + 10;
        let before = w.guest[10..20].to_vec();
        let e = w.shadow_apply(&Desc::new(Opcode::Crc32c, 1, src, 0, 10, 0));
        assert_eq!(e.result, crc32c::crc32c(&before));
        w.shadow_apply(&Desc::new(Opcode::FillDev, 2, 0, 3, 6, 0x0403_0201));
        assert_eq!(&w.devmem[3..9], &[1, 2, 3, 4, 1, 2]);
    }
}
