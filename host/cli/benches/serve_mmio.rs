//! MMIO round trip through a `vfpga serve` PROCESS (what users run), from an
//! external blocking client, beside a raw UNIX-socket echo of the same
//! message sizes measured in the same run (the echo server is its own
//! process, this binary run again, as the server under test is): 4-byte BAR0 REGION_READ (32-byte
//! request, 36-byte reply) and REGION_WRITE (36-byte request, 32-byte
//! reply), 5 rounds of 4,000 requests, server and echo alternating by round.
//! Model always; the sim when this build has Verilator.
//!
//! Where the kernel puts the two ends decides the figure more than anything
//! the server does: a blocking round trip between two processes on one CPU
//! costs a few microseconds, while one whose every wake-up crosses to an
//! idle CPU pays an inter-processor interrupt each way (about 30 us per
//! round trip on this kind of VM). Left to itself the scheduler keeps a
//! pair wherever its first wake-ups put it, so an unpinned run is
//! bimodal, and the echo and the server can land differently in the same
//! run. Each placement is therefore measured with the server and its echo
//! placed alike: `same` (client, server and echo on CPU 0), `split`
//! (client on CPU 0, server and echo on CPU 1) and `unpinned` (for the
//! record; no goal). Writes
//! `target/bench/serve_{model,sim}_mmio_{read,write}_{p50,p99}[_split|_unpinned].json`
//! when `VFU_BENCH_JSON` names the directory (no suffix: `same`).

#![allow(clippy::unwrap_used, missing_docs)] // a benchmark binary

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{allowed, pin};
use nix::sched::CpuSet;
use vfpga_regs::offsets;
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header, cmd};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 4000;

mod common;

/// Where the client, and the server with its echo, run.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// Client, server and echo on the first allowed CPU.
    Same,
    /// Client on the first allowed CPU, server and echo on the second.
    Split,
    /// Wherever the scheduler puts them.
    Unpinned,
}

impl Placement {
    fn suffix(self) -> &'static str {
        match self {
            Placement::Same => "",
            Placement::Split => "_split",
            Placement::Unpinned => "_unpinned",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Placement::Same => "client, server and echo pinned to one CPU",
            Placement::Split => {
                "client pinned to one CPU, server and echo to another (every wake-up crosses CPUs)"
            }
            Placement::Unpinned => {
                "unpinned: the scheduler keeps each pair where its first wake-ups put it, so this figure is bimodal (same-CPU or cross-CPU cost) and the echo may land differently from the server; no goal"
            }
        }
    }
}

fn serve(config: &str) -> common::Served {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../config/{config}.yaml"));
    common::serve(&cfg, config)
}

fn frame(id: u16, command: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Header {
        msg_id: id,
        command,
        msg_size: (HEADER_LEN + payload.len()) as u32,
        flags: 0,
        error: 0,
    }
    .encode()
    .to_vec();
    m.extend_from_slice(payload);
    m
}

