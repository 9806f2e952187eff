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
use std::time::{Duration, Instant};

use vfpga_device::{DmaPort, MmapMemory, Perm};
use vfpga_regs::offsets;
use vfpga_vfio_user::Client;

// The workload, pre-copy rounds, page sync and checks are the vfio-user
// migration tests' own.
#[path = "../../vfio-user/tests/common/migration.rs"]
mod migration;
use migration::*;

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

fn v2_between_processes(config_name: &str) {
    let src = side(config_name, "v2-src");
    let dst = side(config_name, "v2-dst");
    src.c.write32(offsets::SCRATCH.into(), 0x5eed).unwrap();
    let mut stream = Vec::new();
    let (c, g) = (&src.c, &src.g.port);
    let enter = || c.set_mig_state(PRE_COPY).unwrap();
    let rounds = precopy_under_workload(c, g, &dst.g.port, 4, enter, |_| {
        stream.extend_from_slice(&c.mig_read_all(65536).unwrap());
    });
    assert!(rounds > 0, "the workload ran during pre-copy");
    eprintln!(
        "{config_name} v2: {rounds} workload rounds, {} pre-copy bytes",
        stream.len()
    );
    src.c.set_mig_state(STOP_COPY).unwrap();
    stream.extend_from_slice(&src.c.mig_read_all(65536).unwrap());
    eprintln!("{config_name} v2: {} stream bytes in all", stream.len());
    sync_pages(&src.c, &src.g.port, &dst.g.port, false);
    src.c.set_mig_state(STOP).unwrap();
    src.c.dma_logging_stop().unwrap();

    dst.c.set_mig_state(RESUMING).unwrap();
    for c in stream.chunks(100_000) {
        dst.c.mig_data_write(c).unwrap();
    }
    dst.c.set_mig_state(STOP).unwrap();
    check_identical((&src.c, &src.g.port), (&dst.c, &dst.g.port));
    dst.c.set_mig_state(RUNNING).unwrap();
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0x5eed);
    destination_runs(&dst.c, &dst.g.port);
}

fn v1_between_processes(config_name: &str) {
    let src = side(config_name, "v1-src");
    let dst = side(config_name, "v1-dst");
    src.c.write32(offsets::SCRATCH.into(), 0xabc1).unwrap();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let (c, g) = (&src.c, &src.g.port);
    let enter = || v1_state(c, 0b011).unwrap(); // SAVING | RUNNING: pre-copy
    let rounds = precopy_under_workload(c, g, &dst.g.port, 6, enter, |_| {
        if let Some(d) = v1_iteration(c) {
            chunks.push(d);
        }
    });
    assert!(rounds > 0, "the workload ran during pre-copy");
    eprintln!(
        "{config_name} v1: {rounds} workload rounds, {} pre-copy iterations with data",
        chunks.len()
    );
    v1_state(&src.c, 0b010).unwrap(); // SAVING: stop-and-copy
    chunks.extend(v1_drain(&src.c));
    sync_pages(&src.c, &src.g.port, &dst.g.port, false);
    v1_state(&src.c, 0).unwrap(); // stopped
    src.c.dma_logging_stop().unwrap();

    v1_state(&dst.c, 0b100).unwrap(); // RESUMING
    v1_resume(&dst.c, &chunks);
    v1_state(&dst.c, 0).unwrap(); // stopped: the stream is validated here
    check_identical((&src.c, &src.g.port), (&dst.c, &dst.g.port));
    v1_state(&dst.c, 0b001).unwrap(); // RUNNING
    assert_eq!(dst.c.read32(offsets::SCRATCH.into()).unwrap(), 0xabc1);
    destination_runs(&dst.c, &dst.g.port);
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
