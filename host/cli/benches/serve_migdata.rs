//! MIG_DATA_READ throughput through a `vfpga serve` PROCESS: the STOP_COPY
//! stream of a 256 MiB model device (every page written once, so every page
//! is in the stream) read with 1 MiB MIG_DATA_READs by a blocking client,
//! beside, in the same run, a raw UNIX-socket bulk transfer of the same byte
//! count in the same chunk size (a peer thread writing, this thread
//! reading) and a memcpy of the same bytes.
//!
//! As for the MMIO figure, placement decides the floor: a raw transfer
//! between two threads on two idle CPUs copies on both at once (about
//! 10 GB/s here), on one CPU it does not (about 6). Both are measured with
//! the server and the floor's writer placed alike: `split` (client and
//! reader on the first allowed CPU, server and writer on the second: the
//! goal figure, as a migration runs with the VMM and the device server on
//! different cores) and `same` (all on one CPU). Writes
//! `target/bench/serve_model_mig_data_read{,_same}.json` when
//! `VFU_BENCH_JSON` names the directory.

#![allow(clippy::unwrap_used, missing_docs)] // a benchmark binary

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vfpga_migration::fsm::MigState;
use vfpga_vfio_user::Client;
use vfpga_vfio_user::session::region;

const DEVMEM: usize = 256 << 20;
const CHUNK: u32 = 1 << 20;

mod common;

use common::{allowed, pin};

/// The server and its config file (removed on drop).
struct Served(common::Served, PathBuf);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

fn serve() -> Served {
    let cfg = std::env::temp_dir().join(format!("vfpga-bench-mig-{}.yaml", std::process::id()));
    std::fs::write(
        &cfg,
        "backend: model\ndevice:\n  devmem_size: 256MiB\n  dmalog_max_pages: 65536\nlog:\n  level: error\n",
    )
    .unwrap();
    Served(common::serve(&cfg, "mig"), cfg)
}

fn client(s: &Served) -> Client {
    let t0 = Instant::now();
    loop {
        let mut c = Client::connect(&s.0.socket).unwrap();
        c.set_timeout(Duration::from_secs(120));
        if c.negotiate_default().is_ok() {
            return c;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "server never free");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Seconds to move `bytes` over a socket pair in `CHUNK` writes, the
/// writer on `writer_cpu`.
fn raw_socket(bytes: usize, writer_cpu: usize, all: &nix::sched::CpuSet) -> f64 {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let all = *all;
    let t = Instant::now();
    let w = std::thread::spawn(move || {
        pin(Some(writer_cpu), &all);
        let buf = vec![0x5au8; CHUNK as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            b.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    });
    let mut buf = vec![0u8; CHUNK as usize];
    let mut got = 0;
    while got < bytes {
        got += a.read(&mut buf).unwrap();
    }
    w.join().unwrap();
    t.elapsed().as_secs_f64()
}

fn memcpy(bytes: usize) -> f64 {
    let src = vec![0x11u8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src); // fault the pages in first
    let t = Instant::now();
    dst.copy_from_slice(std::hint::black_box(&src));
    std::hint::black_box(&dst);
    t.elapsed().as_secs_f64()
}

fn main() {
    let (all, cpus) = allowed();
    if cpus.len() >= 2 {
        run(
            "",
            "client and reader on one CPU, server and writer on another",
            cpus[0],
            cpus[1],
            &all,
        );
    }
    run(
        "_same",
        "client, server, reader and writer all on one CPU",
        cpus[0],
        cpus[0],
        &all,
    );
}

fn run(
    suffix: &str,
    placement: &str,
    client_cpu: usize,
    server_cpu: usize,
    all: &nix::sched::CpuSet,
) {
    pin(Some(server_cpu), all);
    let srv = serve();
    pin(Some(client_cpu), all);
    let c = client(&srv);
    // Write every page once (so every page is in the stream).
    let page = vec![0xa5u8; 1 << 20];
    for off in (0..DEVMEM).step_by(page.len()) {
        c.region_write(region::BAR2, off as u64, &page).unwrap();
    }
    let (mut t_srv, mut t_raw, mut t_mem, mut bytes) = (f64::MAX, f64::MAX, f64::MAX, 0);
    for _ in 0..3 {
        c.set_mig_state(MigState::Stop as u32).unwrap();
        c.set_mig_state(MigState::StopCopy as u32).unwrap();
        let t = Instant::now();
        let mut n = 0usize;
        loop {
            let d = c.mig_data_read(CHUNK).unwrap();
            n += d.len();
            if d.len() < CHUNK as usize {
                break;
            }
        }
        t_srv = t_srv.min(t.elapsed().as_secs_f64());
        bytes = n;
        c.set_mig_state(MigState::Stop as u32).unwrap();
        c.set_mig_state(MigState::Running as u32).unwrap();
        t_raw = t_raw.min(raw_socket(n, server_cpu, all));
        t_mem = t_mem.min(memcpy(n));
    }
    pin(None, all);
    let name = format!("serve_model_mig_data_read{suffix}");
    let gbs = |t: f64| bytes as f64 / t / 1e9;
    let (v, b, m) = (gbs(t_srv), gbs(t_raw), gbs(t_mem));
    println!(
        "{name}  {v:.3} GB/s  baseline raw socket bulk = {b:.3} GB/s, ratio {:.3}; memcpy {m:.3} GB/s ({bytes} bytes, best of 3; {placement})",
        v / b
    );
    if let Ok(dir) = std::env::var("VFU_BENCH_JSON") {
        let j = serde_json::json!({
            "name": name, "value": v, "unit": "GB/s",
            "baseline_name": format!("raw_socket_bulk{suffix}"), "baseline_value": b, "ratio": v / b,
            "notes": format!("STOP_COPY stream of a 256 MiB model device (every page written) read with 1 MiB MIG_DATA_READs from a `vfpga serve` process, best of 3; baseline: a raw UNIX-socket transfer of the same {bytes} bytes in 1 MiB writes; memcpy of the same bytes {m:.3} GB/s; {placement}"),
        });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.json"), format!("{j:#}\n")).unwrap();
    }
}
