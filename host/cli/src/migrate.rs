//! `vfpga migrate`: one side of a cross-host live migration of the built-in
//! seeded workload over TCP (not of a device some other VMM uses).
//!
//! The source (`--to tcp:HOST:PORT`) runs the seeded workload on its device,
//! live-migrates it part-way, and prints the passes; the destination
//! (`--incoming tcp:ADDR:PORT`) receives the device, its guest memory and the
//! workload, resumes them and runs the workload to the end, verifying every
//! completion and the final memory. If the migration fails, the source
//! resumes, finishes the workload locally and verifies it (exit 1).
//!
//! Each side's device runs behind its own `vfpga serve` child process (or in
//! this process with `--in-process`). On a terminal the source shows a
//! progress bar (bytes sent in the current pass, bytes pending); otherwise
//! it prints one line per pass.

use std::io::IsTerminal;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use vfpga_config::{Backend, Config};
use vfpga_device::error_chain;
use vfpga_vmm::backend::Kind;
use vfpga_vmm::demo::DemoOptions;
use vfpga_vmm::live::{self, Guest, LiveError, Pass, Progress};
use vfpga_vmm::server::Launch;
use vfpga_vmm::vm::{self, Placement, VmDevice};
use vfpga_vmm::workload::Workload;

use crate::BackendArg;
use crate::exit::{FAILED as EXIT_FAILED, OK as EXIT_OK, USAGE as EXIT_USAGE};

fn parse_tcp(s: &str) -> Option<String> {
    let rest = s.strip_prefix("tcp:")?;
    (rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()))
    .then(|| rest.to_string())
}

fn kind_of(cfg: Option<&Config>, backend: Option<BackendArg>) -> Result<Kind, String> {
    if let Some(b) = backend {
        return Ok(b.kind());
    }
    match cfg.map(|c| c.backend.value) {
        None | Some(Backend::Sim) => Ok(Kind::Sim),
        Some(Backend::Model) => Ok(Kind::Model),
        Some(Backend::Board) => Ok(Kind::Board),
        Some(o) => Err(format!(
            "backend `{}` cannot be migrated by `vfpga migrate` yet",
            o.name()
        )),
    }
}

fn fail(msg: impl std::fmt::Display, e: &LiveError) -> u8 {
    eprintln!("vfpga migrate: {msg}: {}", error_chain(e));
    EXIT_FAILED
}

/// Runs `vfpga migrate`; returns the exit status.
pub fn run(
    cfg: Option<&Config>,
    config_path: Option<&std::path::Path>,
    backend: Option<BackendArg>,
    to: Option<&str>,
    incoming: Option<&str>,
    in_process: bool,
    precopy: &crate::PrecopyArgs,
) -> u8 {
    let kind = match kind_of(cfg, backend) {
        Ok(k) => k,
        Err(m) => {
            eprintln!("vfpga migrate: {m}");
            return EXIT_USAGE;
        }
    };
    let devmem = cfg.map(|c| c.device.devmem_size.value.0).unwrap_or(1 << 20);
    let mut opts = DemoOptions::new(kind, devmem);
    if let Err(e) = precopy.apply(&mut opts.source) {
        eprintln!("vfpga migrate: {e}");
        return EXIT_USAGE;
    }
    opts.placement = match Placement::for_cli(in_process) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vfpga migrate: {e}");
            return EXIT_USAGE;
        }
    };
    // A board (real or simulated) is served as the user's config describes
    // it: each side's `vfpga serve` child gets that file.
    if kind == Kind::Board
        && let (Some(path), Placement::Server(Launch::Process(exe))) =
            (config_path, &opts.placement)
    {
        opts.placement = Placement::Server(Launch::WithConfig(exe.clone(), path.to_path_buf()));
    } else if kind == Kind::Board
        && cfg.is_some_and(|c| c.board.as_ref().is_some_and(|b| b.pci_address.is_some()))
    {
        eprintln!(
            "vfpga migrate: a real board is served by a `vfpga serve` child with its config: drop --in-process"
        );
        return EXIT_USAGE;
    }
    match (to, incoming) {
        (Some(t), None) => match parse_tcp(t) {
            Some(addr) => source(&opts, &addr),
            None => {
                eprintln!("vfpga migrate: --to takes tcp:HOST:PORT, not `{t}`");
                EXIT_USAGE
            }
        },
        (None, Some(i)) => match parse_tcp(i) {
            Some(addr) => destination(&opts, &addr),
            None => {
                eprintln!("vfpga migrate: --incoming takes tcp:ADDR:PORT, not `{i}`");
                EXIT_USAGE
            }
        },
        _ => {
            eprintln!(
                "vfpga migrate: give --to tcp:HOST:PORT (source) or --incoming tcp:ADDR:PORT (destination)"
            );
            EXIT_USAGE
        }
    }
}