/// A negotiated blocking connection to the server.
fn connect(path: &Path) -> UnixStream {
    let t0 = Instant::now();
    loop {
        let mut s = UnixStream::connect(path).unwrap();
        let ok = s.write_all(&wire::Version::command(1)).is_ok() && {
            let mut h = [0u8; HEADER_LEN];
            s.read_exact(&mut h).is_ok() && {
                let h = Header::parse(&h);
                let mut p = vec![0u8; h.payload_len()];
                s.read_exact(&mut p).is_ok()
            }
        };
        if ok {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "server never free");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Times `n` request/reply exchanges of fixed sizes on `s`.
fn time(s: &mut UnixStream, req: &[u8], reply_len: usize, n: usize, out: &mut Vec<f64>) {
    let mut r = vec![0u8; reply_len];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(req).unwrap();
        s.read_exact(&mut r).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
}

/// Environment variable that turns this binary into the echo server:
/// `SOCKET,REQ_LEN,REPLY_LEN`.
const ECHO_ENV: &str = "VFPGA_BENCH_ECHO";

/// The echo server's body (in its own process, as the server under test
/// is): accepts one client on `socket` and, until it hangs up, reads
/// `req_len` bytes and answers `reply_len` bytes, blocking.
fn echo_server(spec: &str) {
    let mut it = spec.rsplitn(3, ',');
    let reply_len: usize = it.next().unwrap().parse().unwrap();
    let req_len: usize = it.next().unwrap().parse().unwrap();
    let socket = it.next().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let (mut b, _) = listener.accept().unwrap();
    let mut q = vec![0u8; req_len];
    let r = vec![0u8; reply_len];
    while b.read_exact(&mut q).is_ok() {
        if b.write_all(&r).is_err() {
            break;
        }
    }
}

/// An echo server process (this binary again) and a connection to it.
struct Echo {
    child: std::process::Child,
    socket: std::path::PathBuf,
    conn: UnixStream,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts an echo process that reads `req_len` bytes and answers
/// `reply_len` bytes, and connects to it.
fn echo(req_len: usize, reply_len: usize) -> Echo {
    let socket = std::env::temp_dir().join(format!(
        "vfpga-bench-echo-{}-{req_len}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&socket);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(
            ECHO_ENV,
            format!("{},{req_len},{reply_len}", socket.display()),
        )
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let conn = loop {
        if let Ok(c) = UnixStream::connect(&socket) {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "echo never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    Echo {
        child,
        socket,
        conn,
    }
}

fn write_json(name: &str, value: f64, bname: &str, bvalue: f64, notes: &str) {
    println!(
        "{name:<34} {value:>9.2} us  baseline {bname} = {bvalue:.2} us, ratio {:.3}",
        value / bvalue
    );
    let Ok(dir) = std::env::var("VFU_BENCH_JSON") else {
        return;
    };
    let j = serde_json::json!({
        "name": name, "value": value, "unit": "us",
        "baseline_name": bname, "baseline_value": bvalue, "ratio": value / bvalue,
        "notes": notes,
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/{name}.json"), format!("{j:#}\n")).unwrap();
}

fn run(config: &str, placement: Placement, all: &CpuSet, cpus: &[usize]) {
    let (client_cpu, server_cpu) = match placement {
        Placement::Same => (Some(cpus[0]), Some(cpus[0])),
        Placement::Split => (Some(cpus[0]), Some(cpus[1])),
        Placement::Unpinned => (None, None),
    };
    // Children inherit the affinity of the thread that spawns them.
    pin(server_cpu, all);
    let srv = serve(config);
    pin(client_cpu, all);
    let mut s = connect(&srv.socket);
    let scratch = u64::from(offsets::SCRATCH);
    let rd = frame(
        2,
        cmd::REGION_READ,
        &wire::RegionAccess {
            offset: scratch,
            region: region::BAR0,
            count: 4,
        }
        .encode(&[]),
    );
    let wr = frame(
        3,
        cmd::REGION_WRITE,
        &wire::RegionAccess {
            offset: scratch,
            region: region::BAR0,
            count: 4,
        }
        .encode(&7u32.to_le_bytes()),
    );
    for (what, req, reply) in [
        ("read", &rd, HEADER_LEN + 20),
        ("write", &wr, HEADER_LEN + 16),
    ] {
        pin(server_cpu, all);
        let mut echo = echo(req.len(), reply);
        pin(client_cpu, all);
        let e = &mut echo.conn;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Warm up both.
        time(&mut s, req, reply, 500, &mut Vec::new());
        time(e, req, reply, 500, &mut Vec::new());
        for _ in 0..ROUNDS {
            time(&mut s, req, reply, PER_ROUND, &mut a);
            time(e, req, reply, PER_ROUND, &mut b);
        }
        let note = format!(
            "4-byte BAR0 REGION_{} through a `vfpga serve` process ({config} backend) from a blocking client, {ROUNDS}x{PER_ROUND} requests; baseline: a raw UNIX-socket echo of the same sizes in its own process (one blocking thread) ({} B request, {reply} B reply), rounds alternating; {}",
            what.to_uppercase(),
            req.len(),
            placement.describe()
        );
        for q in [("p50", 0.5), ("p99", 0.99)] {
            let (x, y) = (percentile(&mut a, q.1), percentile(&mut b, q.1));
            write_json(
                &format!("serve_{config}_mmio_{what}_{}{}", q.0, placement.suffix()),
                x,
                &format!("raw_socket_echo_{what}_{}{}", q.0, placement.suffix()),
                y,
                &note,
            );
        }
    }
}

/// Environment variable naming another vfio-user server binary (for
/// example libvfio-user's sample `server`, built outside this repository)
/// to compare with `vfpga serve` on the model by hand: started as `BIN
/// SOCKET`, it must serve an 8-byte REGION_READ of BAR0 at offset 0.
const PEER_ENV: &str = "VFPGA_BENCH_PEER_BIN";

/// A peer server process on `socket` (killed on drop).
struct Peer {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The peer comparison (printed, not written as a figure: CI cannot fetch
/// the peer): 8-byte BAR0 REGION_READs (32-byte request, 40-byte reply)
/// through the peer and through `vfpga serve` (model), beside the echo of
/// the same sizes, rounds alternating, in the pinned placements.
fn peer_run(bin: &str, all: &CpuSet, cpus: &[usize]) {
    let read8 = |offset: u64, id: u16| {
        frame(
            id,
            cmd::REGION_READ,
            &wire::RegionAccess {
                offset,
                region: region::BAR0,
                count: 8,
            }
            .encode(&[]),
        )
    };
    let reply = HEADER_LEN + 16 + 8;
    for placement in [Placement::Same, Placement::Split] {
        if placement == Placement::Split && cpus.len() < 2 {
            continue;
        }
        let (client_cpu, server_cpu) = match placement {
            Placement::Split => (cpus[0], cpus[1]),
            _ => (cpus[0], cpus[0]),
        };
        pin(Some(server_cpu), all);
        let socket =
            std::env::temp_dir().join(format!("vfpga-bench-peer-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let peer = Peer {
            child: std::process::Command::new(bin)
                .arg(&socket)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn the peer server"),
            socket,
        };
        let srv = serve("model");
        let req = read8(0, 2);
        let mut echo = echo(req.len(), reply);
        pin(Some(client_cpu), all);
        let t0 = Instant::now();
        while !peer.socket.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the peer never listened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut p = connect(&peer.socket);
        let mut v = connect(&srv.socket);
        let vreq = read8(u64::from(offsets::SCRATCH), 2);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        time(&mut p, &req, reply, 500, &mut Vec::new());
        time(&mut v, &vreq, reply, 500, &mut Vec::new());
        time(&mut echo.conn, &req, reply, 500, &mut Vec::new());
        for _ in 0..ROUNDS {
            time(&mut p, &req, reply, PER_ROUND, &mut a);
            time(&mut v, &vreq, reply, PER_ROUND, &mut b);
            time(&mut echo.conn, &req, reply, PER_ROUND, &mut c);
        }
        for (q, f) in [("p50", 0.5), ("p99", 0.99)] {
            let (x, y, z) = (
                percentile(&mut a, f),
                percentile(&mut b, f),
                percentile(&mut c, f),
            );
            println!(
                "{} 8-byte BAR0 read {q}: peer {x:.2} us ({:.3}x echo), vfpga serve (model) {y:.2} us ({:.3}x echo), echo {z:.2} us",
                placement.describe(),
                x / z,
                y / z
            );
        }
        pin(None, all);
    }
}

fn main() {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        echo_server(&spec);
        return;
    }
    if let Ok(bin) = std::env::var(PEER_ENV) {
        let (all, cpus) = allowed();
        peer_run(&bin, &all, &cpus);
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument selects configs.
    let want: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (all, cpus) = allowed();
    for config in ["model", "sim"] {
        if !want.is_empty() && !want.iter().any(|w| config.contains(w.as_str())) {
            continue;
        }
        if config == "sim" && !vfpga_sim::AVAILABLE {
            println!("serve_sim: skipped (this build has no Verilator)");
            continue;
        }
        for p in [Placement::Same, Placement::Split, Placement::Unpinned] {
            if p == Placement::Split && cpus.len() < 2 {
                println!("serve_{config} split placement: skipped (one CPU allowed)");
                continue;
            }
            run(config, p, &all, &cpus);
            pin(None, &all);
        }
    }
}
