//! Live migration between two `vfpga serve` PROCESSES, driven over their
//! sockets with the vfio-user client library, with a DMA workload running
//! during pre-copy: once through MIG_DATA_READ/WRITE (migration v2) and once
//! through the v1 migration region, on the model and (when this build has
//! Verilator) on the sim backend.
//!
//! Guest memory is a file mapped here and passed to each server with
//! DMA_MAP (SCM_RIGHTS). The source's DMA log (DMA_LOGGING_REPORT) says
//! which guest pages the device wrote, and only those are copied to the
//! destination's guest memory, as a VMM does: a page the log missed shows up
//! as a difference at the end. The final check reads both devices over the
//! wire while stopped (architectural state through the state port,
//! device memory through BAR2) and compares them and the two guest memories.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort, MmapMemory, Perm};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::{Client, WireDevice};

/// Hang guard for every wait of this file (server start, ring progress).
const HANG_GUARD: Duration = Duration::from_secs(60);
const BASE: u64 = 0x100_0000;
const LEN: u64 = 0x4_0000;
const RUNNING: u32 = 2;
const STOP: u32 = 1;
const STOP_COPY: u32 = 3;
const RESUMING: u32 = 4;
const PRE_COPY: u32 = 6;

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../config/{name}.yaml"))
}

/// A `vfpga serve` child process; killed (and its socket removed) on drop.
struct Served {
    child: Child,
    path: PathBuf,
    log: PathBuf,
}

