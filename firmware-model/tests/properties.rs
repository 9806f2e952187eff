//! Property tests: random descriptor streams against plain Rust, random
//! interruption points against uninterrupted runs, and hostile state words and
//! register traffic against the model's own validation. 13,000 cases in all.

use std::sync::Arc;

use proptest::prelude::*;
use vfpga_device::conformance::untimed;
use vfpga_device::ring::{Completion, Desc, RingDriver};
use vfpga_device::{Device, DmaPort, IrqLog, Perm, VecMemory, validate_arch};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::{ArchState, CplStatus, Opcode, REGISTERS, consts, offsets, state as sw};

const GUEST: u64 = 0x2_0000_0000;
const GUEST_LEN: usize = 64 * 1024;
const SQ: u64 = GUEST;
const CQ: u64 = GUEST + 0x1000;
const DATA: u64 = GUEST + 0x2000;
/// Host offsets are drawn past the end of guest memory so that some bursts fault.
const HOST_SPAN: u32 = GUEST_LEN as u32 - 0x2000 + 512;
const PAGES: u32 = 16;
const DEV_LEN: usize = PAGES as usize * 4096;
const DEV_SPAN: u32 = DEV_LEN as u32 + 512;
const RING: u32 = 16;

#[derive(Debug, Clone)]
struct Op {
    opcode: u8,
    irq: bool,
    rsvd: u32,
    src: u32,
    dst: u32,
    len: u32,
    pattern: u32,
}

fn op() -> impl Strategy<Value = Op> {
    let opcode = prop_oneof![
        6 => 1u8..=6,
        1 => Just(0u8),
        1 => prop_oneof![Just(7u8), Just(0xffu8)],
    ];
    let len = prop_oneof![
        8 => 0u32..=700,
        1 => 700u32..=5000,
        1 => Just(consts::MAX_DESC_LEN + 1),
    ];
    let rsvd = prop_oneof![12 => Just(0u32), 1 => 1u32..(1 << 23)];
    (
        opcode,
        any::<bool>(),
        rsvd,
        0..DEV_SPAN.max(HOST_SPAN),
        0..DEV_SPAN.max(HOST_SPAN),
        len,
        any::<u32>(),
    )
        .prop_map(|(opcode, irq, rsvd, src, dst, len, pattern)| Op {
            opcode,
            irq,
            rsvd,
            src,
            dst,
            len,
            pattern,
        })
}

fn is_host_src(op: u8) -> bool {
    [Opcode::CopyH2d, Opcode::CopyH2h, Opcode::Crc32c]
        .iter()
        .any(|o| o.raw() as u8 == op)
}

fn is_host_dst(op: u8) -> bool {
    [Opcode::CopyD2h, Opcode::CopyH2h, Opcode::FillHost]
        .iter()
        .any(|o| o.raw() as u8 == op)
}

impl Op {
    fn src_addr(&self) -> u64 {
        if is_host_src(self.opcode) {
            DATA + u64::from(self.src % HOST_SPAN)
        } else {
            u64::from(self.src % DEV_SPAN)
        }
    }

    fn dst_addr(&self) -> u64 {
        if is_host_dst(self.opcode) {
            DATA + u64::from(self.dst % HOST_SPAN)
        } else {
            u64::from(self.dst % DEV_SPAN)
        }
    }

    fn desc(&self, tag: u32) -> Desc {
        Desc {
            opcode: self.opcode,
            irq: self.irq,
            rsvd: self.rsvd,
            tag,
            src: self.src_addr(),
            dst: self.dst_addr(),
            len: self.len,
            pattern: self.pattern,
        }
    }
}