/// Shows the source's progress: a bar on a terminal, log lines otherwise.
struct Shown {
    bar: Option<ProgressBar>,
    estimate: u64,
}

fn line(p: &Pass) -> String {
    format!("source: {}", p.summary())
}

impl Shown {
    fn new(first_pass_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(first_pass_bytes);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:<28} [{bar:32}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message("pre-copy pass 0 (full)");
            b
        });
        Shown {
            bar,
            estimate: first_pass_bytes,
        }
    }

    fn event(&mut self, e: Progress<'_>) {
        match (e, &self.bar) {
            (Progress::Sending { bytes, .. }, Some(b)) => {
                if bytes > self.estimate {
                    self.estimate = bytes;
                    b.set_length(bytes);
                }
                b.set_position(bytes);
            }
            (Progress::Sending { .. }, None) => {}
            (Progress::PassDone(p), Some(b)) => {
                b.println(line(p));
                // The next pass sends about what is pending now.
                self.estimate = p.pending_bytes.max(1);
                b.set_length(self.estimate);
                b.set_position(0);
                b.set_message(format!("pre-copy pass {}", p.pass + 1));
            }
            (Progress::PassDone(p), None) => println!("{}", line(p)),
            (Progress::Stopped, Some(b)) => {
                b.set_message("stop-and-copy (device stopped)");
                b.set_position(0);
            }
            (Progress::Stopped, None) => {
                println!("source: device stopped; stop-and-copy")
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Guest memory and the device of one side, or the exit status once the
/// reason is printed (a device that cannot start is a setup error).
fn open_side(opts: &DemoOptions) -> Result<(Guest, Box<dyn VmDevice>), u8> {
    let guest = Guest::new(opts.layout()).map_err(|e| fail("guest memory", &e))?;
    match vm::open(&opts.placement, opts.kind, opts.devmem, &guest) {
        Ok(d) => Ok((guest, d)),
        Err(e) => {
            eprintln!(
                "vfpga migrate: cannot start the device: {}",
                error_chain(&e)
            );
            Err(EXIT_USAGE)
        }
    }
}

fn source(opts: &DemoOptions, addr: &str) -> u8 {
    let layout = opts.layout();
    let (guest, mut dev) = match open_side(opts) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut wl = Workload::new(layout, opts.seed, opts.descriptors);
    let mut ring = match wl.start(dev.dev(), &guest.dma) {
        Ok(r) => r,
        Err(e) => return fail("starting the workload", &LiveError::Workload(e)),
    };
    let switch_at = (opts.descriptors as f64 * opts.migrate_at) as u64;
    if let Err(e) = live::run_for(dev.dev(), &mut wl, &mut ring, opts.source.budget, switch_at) {
        return fail("workload", &e);
    }
    println!(
        "source: {} backend ({}), {} of {} descriptors verified; connecting to {addr}",
        opts.kind.name(),
        dev.describe(),
        wl.stats().verified,
        opts.descriptors
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match TcpStream::connect(addr) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                eprintln!("vfpga migrate: cannot connect to {addr}: {e}");
                return EXIT_FAILED;
            }
        }
    };
    let _ = conn.set_nodelay(true);
    let mut shown = Shown::new(layout.size + opts.devmem);
    let r = live::migrate_out_with_progress(
        dev.as_mut(),
        &guest,
        &mut wl,
        &mut ring,
        &mut conn,
        &opts.source,
        &mut |e| shown.event(e),
    );
    shown.finish();
    match r {
        Ok(rep) => {
            println!(
                "source: stop-and-copy: device {} bytes, guest {} pages (pre-copy ended: {}{}); {} descriptors verified here; the guest now runs on the destination",
                rep.stop_copy_device_bytes,
                rep.stop_copy_guest_pages,
                rep.stop_detail,
                throttle_text(&rep.throttle_steps),
                wl.stats().verified
            );
            EXIT_OK
        }
        Err(e) => {
            let code = fail("migration failed; the source device resumed", &e);
            if let Err(e) =
                live::run_for(dev.dev(), &mut wl, &mut ring, opts.source.budget, u64::MAX)
            {
                return fail("workload after the failed migration", &e);
            }
            match wl.verify_memory(dev.dev(), &guest.dma) {
                Ok(()) => println!(
                    "source: workload finished locally, {} descriptors verified, memory matches the shadow",
                    wl.stats().verified
                ),
                Err(e) => {
                    return fail(
                        "workload after the failed migration",
                        &LiveError::Workload(e),
                    );
                }
            }
            code
        }
    }
}

/// `, DMA throttled 16 after pass 1, 64 after pass 2`, or nothing.
pub fn throttle_text(steps: &[vfpga_vmm::live::ThrottleStep]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{}{} after pass {}",
                if i == 0 { ", DMA throttled " } else { ", " },
                s.value,
                s.after_pass
            )
        })
        .collect()
}

