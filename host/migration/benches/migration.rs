//! Migration benchmarks, each beside a same-run memcpy baseline:
//!
//! - `stream/engine_256mib`: a whole 256 MiB device through the engine —
//!   STOP_COPY save read in 1 MiB segments, each segment written straight
//!   into the destination's RESUMING session (encode, checksum, sequence
//!   checks, decode, page writes, state restore) — and `stream/memcpy_256mib`,
//!   one copy of the same bytes; `stream/engine_256mib_two_threads`, the
//!   same stream with the source and the destination each on its own
//!   thread, as they run on two hosts in a migration.
//! - `downtime/stop_copy_<K>pages`: the stop-and-copy downtime after a
//!   drained pre-copy with K pages dirtied: PRE_COPY -> STOP_COPY, read the
//!   rest, write it to the destination, RESUMING -> RUNNING; and
//!   `downtime/memcpy_<K>pages`, a copy of the dirty bytes.
//!
//! The device is [`MemDevice`]: device memory in a `Vec`, served by memcpy
//! (as the simulator and the model serve it), so the figures measure the
//! migration code, not a slow BAR path.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use vfpga_device::{
    Bar, Device, DeviceError, DeviceInfo, DeviceState, Identity, Progress, check_compatible,
    validate_arch,
};
use vfpga_migration::{MigState, MigrationEngine};
use vfpga_regs::{ArchState, consts};

const PAGE: usize = consts::PAGE_SIZE as usize;

/// A device whose memory is a vector; the seam's provided methods are
/// overridden with direct implementations of the same meaning.
#[derive(Clone)]
struct MemDevice {
    id: Identity,
    mem: Vec<u8>,
    dirty: Vec<u64>,
    arch: ArchState,
    quiesced: bool,
}

impl MemDevice {
    fn new(pages: u32) -> Self {
        let mut mem = vec![0u8; pages as usize * PAGE];
        for (i, b) in mem.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
        }
        MemDevice {
            id: Identity::this_build(pages, 0),
            mem,
            dirty: vec![0; (pages as usize).div_ceil(64)],
            arch: ArchState::RESET,
            quiesced: false,
        }
    }
}

impl Device for MemDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            identity: self.id,
            bar0_size: consts::BAR0_SIZE.into(),
            bar2_size: self.mem.len() as u64,
            self_running: false,
        }
    }
    fn mmio_read(&mut self, bar: Bar, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        Err(DeviceError::BadAccess {
            bar,
            offset,
            len: data.len(),
        })
    }
    fn mmio_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::BadAccess {
            bar,
            offset,
            len: data.len(),
        })
    }
    fn advance(&mut self, _budget: u64) -> Result<Progress, DeviceError> {
        Ok(Progress {
            used: 0,
            idle: true,
        })
    }
    fn quiesce(&mut self) -> Result<(), DeviceError> {
        self.quiesced = true;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), DeviceError> {
        validate_arch(&self.arch, self.mem.len() as u64)?;
        self.quiesced = false;
        Ok(())
    }
    fn is_quiesced(&mut self) -> Result<bool, DeviceError> {
        Ok(self.quiesced)
    }
    fn soft_reset(&mut self) -> Result<(), DeviceError> {
        self.arch = ArchState::RESET;
        self.quiesced = false;
        Ok(())
    }
    fn save_state(&mut self) -> Result<DeviceState, DeviceError> {
        Ok(DeviceState::new(self.id, self.arch))
    }
    fn restore_state(&mut self, s: &DeviceState) -> Result<(), DeviceError> {
        check_compatible(&self.id, &s.identity)?;
        validate_arch(&s.arch, self.mem.len() as u64)?;
        self.arch = s.arch;
        Ok(())
    }
    fn devmem_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let o = offset as usize;
        let src = self
            .mem
            .get(o..o + buf.len())
            .ok_or(DeviceError::BadAccess {
                bar: Bar::DevMem,
                offset,
                len: buf.len(),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn devmem_write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let o = offset as usize;
        let dst = self
            .mem
            .get_mut(o..o + data.len())
            .ok_or(DeviceError::BadAccess {
                bar: Bar::DevMem,
                offset,
                len: data.len(),
            })?;
        dst.copy_from_slice(data);
        if !data.is_empty() {
            for p in o / PAGE..=(o + data.len() - 1) / PAGE {
                self.dirty[p / 64] |= 1 << (p % 64);
            }
        }
        Ok(())
    }
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, DeviceError> {
        let n = self.dirty.len();
        Ok(std::mem::replace(&mut self.dirty, vec![0; n]))
    }
}

/// Moves everything readable now from `src` to `dst`, 1 MiB at a time.
fn pump(
    se: &mut MigrationEngine,
    src: &mut MemDevice,
    de: &mut MigrationEngine,
    dst: &mut MemDevice,
    buf: &mut [u8],
) {
    loop {
        let n = se.read_data(src, buf).expect("read");
        de.write_data(dst, &buf[..n]).expect("write");
        if n < buf.len() {
            return;
        }
    }
}