/// Plain-Rust expectation of one descriptor on `host` (guest memory from
/// `GUEST`) and `dev`: the completion it must produce.
fn reference(d: &Desc, host: &mut [u8], dev: &mut [u8]) -> Completion {
    let mut c = Completion {
        tag: d.tag,
        ..Default::default()
    };
    let status = |s: CplStatus| s.raw() as u8;
    let Some(op) = Opcode::from_raw(u32::from(d.opcode)) else {
        c.status = status(CplStatus::BadOpcode);
        return c;
    };
    if d.rsvd != 0 || d.len > consts::MAX_DESC_LEN {
        c.status = status(CplStatus::BadDesc);
        return c;
    }
    let len = d.len as usize;
    let dev_ok = |a: u64| a as usize + len <= dev.len();
    let bad_dev = match op {
        Opcode::CopyH2d | Opcode::FillDev => !dev_ok(d.dst),
        Opcode::CopyD2h => !dev_ok(d.src),
        _ => false,
    };
    if bad_dev {
        c.status = status(CplStatus::DevmemRange);
        return c;
    }
    if op == Opcode::Nop {
        return c;
    }
    let (hs, hd) = (is_host_src(d.opcode), is_host_dst(d.opcode));
    let uses_src = !matches!(op, Opcode::FillDev | Opcode::FillHost);
    let uses_dst = op != Opcode::Crc32c;
    let host_len = host.len();
    let host_range = |a: u64, n: usize| -> Option<std::ops::Range<usize>> {
        let o = a.checked_sub(GUEST)? as usize;
        (o + n <= host_len).then_some(o..o + n)
    };
    let pat = d.pattern.to_le_bytes();
    let mut done = 0usize;
    while done < len {
        // Datasheet §5.3: at most 64 bytes, never across a 4 KiB boundary of
        // an operand the opcode uses.
        let mut n = 64.min(len - done);
        let (sa, da) = (d.src + done as u64, d.dst + done as u64);
        if uses_src {
            n = n.min(4096 - (sa % 4096) as usize);
        }
        if uses_dst {
            n = n.min(4096 - (da % 4096) as usize);
        }
        let chunk: Vec<u8> = if !uses_src {
            (done..done + n).map(|i| pat[i % 4]).collect()
        } else if hs {
            match host_range(sa, n) {
                Some(r) => host[r].to_vec(),
                None => {
                    c.status = status(CplStatus::DmaReadFault);
                    break;
                }
            }
        } else {
            dev[sa as usize..sa as usize + n].to_vec()
        };
        if uses_dst {
            if hd {
                match host_range(da, n) {
                    Some(r) => host[r].copy_from_slice(&chunk),
                    None => {
                        c.status = status(CplStatus::DmaWriteFault);
                        break;
                    }
                }
            } else {
                dev[da as usize..da as usize + n].copy_from_slice(&chunk);
            }
        }
        done += n;
    }
    c.bytes = done as u32;
    if op == Opcode::Crc32c && c.status == 0 {
        // A zero-length CRC reads nothing, so its source is never checked.
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            &host[host_range(d.src, len).expect("checked by the bursts")]
        };
        c.result = crc32c::crc32c_append(d.pattern, data);
    }
    c
}

struct Rig {
    dev: Model,
    dma: DmaPort,
    mem: Arc<VecMemory>,
    irq: Arc<IrqLog>,
}

fn rig(batch: bool, init: &[u8]) -> Rig {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(GUEST_LEN));
    dma.map(GUEST, mem.clone(), Perm::RW).expect("map");
    dma.host_write(GUEST, init).expect("init");
    let irq = Arc::new(IrqLog::new());
    let cfg = ModelConfig {
        batch_bursts: batch,
        ..ModelConfig::with_pages(PAGES)
    };
    let dev = Model::new(cfg, dma.clone(), irq.clone()).expect("model");
    Rig { dev, dma, mem, irq }
}

