//! The test itself: identity checks, then copy, CRC32C and fill descriptors
//! between guest memory and device memory, every result and every completion
//! checked, and the interrupts of each vector counted.
//!
//! Interrupt counts are exact, not "at least": one batch is in flight at a
//! time, only its last descriptor may carry the IRQ flag, and the cause is
//! cleared (W1C) after the message arrived, so every batch with an IRQ
//! descriptor owes exactly one completion message (datasheet §4), and every
//! descriptor error exactly one error message.

use std::time::{Duration, Instant};

use vfpga_device::ring::{Completion, Desc};
use vfpga_regs::{
    CplStatus, Ctrl, IrqMask, IrqStatus, Opcode, Status, consts, fields, offsets, regs,
};

use crate::Summary;
use crate::dma::DmaBuf;
use crate::irq::Irqs;
use crate::mmio::{DevMem, Regs};
use crate::ring::{HANG_GUARD, RingLayout, Rings};

/// Ring layout inside the DMA buffer: 8 entries, so the test wraps the rings.
pub const LAYOUT: RingLayout = RingLayout {
    sq_off: 0,
    cq_off: 4096,
    entries: 8,
};
/// Guest buffers inside the DMA buffer (byte offsets; odd lengths and
/// unaligned ends on purpose, so bursts split at page boundaries).
const A: usize = 0x1_0000;
const B: usize = 0x2_0000;
const C: usize = 0x3_0000;
const E: usize = 0x4_0000;
const F: usize = 0x5_0000;
/// Length of the main transfer: crosses two 4 KiB boundaries.
const LEN: usize = 10_007;
/// Smallest DMA buffer the workload needs.
pub const MIN_BUF: usize = 0x6_0000;
const _: () = assert!(MIN_BUF <= crate::dma::HUGE_PAGE);

/// Deterministic test data (xorshift64*).
pub fn pattern_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// What a FILL_* descriptor of `len` bytes with `pattern` writes.
pub fn fill_bytes(pattern: u32, len: usize) -> Vec<u8> {
    let p = pattern.to_le_bytes();
    (0..len).map(|i| p[i % 4]).collect()
}

/// Checks the identity registers against the datasheet (§2) and the generated
/// constants; returns the device-memory size in bytes.
pub fn check_identity<R: Regs>(r: &R, bar2_len: u64) -> Result<usize, String> {
    let id = r.read32(offsets::ID);
    if id != consts::DEVICE_MAGIC {
        return Err(format!(
            "ID {id:#010x}, want DEVICE_MAGIC {:#010x}",
            consts::DEVICE_MAGIC
        ));
    }
    let v = r.read32(offsets::RTL_VERSION);
    let major = fields::rtl_version::MAJOR;
    if major.get(v) != major.get(consts::RTL_VERSION) {
        return Err(format!(
            "RTL_VERSION {v:#x}: major {} unknown to this program (knows {})",
            major.get(v),
            major.get(consts::RTL_VERSION)
        ));
    }
    let pci = r.read32(offsets::PCI_ID);
    if pci != consts::PCI_ID_VALUE {
        return Err(format!(
            "PCI_ID {pci:#010x}, want {:#010x}",
            consts::PCI_ID_VALUE
        ));
    }
    let si = r.read32(offsets::STATE_INFO);
    if si != consts::STATE_INFO_VALUE {
        return Err(format!(
            "STATE_INFO {si:#x}, want {:#x}",
            consts::STATE_INFO_VALUE
        ));
    }
    let feat = r.read32(offsets::FEATURES);
    if let vfpga_regs::Reset::Value(want) = regs::FEATURES.reset
        && feat != want
    {
        return Err(format!("FEATURES {feat:#x}, want {want:#x}"));
    }
    let pages = r.read32(offsets::DEVMEM_PAGES);
    if pages == 0 || !pages.is_power_of_two() || pages > consts::MAX_DEVMEM_PAGES {
        return Err(format!(
            "DEVMEM_PAGES {pages} is not a power of two up to MAX_DEVMEM_PAGES"
        ));
    }
    let bytes = u64::from(pages) * u64::from(consts::PAGE_SIZE);
    if bytes != bar2_len {
        return Err(format!(
            "DEVMEM_PAGES says {bytes} bytes, BAR2 is {bar2_len}"
        ));
    }
    Ok(bytes as usize)
}

struct Run<'a, R: Regs, D: DevMem, I: Irqs> {
    regs: &'a R,
    devmem: &'a D,
    irqs: &'a I,
    mem: &'a DmaBuf,
    rings: Rings<'a, R>,
    want_irqs: Vec<u64>,
    tag: u32,
    done: u32,
}