impl Served {
    fn spawn(config_name: &str, tag: &str) -> Served {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let stem = format!("serve-mig-{}-{config_name}-{tag}", std::process::id());
        let path = dir.join(format!("{stem}.sock"));
        let log = dir.join(format!("{stem}.log"));
        let _ = std::fs::remove_file(&path);
        let child = Command::new(env!("CARGO_BIN_EXE_vfpga"))
            .arg("serve")
            .arg("--config")
            .arg(config(config_name))
            .arg("--socket")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn vfpga serve");
        let mut s = Served { child, path, log };
        let t0 = Instant::now();
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!(
                    "vfpga serve ({config_name}) exited with {st} before listening:\n{}",
                    s.log_text()
                );
            }
            if s.path.exists() && std::os::unix::net::UnixStream::connect(&s.path).is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < HANG_GUARD,
                "hang guard: vfpga serve ({config_name}) did not listen on {} in {HANG_GUARD:?}:\n{}",
                s.path.display(),
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A negotiated client, once the server is free (the probe connection
    /// of `spawn` is noticed as gone asynchronously).
    fn client(&self) -> Client {
        let t0 = Instant::now();
        loop {
            let mut c = Client::connect(&self.path).unwrap();
            c.set_timeout(Duration::from_secs(5));
            match c.negotiate_default() {
                Ok(_) => {
                    c.set_timeout(Duration::from_secs(30));
                    return c;
                }
                Err(e) => assert!(
                    t0.elapsed() < HANG_GUARD,
                    "hang guard: server never became free: {e}\n{}",
                    self.log_text()
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Guest memory: an unlinked file, mapped here and passed by fd.
struct GuestMem {
    file: File,
    port: DmaPort,
}

impl GuestMem {
    fn new(tag: &str) -> GuestMem {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("serve-mig-{}-{tag}.mem", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        file.set_len(LEN).unwrap();
        let m = MmapMemory::map_file(&file, 0, LEN as usize).unwrap();
        let port = DmaPort::new();
        port.map(BASE, Arc::new(m), Perm::RW).unwrap();
        GuestMem { file, port }
    }
    fn read(&self, iova: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.port.host_read(iova, &mut b).unwrap();
        b
    }
    fn write(&self, iova: u64, d: &[u8]) {
        self.port.host_write(iova, d).unwrap();
    }
}

/// The device behind a server, with the ring-wait hang guard.
fn remote(c: &Arc<Client>) -> WireDevice {
    let mut d = WireDevice::new(c.clone()).unwrap();
    d.set_hang_guard(Some(HANG_GUARD));
    d
}

/// One side: a server process, a client, guest memory mapped into it.
struct Side {
    _server: Served,
    c: Arc<Client>,
    g: GuestMem,
}

fn side(config_name: &str, tag: &str) -> Side {
    let server = Served::spawn(config_name, tag);
    let c = Arc::new(server.client());
    let g = GuestMem::new(tag);
    c.dma_map_fd(g.file.as_fd(), 0, BASE, LEN).unwrap();
    c.enable_bus_master().unwrap();
    Side {
        _server: server,
        c,
        g,
    }
}

/// Sets the flag when dropped: a panic in the migration steps also ends the
/// workload thread (a scope joins its threads before a panic propagates).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Fills, host-to-device and host-to-host copies until `stop`, counting
/// completed rounds in `rounds`; returns the count.
fn workload(s: &Side, stop: &AtomicBool, rounds: &AtomicU32) -> u32 {
    let mut dev = remote(&s.c);
    let pages = dev.info().identity.devmem_pages;
    let mut rd = RingDriver::setup(&mut dev, &s.g.port, BASE, 16, BASE + 0x1000, 16).unwrap();
    let mut n = 0u32;
    while !stop.load(Ordering::Acquire) {
        let i = u64::from(n % 16);
        let src = BASE + 0x1_0000 + i * 0x1000;
        let descs = [
            Desc::new(Opcode::FillHost, n, 0, src, 4096, n),
            Desc::new(
                Opcode::CopyH2d,
                n,
                src,
                (i * 7 % u64::from(pages)) * 4096,
                4096,
                0,
            ),
            Desc::new(
                Opcode::CopyH2h,
                n,
                src,
                BASE + 0x2_0000 + i * 0x1000,
                4096,
                0,
            ),
        ];
        // No unit budget: `WireDevice::advance` fails the wait after HANG_GUARD.
        for c in rd.run(&mut dev, &descs, u64::MAX).unwrap() {
            assert_eq!(c.status(), Some(CplStatus::Ok));
        }
        n += 1;
        rounds.store(n, Ordering::Release);
    }
    n
}

/// Runs pre-copy rounds (`round`) until at least `min` rounds ran and the
/// workload completed 3 more rounds since pre-copy began, so the two
/// overlap for sure.
fn precopy_rounds(rounds: &AtomicU32, min: u32, mut round: impl FnMut()) {
    let start = rounds.load(Ordering::Acquire);
    let t0 = Instant::now();
    let mut r = 0;
    while r < min || rounds.load(Ordering::Acquire) < start + 3 {
        round();
        r += 1;
        assert!(
            t0.elapsed() < HANG_GUARD,
            "hang guard: the workload made no progress during pre-copy in {HANG_GUARD:?}"
        );
    }
}

/// Copies the guest pages the source's DMA log names (or all) to `dst`. The
/// SQ page is the driver's own (CPU) write, which a VMM tracks itself.
fn sync_pages(src: &Side, dst: &GuestMem, all: bool) {
    let bm = src.c.dma_logging_report(BASE, LEN, 4096).unwrap();
    for p in 0..LEN / 4096 {
        if all || p == 0 || bm[(p / 64) as usize] & (1 << (p % 64)) != 0 {
            let a = BASE + p * 4096;
            dst.write(a, &src.g.read(a, 4096));
        }
    }
}

/// Architectural state words and device memory, read over the wire from a
/// stopped device.
fn device_image(c: &Arc<Client>) -> (Vec<u32>, Vec<u8>) {
    let mut dev = remote(c);
    let st = dev.save_state().unwrap();
    let mut mem = vec![0u8; dev.info().bar2_size as usize];
    dev.devmem_read(0, &mut mem).unwrap();
    (st.arch.to_words().to_vec(), mem)
}

fn check_identical(src: &Side, dst: &Side) {
    let (a, am) = device_image(&src.c);
    let (b, bm) = device_image(&dst.c);
    assert_eq!(a, b, "architectural state differs");
    let differ: Vec<usize> = (0..am.len() / 4096)
        .filter(|p| am[p * 4096..(p + 1) * 4096] != bm[p * 4096..(p + 1) * 4096])
        .collect();
    assert!(
        differ.is_empty(),
        "device memory differs in pages {differ:?}"
    );
    let differ: Vec<u64> = (0..LEN / 4096)
        .filter(|p| src.g.read(BASE + p * 4096, 4096) != dst.g.read(BASE + p * 4096, 4096))
        .collect();
    assert!(
        differ.is_empty(),
        "guest memory differs in pages {differ:?}"
    );
}

/// After the migration the destination runs and its engine still works.
fn destination_runs(dst: &Side) {
    assert_eq!(dst.c.mig_state().unwrap(), RUNNING);
    let mut dev = remote(&dst.c);
    let mut rd = RingDriver::attach(&mut dev, &dst.g.port).unwrap();
    let d = Desc::new(Opcode::FillHost, 7, 0, BASE + 0x3_0000, 4096, 0xfeed);
    let c = rd.run(&mut dev, &[d], u64::MAX).unwrap();
    assert_eq!(c[0].status(), Some(CplStatus::Ok));
    assert_eq!(dst.g.read(BASE + 0x3_0000, 4), 0xfeedu32.to_le_bytes());
}

fn v2_between_processes(config_name: &str) {
    let src = side(config_name, "v2-src");
    let dst = side(config_name, "v2-dst");
    src.c.write32(offsets::SCRATCH.into(), 0x5eed).unwrap();
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let mut stream = Vec::new();
    std::thread::scope(|sc| {
        let w = sc.spawn(|| workload(&src, &stop, &rounds));
        let _stop = StopOnDrop(&stop);
        src.c.dma_logging_start(4096, &[(BASE, LEN)]).unwrap();
        sync_pages(&src, &dst.g, true);
        src.c.set_mig_state(PRE_COPY).unwrap();
        precopy_rounds(&rounds, 4, || {
            stream.extend_from_slice(&src.c.mig_read_all(65536).unwrap());
            sync_pages(&src, &dst.g, false);
        });
        stop.store(true, Ordering::Release);
        let rounds = w.join().unwrap();
        assert!(rounds > 0, "the workload ran during pre-copy");
        eprintln!(
            "{config_name} v2: {rounds} workload rounds, {} pre-copy bytes",
            stream.len()
        );
    });
    src.c.set_mig_state(STOP_COPY).unwrap();
    stream.extend_from_slice(&src.c.mig_read_all(65536).unwrap());
    eprintln!("{config_name} v2: {} stream bytes in all", stream.len());
    sync_pages(&src, &dst.g, false);
    src.c.set_mig_state(STOP).unwrap();
    src.c.dma_logging_stop().unwrap();

    dst.c.set_mig_state(RESUMING).unwrap();
    for c in stream.chunks(100_000) {
        dst.c.mig_data_write(c).unwrap();
    }
    dst.c.set_mig_state(STOP).unwrap();
    check_identical(&src, &dst);
    dst.c.set_mig_state(RUNNING).unwrap();
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0x5eed);
    destination_runs(&dst);
}

fn v1_read64(c: &Client, off: u64) -> u64 {
    let d = c.region_read(region::MIGRATION, off, 8).unwrap();
    u64::from_le_bytes(d.try_into().unwrap())
}

fn v1_state(c: &Client, v: u32) {
    c.region_write(region::MIGRATION, 0, &v.to_le_bytes())
        .unwrap();
}

/// One v1 save iteration (pending_bytes, data_offset, data_size, data):
/// `None` when nothing is pending.
fn v1_iteration(c: &Client) -> Option<Vec<u8>> {
    if v1_read64(c, 8) == 0 {
        return None;
    }
    let off = v1_read64(c, 16);
    let size = v1_read64(c, 24);
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let n = (size - out.len() as u64).min(65536) as u32;
        let d = c
            .region_read(region::MIGRATION, off + out.len() as u64, n)
            .unwrap();
        out.extend_from_slice(&d);
    }
    Some(out)
}

fn v1_between_processes(config_name: &str) {
    let src = side(config_name, "v1-src");
    let dst = side(config_name, "v1-dst");
    src.c.write32(offsets::SCRATCH.into(), 0xabc1).unwrap();
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    std::thread::scope(|sc| {
        let w = sc.spawn(|| workload(&src, &stop, &rounds));
        let _stop = StopOnDrop(&stop);
        src.c.dma_logging_start(4096, &[(BASE, LEN)]).unwrap();
        sync_pages(&src, &dst.g, true);
        v1_state(&src.c, 0b011); // SAVING | RUNNING: pre-copy
        precopy_rounds(&rounds, 6, || {
            if let Some(d) = v1_iteration(&src.c) {
                chunks.push(d);
            }
            sync_pages(&src, &dst.g, false);
        });
        stop.store(true, Ordering::Release);
        let rounds = w.join().unwrap();
        assert!(rounds > 0, "the workload ran during pre-copy");
        eprintln!(
            "{config_name} v1: {rounds} workload rounds, {} pre-copy iterations with data",
            chunks.len()
        );
    });
    v1_state(&src.c, 0b010); // SAVING: stop-and-copy
    let mut iterations = 0u32;
    while let Some(d) = v1_iteration(&src.c) {
        iterations += 1;
        assert!(
            !d.is_empty() && iterations < 100_000,
            "stop-and-copy does not converge (iteration {iterations}, {} bytes)",
            d.len()
        );
        chunks.push(d);
    }
    sync_pages(&src, &dst.g, false);
    v1_state(&src.c, 0); // stopped
    src.c.dma_logging_stop().unwrap();

    v1_state(&dst.c, 0b100); // RESUMING
    let window = dst.c.region_info(region::MIGRATION).unwrap().0.size - v1_read64(&dst.c, 16);
    for d in &chunks {
        let off = v1_read64(&dst.c, 16);
        for part in d.chunks(window.min(65536) as usize) {
            dst.c.region_write(region::MIGRATION, off, part).unwrap();
            dst.c
                .region_write(region::MIGRATION, 24, &(part.len() as u64).to_le_bytes())
                .unwrap();
        }
    }
    v1_state(&dst.c, 0); // stopped: the stream is validated here
    check_identical(&src, &dst);
    v1_state(&dst.c, 0b001); // RUNNING
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0xabc1);
    destination_runs(&dst);
}

fn sim_available() -> bool {
    if !vfpga_sim::AVAILABLE {
        eprintln!("skipping the sim backend: vfpga-sim was built without Verilator");
    }
    vfpga_sim::AVAILABLE
}

#[test]
fn model_v2_precopy_between_two_serve_processes() {
    v2_between_processes("model");
}

#[test]
fn model_v1_region_between_two_serve_processes() {
    v1_between_processes("model");
}

#[test]
fn sim_v2_precopy_between_two_serve_processes() {
    if sim_available() {
        v2_between_processes("sim");
    }
}

#[test]
fn sim_v1_region_between_two_serve_processes() {
    if sim_available() {
        v1_between_processes("sim");
    }
}