fn init_memory(seed: u64) -> Vec<u8> {
    let mut r = vfpga_device::testkit::Rng(seed | 1);
    (0..GUEST_LEN).map(|_| r.next() as u8).collect()
}

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg(5000))]

    /// Random streams of descriptors (all opcodes, bad ones, faults) give the
    /// completions, memory, counters and interrupts plain Rust predicts.
    #[test]
    fn descriptor_streams_match_plain_rust(
        ops in prop::collection::vec(op(), 1..12),
        seed in any::<u64>(),
        batch in any::<bool>(),
    ) {
        let init = init_memory(seed);
        let mut r = rig(batch, &init);
        let descs: Vec<Desc> = ops.iter().enumerate().map(|(i, o)| o.desc(i as u32)).collect();
        let mut host = init.clone();
        let mut dev = vec![0u8; DEV_LEN];
        let want: Vec<Completion> =
            descs.iter().map(|d| reference(d, &mut host, &mut dev)).collect();
        let mut ring = RingDriver::setup(&mut r.dev, &r.dma, SQ, RING, CQ, RING).expect("rings");
        r.dev.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
        let got = ring.run(&mut r.dev, &descs, 10_000_000).expect("run");
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!((g.tag, g.status, g.bytes, g.result), (w.tag, w.status, w.bytes, w.result));
        }
        let data = (DATA - GUEST) as usize;
        prop_assert!(r.mem.snapshot()[data..] == host[data..], "guest memory differs");
        prop_assert!(r.dev.devmem() == &dev[..], "device memory differs");
        let a = *r.dev.arch();
        let errors = want.iter().filter(|c| c.status != 0).count();
        prop_assert_eq!(a.cnt_desc as usize, want.len());
        prop_assert_eq!(a.cnt_err as usize, errors);
        prop_assert_eq!(u64::from(a.cnt_bytes_lo), want.iter().map(|c| u64::from(c.bytes)).sum::<u64>());
        if let Some(last) = want.iter().rev().find(|c| c.status != 0) {
            prop_assert_eq!(a.err_code, u32::from(last.status));
        }
        prop_assert_eq!(r.irq.count(0), descs.iter().filter(|d| d.irq).count());
        prop_assert_eq!(r.irq.count(1), errors);
    }
}

/// Runs `descs` on a fresh rig, interrupted after `cut` steps by quiesce, save
/// and restore into a fresh model (state and device memory), when `cut` is
/// `Some`. Returns what a comparison needs.
type Outcome = (
    Vec<u8>,
    Vec<u8>,
    [u32; sw::WORDS],
    Vec<Completion>,
    (usize, usize),
);

fn run_cut(descs: &[Desc], init: &[u8], cut: Option<usize>, via_port: bool) -> Outcome {
    let mut r = rig(false, init);
    let mut ring = RingDriver::setup(&mut r.dev, &r.dma, SQ, RING, CQ, RING).expect("rings");
    r.dev.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
    for d in descs {
        ring.submit(&mut r.dev, d).expect("submit");
    }
    let mut dev = r.dev;
    let mut irqs = (0, 0);
    let mut irq = r.irq.clone();
    if let Some(k) = cut {
        for _ in 0..k {
            dev.step();
        }
        dev.quiesce().expect("quiesce");
        let s = dev.save_state().expect("save");
        let dm = dev.devmem().to_vec();
        irqs = (irq.count(0), irq.count(1));
        irq = Arc::new(IrqLog::new());
        let cfg = dev.config();
        dev = if via_port {
            let mut d = Model::new(cfg, r.dma.clone(), irq.clone()).expect("model");
            d.quiesce().expect("quiesce");
            d.restore_state(&s).expect("restore");
            d
        } else {
            Model::from_state(cfg, &s, r.dma.clone(), irq.clone()).expect("from_state")
        };
        dev.devmem_write(0, &dm).expect("devmem");
        dev.resume().expect("resume");
    }
    let cs = ring.wait_all(&mut dev, 10_000_000).expect("wait");
    dev.quiesce().expect("quiesce");
    let s = dev.save_state().expect("save");
    (
        r.mem.snapshot(),
        dev.devmem().to_vec(),
        untimed(&s.arch),
        cs,
        (irqs.0 + irq.count(0), irqs.1 + irq.count(1)),
    )
}