impl<R: Regs, D: DevMem, I: Irqs> Run<'_, R, D, I> {
    fn next_tag(&mut self) -> u32 {
        self.tag = self.tag.wrapping_add(0x101);
        self.tag
    }

    /// Runs a batch; the last descriptor gets the IRQ flag if `irq`. Checks
    /// tags, OK status and byte counts, then waits for the interrupt.
    fn batch(
        &mut self,
        what: &str,
        mut descs: Vec<Desc>,
        irq: bool,
    ) -> Result<Vec<Completion>, String> {
        if irq && let Some(last) = descs.last_mut() {
            *last = last.with_irq();
        }
        let cpls = self.rings.run(&descs).map_err(|e| format!("{what}: {e}"))?;
        for (d, c) in descs.iter().zip(&cpls) {
            let want_bytes = if d.opcode == Opcode::Nop.raw() as u8 {
                0
            } else {
                d.len
            };
            if c.tag != d.tag || c.status() != Some(CplStatus::Ok) || c.bytes != want_bytes {
                return Err(format!("{what}: completion {c:?} for descriptor {d:?}"));
            }
        }
        self.done += cpls.len() as u32;
        if irq {
            self.expect_irq(what, consts::VECTOR_CPL as usize, IrqStatus::CPL)?;
        }
        Ok(cpls)
    }

    /// Waits until vector `v` has delivered one more message than before,
    /// then clears the cause.
    fn expect_irq(&mut self, what: &str, v: usize, cause: IrqStatus) -> Result<(), String> {
        self.want_irqs[v] += 1;
        let start = Instant::now();
        loop {
            let got = self.irqs.counts()?;
            if got.len() != self.want_irqs.len() {
                return Err(format!("{what}: {} vectors in irq_counts", got.len()));
            }
            if got[v] > self.want_irqs[v] {
                return Err(format!(
                    "{what}: vector {v} has {} interrupts, want {}",
                    got[v], self.want_irqs[v]
                ));
            }
            if got[v] == self.want_irqs[v] {
                break;
            }
            if start.elapsed() > HANG_GUARD {
                return Err(format!(
                    "{what}: no interrupt on vector {v} (counts {got:?}, IRQ_STATUS {:#x}, IRQ_PENDING {:#x})",
                    self.regs.read32(offsets::IRQ_STATUS),
                    self.regs.read32(offsets::IRQ_PENDING)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.regs.write32(offsets::IRQ_STATUS, cause.bits());
        Ok(())
    }

    fn host(&self, off: usize, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.mem.read(off, &mut v);
        v
    }

    fn dev(&self, off: usize, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.devmem.read(off, &mut v);
        v
    }
}

fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!("{what}: {} bytes, want {}", got.len(), want.len())),
        Some(i) => Err(format!(
            "{what}: byte {i} is {:#04x}, want {:#04x}",
            got[i], want[i]
        )),
    }
}

