//! MMIO round trip through a `vfpga serve` PROCESS (what users run), from an
//! external blocking client, beside a raw UNIX-socket echo of the same
//! message sizes measured in the same run (the echo server is its own
//! process, this binary run again, as the server under test is): 4-byte BAR0 REGION_READ (32-byte
//! request, 36-byte reply) and REGION_WRITE (36-byte request, 32-byte
//! reply), 5 rounds of 4,000 requests, server and echo alternating by round.
//! Model always; the sim when this build has Verilator. Writes
//! `target/bench/serve_{model,sim}_mmio_{read,write}_{p50,p99}.json` when
//! `VFU_BENCH_JSON` names the directory.

#![allow(clippy::unwrap_used, missing_docs)] // a benchmark binary

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vfpga_regs::offsets;
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header, cmd};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 4000;

mod common;

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

fn run(config: &str) {
    let srv = serve(config);
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
        let mut echo = echo(req.len(), reply);
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
            "4-byte BAR0 REGION_{} through a `vfpga serve` process ({config} backend) from a blocking client, {ROUNDS}x{PER_ROUND} requests; baseline: a raw UNIX-socket echo of the same sizes in its own process (one blocking thread) ({} B request, {reply} B reply), rounds alternating",
            what.to_uppercase(),
            req.len()
        );
        for q in [("p50", 0.5), ("p99", 0.99)] {
            let (x, y) = (percentile(&mut a, q.1), percentile(&mut b, q.1));
            write_json(
                &format!("serve_{config}_mmio_{what}_{}", q.0),
                x,
                &format!("raw_socket_echo_{what}_{}", q.0),
                y,
                &note,
            );
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        echo_server(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument selects configs.
    let want: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for config in ["model", "sim"] {
        if !want.is_empty() && !want.iter().any(|w| config.contains(w.as_str())) {
            continue;
        }
        if config == "sim" && !vfpga_sim::AVAILABLE {
            println!("serve_sim: skipped (this build has no Verilator)");
            continue;
        }
        run(config);
    }
}