proptest! {
    #![proptest_config(cfg(3000))]

    /// Quiesce, save and restore into a fresh model at a random step gives
    /// the same result as an uninterrupted run.
    #[test]
    fn interrupted_streams_match_uninterrupted(
        ops in prop::collection::vec(op(), 1..8),
        seed in any::<u64>(),
        cut in 0usize..400,
        via_port in any::<bool>(),
    ) {
        let init = init_memory(seed);
        let descs: Vec<Desc> = ops.iter().enumerate().map(|(i, o)| o.desc(i as u32)).collect();
        let want = run_cut(&descs, &init, None, false);
        let got = run_cut(&descs, &init, Some(cut), via_port);
        prop_assert!(got.0 == want.0, "guest memory differs");
        prop_assert!(got.1 == want.1, "device memory differs");
        prop_assert_eq!(got.2, want.2);
        prop_assert_eq!(got.3, want.3);
        prop_assert_eq!(got.4, want.4);
    }
}

fn word_edit() -> impl Strategy<Value = (usize, u32, bool)> {
    (0..sw::WORDS, any::<u32>(), any::<bool>())
}

proptest! {
    #![proptest_config(cfg(3000))]

    /// Hostile state words: the device's verdict (STATE_ERR, RESUME) is
    /// `validate_arch`'s, a refused state never runs, and an accepted one
    /// runs without panicking and stays valid.
    #[test]
    fn hostile_states_are_judged_like_validate_arch(
        ops in prop::collection::vec(op(), 1..6),
        steps in 0usize..60,
        edits in prop::collection::vec(word_edit(), 0..4),
        seed in any::<u64>(),
    ) {
        let init = init_memory(seed);
        let mut r = rig(true, &init);
        let mut ring = RingDriver::setup(&mut r.dev, &r.dma, SQ, RING, CQ, RING).expect("rings");
        for (i, o) in ops.iter().enumerate() {
            ring.submit(&mut r.dev, &o.desc(i as u32)).expect("submit");
        }
        for _ in 0..steps {
            r.dev.step();
        }
        r.dev.quiesce().expect("quiesce");
        let mut s = r.dev.save_state().expect("save");
        let mut w = s.arch.to_words();
        for (i, v, flip) in edits {
            // Either a single bit flip or a whole random word.
            w[i] = if flip { w[i] ^ (1 << (v % 32)) } else { v };
        }
        s.arch = ArchState::from_words(&w);
        let verdict = validate_arch(&s.arch, DEV_LEN as u64);
        let port = r.dev.restore_state(&s);
        match (&verdict, &port) {
            (Ok(()), Ok(())) => {}
            (Err(v), Err(vfpga_device::DeviceError::StateRejected(p))) => prop_assert_eq!(v, p),
            _ => prop_assert!(false, "verdicts differ: {:?} vs {:?}", verdict, port),
        }
        prop_assert_eq!(r.dev.resume().is_ok(), verdict.is_ok());
        let before = r.mem.snapshot();
        r.dev.advance(500).expect("advance");
        if verdict.is_err() {
            prop_assert!(r.dev.is_quiesced().expect("status"));
            prop_assert!(r.mem.snapshot() == before, "a refused state touched memory");
        } else {
            r.dev.quiesce().expect("quiesce");
            let after = r.dev.save_state().expect("save");
            prop_assert_eq!(validate_arch(&after.arch, DEV_LEN as u64), Ok(()));
        }
    }
}

#[derive(Debug, Clone)]
enum Poke {
    Write(u32, u32),
    Read(u32),
    Advance(u64),
}

fn poke() -> impl Strategy<Value = Poke> {
    let reg = (0..REGISTERS.len()).prop_map(|i| REGISTERS[i].offset);
    prop_oneof![
        4 => (reg.clone(), any::<u32>()).prop_map(|(o, v)| Poke::Write(o, v)),
        2 => (reg.clone(), 0u32..=16).prop_map(|(o, v)| Poke::Write(o, v)),
        2 => reg.prop_map(Poke::Read),
        2 => (0u64..100).prop_map(Poke::Advance),
    ]
}