/// Runs the whole test on a device whose BAR0 is `regs` and BAR2 `devmem`,
/// with guest memory `mem` and interrupt counts from `irqs`.
pub fn run<R: Regs, D: DevMem, I: Irqs>(
    regs: &R,
    devmem: &D,
    irqs: &I,
    mem: &DmaBuf,
) -> Result<Summary, String> {
    if mem.len() < MIN_BUF {
        return Err(format!("DMA buffer of {} bytes, need {MIN_BUF}", mem.len()));
    }
    let devmem_len = check_identity(regs, devmem.len() as u64)?;
    let vectors = irqs.counts()?.len();
    if vectors != consts::NUM_VECTORS as usize {
        return Err(format!(
            "{vectors} MSI-X vectors, the datasheet says {}",
            consts::NUM_VECTORS
        ));
    }
    let irqs_before = irqs.counts()?;
    let base_irqs: u64 = irqs_before.iter().sum();

    // A clean device: soft reset, then the reset values the datasheet gives.
    regs.write32(offsets::CTRL, Ctrl::SOFT_RESET.bits());
    let (ctrl, status, mask) = (
        regs.read32(offsets::CTRL),
        regs.read32(offsets::STATUS),
        regs.read32(offsets::IRQ_MASK),
    );
    if ctrl != 0
        || Status::from_bits_retain(status).contains(Status::HALTED)
        || mask != IrqMask::all().bits()
    {
        return Err(format!(
            "after SOFT_RESET: CTRL {ctrl:#x} STATUS {status:#x} IRQ_MASK {mask:#x}"
        ));
    }
    regs.write32(offsets::SCRATCH, 0x5a5a_0ff0);
    if regs.read32(offsets::SCRATCH) != 0x5a5a_0ff0 {
        return Err("SCRATCH does not hold what was written".into());
    }

    // BAR2 directly: write through the mapping, read it back.
    let d_bar = devmem_len - 3 * 4096 - 5;
    let direct = pattern_bytes(7, 300);
    devmem.write(d_bar, &direct);
    let mut back = vec![0u8; direct.len()];
    devmem.read(d_bar, &mut back);
    same("BAR2 write/read", &back, &direct)?;

    let rings = Rings::setup(regs, mem, LAYOUT)?;
    regs.write32(offsets::IRQ_MASK, 0);
    regs.write32(offsets::IRQ_STATUS, IrqStatus::all().bits());
    rings.enable();
    let mut t = Run {
        regs,
        devmem,
        irqs,
        mem,
        rings,
        want_irqs: irqs_before,
        tag: 0x7700,
        done: 0,
    };

    let data = pattern_bytes(0x1234_5678, LEN);
    mem.write(A, &data);
    let d1 = 2 * 4096 + 3;

    // COPY_H2D, checked through BAR2.
    let tag = t.next_tag();
    t.batch(
        "COPY_H2D",
        vec![Desc::new(
            Opcode::CopyH2d,
            tag,
            mem.iova(A),
            d1 as u64,
            LEN as u32,
            0,
        )],
        true,
    )?;
    same("COPY_H2D result read through BAR2", &t.dev(d1, LEN), &data)?;

    // COPY_D2H back into a poisoned buffer; the byte after must stay.
    mem.fill(B, LEN + 1, 0xee);
    let tag = t.next_tag();
    t.batch(
        "COPY_D2H",
        vec![Desc::new(
            Opcode::CopyD2h,
            tag,
            d1 as u64,
            mem.iova(B),
            LEN as u32,
            0,
        )],
        true,
    )?;
    same("COPY_D2H result", &t.host(B, LEN), &data)?;
    same("COPY_D2H wrote past its end", &t.host(B + LEN, 1), &[0xee])?;

    // BAR2-written bytes come back through COPY_D2H too.
    let tag = t.next_tag();
    t.batch(
        "COPY_D2H of BAR2-written bytes",
        vec![Desc::new(
            Opcode::CopyD2h,
            tag,
            d_bar as u64,
            mem.iova(E),
            direct.len() as u32,
            0,
        )],
        false,
    )?;
    same(
        "COPY_D2H of BAR2-written bytes",
        &t.host(E, direct.len()),
        &direct,
    )?;

    // COPY_H2H.
    mem.fill(C, LEN + 1, 0xee);
    let tag = t.next_tag();
    t.batch(
        "COPY_H2H",
        vec![Desc::new(
            Opcode::CopyH2h,
            tag,
            mem.iova(A),
            mem.iova(C),
            LEN as u32,
            0,
        )],
        true,
    )?;
    same("COPY_H2H result", &t.host(C, LEN), &data)?;
    same("COPY_H2H wrote past its end", &t.host(C + LEN, 1), &[0xee])?;

    // CRC32C in one go, then split in two with the first result as the seed.
    let want_crc = crc32c::crc32c(&data);
    let tag = t.next_tag();
    let c = t.batch(
        "CRC32C",
        vec![Desc::new(
            Opcode::Crc32c,
            tag,
            mem.iova(A),
            0,
            LEN as u32,
            0,
        )],
        true,
    )?;
    if c[0].result != want_crc {
        return Err(format!(
            "CRC32C {:#010x}, want {want_crc:#010x}",
            c[0].result
        ));
    }
    let half = 4099;
    let tag = t.next_tag();
    let c1 = t.batch(
        "CRC32C first part",
        vec![Desc::new(
            Opcode::Crc32c,
            tag,
            mem.iova(A),
            0,
            half as u32,
            0,
        )],
        false,
    )?;
    if c1[0].result != crc32c::crc32c(&data[..half]) {
        return Err(format!(
            "CRC32C of the first {half} bytes {:#010x}",
            c1[0].result
        ));
    }
    let tag = t.next_tag();
    let c2 = t.batch(
        "CRC32C continued",
        vec![Desc::new(
            Opcode::Crc32c,
            tag,
            mem.iova(A + half),
            0,
            (LEN - half) as u32,
            c1[0].result,
        )],
        false,
    )?;
    if c2[0].result != want_crc {
        return Err(format!(
            "continued CRC32C {:#010x}, want {want_crc:#010x}",
            c2[0].result
        ));
    }

    // FILL_DEV, checked through BAR2 and through COPY_D2H.
    let (d2, flen, pat) = (5 * 4096 - 100, 777usize, 0xa5b6_c7d8u32);
    let tag = t.next_tag();
    t.batch(
        "FILL_DEV",
        vec![Desc::new(
            Opcode::FillDev,
            tag,
            0,
            d2 as u64,
            flen as u32,
            pat,
        )],
        true,
    )?;
    same(
        "FILL_DEV result read through BAR2",
        &t.dev(d2, flen),
        &fill_bytes(pat, flen),
    )?;

    // FILL_HOST between guard bytes.
    let (hlen, hpat) = (1001usize, 0x0102_0304u32);
    mem.fill(F, hlen + 2, 0xee);
    let tag = t.next_tag();
    t.batch(
        "FILL_HOST",
        vec![Desc::new(
            Opcode::FillHost,
            tag,
            0,
            mem.iova(F + 1),
            hlen as u32,
            hpat,
        )],
        true,
    )?;
    same(
        "FILL_HOST result",
        &t.host(F + 1, hlen),
        &fill_bytes(hpat, hlen),
    )?;
    same(
        "FILL_HOST guard bytes",
        &[t.host(F, 1)[0], t.host(F + 1 + hlen, 1)[0]],
        &[0xee, 0xee],
    )?;

    // A batch of five that wraps both rings, one interrupt at its end.
    mem.fill(E, 4096, 0);
    let mut descs = vec![Desc::new(Opcode::Nop, t.next_tag(), 0, 0, 123, 0)];
    for i in 0..4usize {
        let tag = t.next_tag();
        descs.push(Desc::new(
            Opcode::CopyH2h,
            tag,
            mem.iova(A + i * 100),
            mem.iova(E + i * 1000),
            999,
            0,
        ));
    }
    t.batch("batch of five", descs, true)?;
    for i in 0..4usize {
        same(
            "batch COPY_H2H",
            &t.host(E + i * 1000, 999),
            &data[i * 100..i * 100 + 999],
        )?;
    }

    // A descriptor error: device range beyond device memory. It completes
    // with DEVMEM_RANGE, sets ERR_CODE and raises the error vector.
    let tag = t.next_tag();
    let bad = Desc::new(
        Opcode::CopyH2d,
        tag,
        mem.iova(A),
        (devmem_len - 10) as u64,
        11,
        0,
    );
    let c = t.rings.run(&[bad])?;
    t.done += 1;
    if c[0].status() != Some(CplStatus::DevmemRange) || c[0].bytes != 0 || c[0].tag != tag {
        return Err(format!("out-of-range COPY_H2D completed as {:?}", c[0]));
    }
    let ec = regs.read32(offsets::ERR_CODE);
    if ec != CplStatus::DevmemRange.raw() {
        return Err(format!("ERR_CODE {ec} after a DEVMEM_RANGE completion"));
    }
    t.expect_irq(
        "descriptor error",
        consts::VECTOR_ERR as usize,
        IrqStatus::ERR,
    )?;
    regs.write32(offsets::ERR_CODE, 0);

    // The counters agree with what was run.
    let cnt = regs.read32(offsets::CNT_DESC);
    let cnt_err = regs.read32(offsets::CNT_ERR);
    if cnt != t.done || cnt_err != 1 {
        return Err(format!(
            "CNT_DESC {cnt} CNT_ERR {cnt_err}, ran {} descriptors, 1 error",
            t.done
        ));
    }
    let status = Status::from_bits_retain(regs.read32(offsets::STATUS));
    if status.contains(Status::HALTED) {
        return Err(format!("STATUS {status:?} at the end"));
    }
    regs.write32(offsets::CTRL, 0);
    let got = t.irqs.counts()?;
    if got != t.want_irqs {
        return Err(format!(
            "interrupt counts {got:?} at the end, want {:?}",
            t.want_irqs
        ));
    }
    Ok(Summary {
        descriptors: t.done,
        irqs: t.want_irqs.iter().sum::<u64>() - base_irqs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_bytes_follow_the_datasheet() {
        // byte i of the destination is byte i mod 4 of PATTERN, little-endian
        assert_eq!(fill_bytes(0x0403_0201, 6), vec![1, 2, 3, 4, 1, 2]);
    }

    #[test]
    fn pattern_bytes_are_deterministic_and_not_constant() {
        let a = pattern_bytes(1, 64);
        assert_eq!(a, pattern_bytes(1, 64));
        assert_ne!(a, pattern_bytes(2, 64));
        assert!(a.iter().any(|&b| b != a[0]));
    }

    #[test]
    fn buffers_fit_and_do_not_overlap() {
        let spans = [(A, LEN), (B, LEN + 1), (C, LEN + 1), (E, 4096), (F, 1003)];
        let ring_end = LAYOUT.cq_off + LAYOUT.entries as usize * vfpga_regs::cpl::SIZE;
        for (i, &(s, n)) in spans.iter().enumerate() {
            assert!(s >= ring_end && s + n <= MIN_BUF);
            for &(s2, n2) in &spans[i + 1..] {
                assert!(s + n <= s2 || s2 + n2 <= s);
            }
        }
    }
}