fn stream(c: &mut Criterion) {
    let pages = consts::MAX_DEVMEM_PAGES; // 256 MiB
    let bytes = pages as usize * PAGE;
    let src_template = MemDevice::new(pages);
    let mut g = c.benchmark_group("stream");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(criterion::Throughput::Bytes(bytes as u64));
    let mut src = src_template.clone();
    let mut dst = MemDevice::new(pages);
    let mut buf = vec![0u8; 1 << 20];
    g.bench_function("engine_256mib", |b| {
        b.iter(|| {
            let mut se = MigrationEngine::default();
            let mut de = MigrationEngine::default();
            se.set_state(&mut src, MigState::StopCopy.raw())
                .expect("stop-copy");
            de.set_state(&mut dst, MigState::Resuming.raw())
                .expect("resuming");
            pump(&mut se, &mut src, &mut de, &mut dst, &mut buf);
            de.set_state(&mut dst, MigState::Running.raw())
                .expect("run");
            se.set_state(&mut src, MigState::Running.raw())
                .expect("run");
        })
    });
    assert!(dst.mem == src.mem, "the benchmark moved the memory");
    // The same stream with each end on its own thread, as in a migration
    // (the source and destination are different hosts): 1 MiB segments go
    // through a two-deep channel and their buffers come back for reuse.
    let mut dst2 = MemDevice::new(pages);
    g.bench_function("engine_256mib_two_threads", |b| {
        b.iter(|| {
            let (to_dst, from_src) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(2);
            let (to_src, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(3);
            for _ in 0..3 {
                to_src.send(vec![0u8; 1 << 20]).expect("spare buffer");
            }
            std::thread::scope(|s| {
                let (src, dst) = (&mut src, &mut dst2);
                s.spawn(move || {
                    let mut se = MigrationEngine::default();
                    se.set_state(src, MigState::StopCopy.raw())
                        .expect("stop-copy");
                    loop {
                        let mut seg = spare.recv().expect("buffer back");
                        let n = se.read_data(src, &mut seg).expect("read");
                        to_dst.send((seg, n)).expect("to destination");
                        if n < 1 << 20 {
                            break;
                        }
                    }
                    se.set_state(src, MigState::Running.raw()).expect("run");
                });
                let mut de = MigrationEngine::default();
                de.set_state(dst, MigState::Resuming.raw())
                    .expect("resuming");
                loop {
                    let (seg, n) = from_src.recv().expect("segment");
                    de.write_data(dst, &seg[..n]).expect("write");
                    let _ = to_src.send(seg);
                    if n < 1 << 20 {
                        break;
                    }
                }
                de.set_state(dst, MigState::Running.raw()).expect("run");
            });
        })
    });
    assert!(
        dst2.mem == src.mem,
        "the two-thread benchmark moved the memory"
    );
    let mut copy = vec![0u8; bytes];
    g.bench_function("memcpy_256mib", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&src.mem));
            black_box(&mut copy);
        })
    });
    g.finish();
}

fn downtime(c: &mut Criterion) {
    let pages = 16384; // 64 MiB device
    let template = MemDevice::new(pages);
    let mut g = c.benchmark_group("downtime");
    g.sample_size(10);
    for k in [256u32, 4096] {
        let mut buf = vec![0u8; 1 << 20];
        // Pre-copy drained on both sides, then `k` pages dirtied.
        let setup = || {
            let mut src = template.clone();
            let mut dst = MemDevice::new(pages);
            let mut se = MigrationEngine::default();
            let mut de = MigrationEngine::default();
            se.set_state(&mut src, MigState::PreCopy.raw())
                .expect("pre-copy");
            de.set_state(&mut dst, MigState::Resuming.raw())
                .expect("resuming");
            let mut b = vec![0u8; 1 << 20];
            pump(&mut se, &mut src, &mut de, &mut dst, &mut b);
            for p in 0..k {
                let off = u64::from(p * (pages / k)) * PAGE as u64;
                src.devmem_write(off, &[p as u8; 64]).expect("dirty");
            }
            (src, dst, se, de)
        };
        g.bench_function(format!("stop_copy_{k}pages"), |b| {
            b.iter_batched(
                setup,
                |(mut src, mut dst, mut se, mut de)| {
                    se.set_state(&mut src, MigState::StopCopy.raw())
                        .expect("stop-copy");
                    pump(&mut se, &mut src, &mut de, &mut dst, &mut buf);
                    de.set_state(&mut dst, MigState::Running.raw())
                        .expect("run");
                    (src, dst)
                },
                BatchSize::PerIteration,
            )
        });
        let n = k as usize * PAGE;
        let from = vec![7u8; n];
        let mut to = vec![0u8; n];
        g.bench_function(format!("memcpy_{k}pages"), |b| {
            b.iter(|| {
                to.copy_from_slice(black_box(&from));
                black_box(&mut to);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stream, downtime);
criterion_main!(benches);