proptest! {
    #![proptest_config(cfg(2000))]

    /// Random register traffic (including QUIESCE, RESUME, SOFT_RESET, state
    /// port writes and ring geometry) never panics and never leaves the
    /// device in a state its own validation refuses while it is running.
    #[test]
    fn register_traffic_keeps_the_state_valid(
        ops in prop::collection::vec(op(), 0..6),
        pokes in prop::collection::vec(poke(), 1..60),
        seed in any::<u64>(),
    ) {
        let init = init_memory(seed);
        let mut r = rig(true, &init);
        let mut ring = RingDriver::setup(&mut r.dev, &r.dma, SQ, RING, CQ, RING).expect("rings");
        for (i, o) in ops.iter().enumerate() {
            ring.submit(&mut r.dev, &o.desc(i as u32)).expect("submit");
        }
        for p in pokes {
            match p {
                Poke::Write(o, v) => r.dev.write_reg(o, v).expect("write"),
                Poke::Read(o) => {
                    r.dev.read_reg(o).expect("read");
                }
                Poke::Advance(n) => {
                    r.dev.advance(n).expect("advance");
                }
            }
            if !r.dev.is_quiesced().expect("status") {
                prop_assert_eq!(validate_arch(r.dev.arch(), DEV_LEN as u64), Ok(()));
            }
        }
    }
}

/// A model with `pages` pages of device memory and nothing mapped.
fn bare_model(pages: u32) -> Model {
    let cfg = ModelConfig::with_pages(pages);
    Model::new(cfg, DmaPort::new(), Arc::new(IrqLog::default())).expect("model")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The model's `take_dirty_pages` (the bitmap at once) equals the
    /// datasheet's register walk (`DIRTY_SEL` = 0, one `DIRTY_BITS` read per
    /// group) in what it returns and in what it leaves behind: the bitmap
    /// cleared and `DIRTY_SEL` back at 0.
    #[test]
    fn take_dirty_pages_equals_the_register_walk(
        pages in prop_oneof![Just(16u32), Just(64), Just(128), Just(2048)],
        writes in proptest::collection::vec((0u32..4096, 1usize..9000), 0..40),
        sel in 0u32..200,
    ) {
        let (mut a, mut b) = (bare_model(pages), bare_model(pages));
        let len = u64::from(pages) * 4096;
        for &(at, n) in &writes {
            let off = u64::from(at) * 4096 % len;
            let n = n.min((len - off) as usize);
            let data = vec![0x5a; n];
            a.devmem_write(off, &data).unwrap();
            b.devmem_write(off, &data).unwrap();
        }
        a.write_reg(offsets::DIRTY_SEL, sel).unwrap();
        b.write_reg(offsets::DIRTY_SEL, sel).unwrap();
        let fast = a.take_dirty_pages().unwrap();
        let groups = (pages as usize / 32).max(1);
        b.write_reg(offsets::DIRTY_SEL, 0).unwrap();
        let mut walk = vec![0u64; groups.div_ceil(2)];
        for g in 0..groups {
            walk[g / 2] |= u64::from(b.read_reg(offsets::DIRTY_BITS).unwrap()) << ((g % 2) * 32);
        }
        prop_assert_eq!(&fast, &walk);
        prop_assert_eq!(a.read_reg(offsets::DIRTY_SEL).unwrap(), b.read_reg(offsets::DIRTY_SEL).unwrap());
        for _ in 0..groups {
            prop_assert_eq!(a.read_reg(offsets::DIRTY_BITS).unwrap(), 0);
            prop_assert_eq!(b.read_reg(offsets::DIRTY_BITS).unwrap(), 0);
        }
    }
}