fn destination(opts: &DemoOptions, addr: &str) -> u8 {
    // The device is set up before listening, as QEMU's -incoming does.
    let (guest, dev) = match open_side(opts) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vfpga migrate: cannot listen on {addr}: {e}");
            return EXIT_USAGE;
        }
    };
    println!(
        "destination: {} backend ({}), listening on {addr}",
        opts.kind.name(),
        dev.describe()
    );
    let (mut conn, peer) = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vfpga migrate: accept: {e}");
            return EXIT_FAILED;
        }
    };
    let _ = conn.set_nodelay(true);
    let mut a = match live::migrate_in(guest, dev, &mut conn) {
        Ok(a) => a,
        Err(e) => return fail(format!("refused the migration from {peer}"), &e),
    };
    println!(
        "destination: device running after {:.3} ms of downtime ({} device bytes, {} guest pages received)",
        a.report.downtime_ms(),
        a.report.device_bytes,
        a.report.guest_pages
    );
    let before = a.workload.stats().verified;
    if let Err(e) = live::run_for(
        a.dev.dev(),
        &mut a.workload,
        &mut a.ring,
        opts.source.budget,
        u64::MAX,
    ) {
        return fail("workload after migration", &e);
    }
    if let Err(e) = a.workload.verify_memory(a.dev.dev(), &a.guest.dma) {
        return fail("final memory", &LiveError::Workload(e));
    }
    println!(
        "destination: {} descriptors verified here ({} in all); guest and device memory match the shadow\nPASS",
        a.workload.stats().verified - before,
        a.workload.stats().verified
    );
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses() {
        assert_eq!(
            parse_tcp("tcp:10.0.0.2:7777").as_deref(),
            Some("10.0.0.2:7777")
        );
        assert_eq!(parse_tcp("tcp:[::1]:7").as_deref(), Some("[::1]:7"));
        assert!(parse_tcp("10.0.0.2:7777").is_none());
        assert!(parse_tcp("tcp:host").is_none());
        assert!(parse_tcp("tcp::80").is_none());
    }
}
