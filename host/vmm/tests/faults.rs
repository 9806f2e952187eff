//! Live-migration failure cases and repeated migration, on the model: a
//! connection cut at any phase or a corrupted stream leaves the source
//! running and its workload completing correctly; a second attempt then
//! succeeds; a destination never runs a bad stream.
//!
//! Each case runs on the demo's path (every device behind its own vfio-user
//! server, guest memory mapped with DMA_MAP; the servers run on threads of
//! this test process, the `vfpga` binary's tests run them as processes) and
//! on the in-process path.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use vfpga_device::ring::RingDriver;
use vfpga_vmm::backend::Kind;
use vfpga_vmm::live::{self, Guest, SourceOptions};
use vfpga_vmm::server::Launch;
use vfpga_vmm::vm::{self, Placement, VmDevice};
use vfpga_vmm::workload::{Layout, Workload};

const DEVMEM: u64 = 128 << 10;

fn layout() -> Layout {
    Layout {
        base: 0x8000_0000,
        size: 1 << 20,
        sq_entries: 32,
        cq_entries: 32,
        devmem: DEVMEM,
    }
}

struct Vm {
    guest: Guest,
    dev: Box<dyn VmDevice>,
    wl: Workload,
    ring: RingDriver,
}

fn device(p: &Placement, guest: &Guest) -> Box<dyn VmDevice> {
    vm::open(p, Kind::Model, DEVMEM, guest).unwrap()
}

fn vm(p: &Placement, seed: u64, total: u64) -> Vm {
    let guest = Guest::new(layout()).unwrap();
    let mut dev = device(p, &guest);
    let wl = Workload::new(layout(), seed, total);
    let ring = wl.start(dev.dev(), &guest.dma).unwrap();
    Vm {
        guest,
        dev,
        wl,
        ring,
    }
}

fn run_some(v: &mut Vm, n: u64) {
    let goal = (v.wl.stats().verified + n).min(v.wl.stats().submitted.max(1) + n);
    let mut rounds = 0;
    while v.wl.stats().verified < goal && !v.wl.done() && rounds < 100_000 {
        v.wl.pump(v.dev.dev(), &mut v.ring, 128).unwrap();
        rounds += 1;
    }
}

fn finish(v: &mut Vm) {
    let mut rounds = 0;
    while !v.wl.done() {
        v.wl.pump(v.dev.dev(), &mut v.ring, 128).unwrap();
        rounds += 1;
        assert!(rounds < 1_000_000, "no progress");
    }
    v.wl.verify_memory(v.dev.dev(), &v.guest.dma).unwrap();
}

/// A stream that fails after `limit` bytes written, or flips one byte there.
struct Faulty {
    inner: TcpStream,
    written: usize,
    limit: usize,
    flip: bool,
}

impl Read for Faulty {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(b)
    }
}

impl Write for Faulty {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.written >= self.limit && !self.flip {
            let _ = self.inner.shutdown(std::net::Shutdown::Both);
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "injected cut",
            ));
        }
        let mut buf = b.to_vec();
        if self.flip && self.written <= self.limit && self.limit < self.written + buf.len() {
            buf[self.limit - self.written] ^= 0x40;
        }
        let n = self.inner.write(&buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a destination in a thread (its device is set up first, as with
/// QEMU's -incoming); returns its verdict.
fn destination(
    p: &Placement,
    listener: TcpListener,
) -> std::thread::JoinHandle<Result<Vm, String>> {
    let guest = Guest::new(layout()).unwrap();
    let dev = device(p, &guest);
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let a = live::migrate_in(guest, dev, &mut conn).map_err(|e| e.to_string())?;
        Ok(Vm {
            guest: a.guest,
            dev: a.dev,
            wl: a.workload,
            ring: a.ring,
        })
    })
}

fn attempt(
    p: &Placement,
    src: &mut Vm,
    limit: usize,
    flip: bool,
    opts: &SourceOptions,
) -> (Result<(), String>, Result<Vm, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let d = destination(p, listener);
    let mut conn = Faulty {
        inner: TcpStream::connect(addr).unwrap(),
        written: 0,
        limit,
        flip,
    };
    let r = live::migrate_out(
        src.dev.as_mut(),
        &src.guest,
        &mut src.wl,
        &mut src.ring,
        &mut conn,
        opts,
    )
    .map(|_| ())
    .map_err(|e| e.to_string());
    drop(conn);
    (r, d.join().unwrap())
}

fn a_cut_at_any_phase_leaves_the_source_running_and_a_retry_succeeds(p: &Placement) {
    // Measure a whole stream first so the cuts land in every phase.
    let mut probe = vm(p, 3, 400);
    run_some(&mut probe, 50);
    let opts = SourceOptions {
        descriptors_per_pass: 12,
        ..SourceOptions::default()
    };
    let (r, d) = attempt(p, &mut probe, usize::MAX, false, &opts);
    r.unwrap();
    let mut moved = d.unwrap();
    finish(&mut moved);

    for cut in [0usize, 100, 300_000, 600_000, 1_000_000, 1_500_000] {
        let mut src = vm(p, 3, 400);
        run_some(&mut src, 50);
        let (r, d) = attempt(p, &mut src, cut, false, &opts);
        if r.is_ok() {
            // The cut came after the last byte: a real success.
            let mut moved = d.unwrap();
            finish(&mut moved);
            continue;
        }
        assert!(
            d.is_err(),
            "cut at {cut}: the destination must not run a partial stream"
        );
        // The source resumed: it keeps working, then a second attempt succeeds.
        run_some(&mut src, 20);
        let (r2, d2) = attempt(p, &mut src, usize::MAX, false, &opts);
        r2.unwrap_or_else(|e| panic!("retry after cut at {cut}: {e}"));
        let mut moved = d2.unwrap();
        finish(&mut moved);
    }
}

fn a_corrupted_stream_is_refused_and_the_source_resumes(p: &Placement) {
    let opts = SourceOptions {
        descriptors_per_pass: 12,
        ..SourceOptions::default()
    };
    for at in [20usize, 5_000, 400_000, 900_000] {
        let mut src = vm(p, 5, 300);
        run_some(&mut src, 40);
        let (r, d) = attempt(p, &mut src, at, true, &opts);
        assert!(r.is_err(), "flip at {at} went unnoticed");
        assert!(
            d.is_err(),
            "flip at {at}: destination ran a corrupted stream"
        );
        finish(&mut src);
    }
}

fn ten_round_trips_a_to_b_to_a_keep_the_workload_exact(p: &Placement) {
    let opts = SourceOptions {
        descriptors_per_pass: 7,
        ..SourceOptions::default()
    };
    let mut cur = vm(p, 9, 2000);
    for i in 0..10 {
        run_some(&mut cur, 40);
        let (r, d) = attempt(p, &mut cur, usize::MAX, false, &opts);
        r.unwrap_or_else(|e| panic!("migration {i}: {e}"));
        cur = d.unwrap();
    }
    finish(&mut cur);
}

/// Instantiates each case on both paths.
macro_rules! on_both_paths {
    ($($t:ident),* $(,)?) => {
        mod servers {
            $( #[test] fn $t() { super::$t(&super::Placement::Server(super::Launch::InThread)) } )*
        }
        mod in_process {
            $( #[test] fn $t() { super::$t(&super::Placement::Local) } )*
        }
    };
}

on_both_paths!(
    a_cut_at_any_phase_leaves_the_source_running_and_a_retry_succeeds,
    a_corrupted_stream_is_refused_and_the_source_resumes,
    ten_round_trips_a_to_b_to_a_keep_the_workload_exact,
);
