//! vfio-user benchmarks, each beside a baseline measured in the same run:
//!
//! - `mmio_read_rtt`: a 4-byte BAR0 REGION_READ round trip through the
//!   server on the model (raw protocol bytes on a blocking socket, 32-byte
//!   request, 36-byte reply) vs a raw UNIX-socket echo of the same sizes
//!   (a thread that reads 32 bytes and writes 36).
//! - `mig_data_read`: STOP_COPY save stream of a 64 MiB device read with
//!   1 MiB MIG_DATA_READs vs a memcpy of the same number of bytes.
//!
//! Both run the server inside this process, on a thread, for profiling
//! the server's code; the round trip a VMM sees is measured against a
//! `vfpga serve` process by `host/cli/benches/serve_mmio.rs`. After the
//! criterion groups, the MIG_DATA_READ throughput is written to
//! `target/bench/*.json` when `VFU_BENCH_JSON` names the output directory.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group};
use vfpga_device::DmaPort;
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::offsets;
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::wire::{self, Header, cmd};
use vfpga_vfio_user::{Client, IrqHub, Server};

struct Srv {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn server(pages: u32) -> Srv {
    let dma = DmaPort::new();
    let irq = Arc::new(IrqHub::new());
    let m = Model::new(ModelConfig::with_pages(pages), dma.clone(), irq.clone()).unwrap();
    let s = Arc::new(Server::new(Box::new(m), dma, irq).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let l = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&path).unwrap()
    };
    // The current-thread runtime is driven by its own thread.
    std::thread::spawn(move || rt.block_on(s.serve(l)));
    Srv { path, _dir: dir }
}

fn msg(id: u16, command: u16, p: &[u8]) -> Vec<u8> {
    let h = Header {
        msg_id: id,
        command,
        msg_size: (16 + p.len()) as u32,
        flags: 0,
        error: 0,
    };
    let mut m = h.encode().to_vec();
    m.extend_from_slice(p);
    m
}

/// A raw client: VERSION done, then REGION_READ of SCRATCH on demand.
struct Raw {
    s: UnixStream,
    req: Vec<u8>,
    buf: [u8; 36],
}

impl Raw {
    fn new(path: &std::path::Path) -> Raw {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(&msg(1, cmd::VERSION, &[0, 0, 2, 0])).unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let mut rest = vec![0u8; Header::parse(&h).payload_len()];
        s.read_exact(&mut rest).unwrap();
        let a = wire::RegionAccess {
            offset: offsets::SCRATCH.into(),
            region: region::BAR0,
            count: 4,
        };
        Raw {
            s,
            req: msg(2, cmd::REGION_READ, &a.encode(&[])),
            buf: [0; 36],
        }
    }
    fn rtt(&mut self) {
        self.s.write_all(&self.req).unwrap();
        self.s.read_exact(&mut self.buf).unwrap();
    }
}

/// A raw echo of the same sizes.
struct Echo {
    s: UnixStream,
    req: [u8; 32],
    buf: [u8; 36],
}

impl Echo {
    fn new() -> Echo {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut r = [0u8; 32];
            let w = [7u8; 36];
            while b.read_exact(&mut r).is_ok() {
                if b.write_all(&w).is_err() {
                    break;
                }
            }
        });
        Echo {
            s: a,
            req: [1; 32],
            buf: [0; 36],
        }
    }
    fn rtt(&mut self) {
        self.s.write_all(&self.req).unwrap();
        self.s.read_exact(&mut self.buf).unwrap();
    }
}

fn rtt(c: &mut Criterion) {
    let srv = server(16);
    let mut raw = Raw::new(&srv.path);
    let mut echo = Echo::new();
    let mut g = c.benchmark_group("mmio_read_rtt");
    g.bench_function("server_model", |b| b.iter(|| raw.rtt()));
    g.bench_function("raw_socket_echo", |b| b.iter(|| echo.rtt()));
    g.finish();
}

const MIG_PAGES: u32 = 16384; // 64 MiB
static MIG_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn mig(c: &mut Criterion) {
    let srv = server(MIG_PAGES);
    let mut cl = Client::connect(&srv.path).unwrap();
    cl.negotiate_default().unwrap();
    // Non-zero device memory so the stream carries real pages.
    let page: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    for p in (0..u64::from(MIG_PAGES)).step_by(16) {
        cl.region_write(region::BAR2, p * 4096, &page).unwrap();
    }
    let bytes = {
        cl.set_mig_state(3).unwrap();
        let n = cl.mig_read_all(1 << 20).unwrap().len();
        cl.set_mig_state(1).unwrap();
        n
    };
    MIG_BYTES.store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut g = c.benchmark_group("mig_data_read");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.sample_size(10);
    g.bench_function("stop_copy_64mib", |b| {
        b.iter(|| {
            cl.set_mig_state(3).unwrap();
            let n = cl.mig_read_all(1 << 20).unwrap().len();
            cl.set_mig_state(1).unwrap();
            n
        })
    });
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            dst[0]
        })
    });
    g.finish();
}

fn write_json(
    dir: &str,
    name: &str,
    value: f64,
    unit: &str,
    bname: &str,
    bvalue: f64,
    notes: &str,
) {
    let j = serde_json::json!({
        "name": name, "value": value, "unit": unit,
        "baseline_name": bname, "baseline_value": bvalue, "ratio": value / bvalue,
        "notes": notes,
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/{name}.json"), format!("{j:#}\n")).unwrap();
    println!(
        "{name:<32} {value:>10.3} {unit:<5} baseline {bname} = {bvalue:.3}, ratio {:.3}",
        value / bvalue
    );
}

fn percentiles() {
    let Ok(dir) = std::env::var("VFU_BENCH_JSON") else {
        return;
    };
    // MIG_DATA_READ throughput from the criterion estimates of this run.
    let crit = std::env::var("CRITERION_DIR").unwrap_or_default();
    let mean = |g: &str, f: &str| -> Option<f64> {
        let s = std::fs::read_to_string(format!("{crit}/{g}/{f}/new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    if let (Some(m), Some(c)) = (
        mean("mig_data_read", "stop_copy_64mib"),
        mean("mig_data_read", "memcpy_same_bytes"),
    ) {
        let b = MIG_BYTES.load(std::sync::atomic::Ordering::Relaxed) as f64;
        write_json(
            &dir,
            "vfio_user_mig_data_read",
            b / m,
            "GB/s",
            "memcpy_same_bytes_same_run",
            b / c,
            "STOP_COPY save stream of a 64 MiB model device (1/16 of its pages written) read with 1 MiB MIG_DATA_READs over the socket, state changes included; baseline memcpy of the same byte count",
        );
    }
}

criterion_group!(benches, rtt, mig);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
