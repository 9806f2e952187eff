//! `vfpga demo`: live migration of the device mid-workload (see
//! `vfpga_vmm::demo`).

use std::path::Path;

use vfpga_config::{Backend, Config};
use vfpga_vmm::backend::Kind;
use vfpga_vmm::demo::{self, DemoOptions};
use vfpga_vmm::vm::Placement;

use crate::BackendArg;
use crate::exit::{FAILED as EXIT_FAILED, OK as EXIT_OK, USAGE as EXIT_USAGE};

/// Runs the demo and prints the report; returns the exit status.
pub fn run(
    cfg: Option<&Config>,
    backend: Option<BackendArg>,
    json: Option<&Path>,
    plot: Option<&Path>,
    in_process: bool,
    (workload, descriptors): (crate::WorkloadArg, Option<u64>),
    precopy: &crate::PrecopyArgs,
) -> u8 {
    // Output files are checked before the run, not after it.
    for p in json.iter().chain(plot.iter()) {
        if let Err(e) = crate::outpath::check_file(p) {
            eprintln!("vfpga demo: {e}");
            return EXIT_USAGE;
        }
    }
    let kind = match backend {
        Some(b) => b.kind(),
        None => match cfg.map(|c| c.backend.value) {
            None | Some(Backend::Sim) => Kind::Sim,
            Some(Backend::Model) => Kind::Model,
            Some(Backend::Board)
                if cfg.is_some_and(|c| c.board.as_ref().is_some_and(|b| b.simulated.is_some())) =>
            {
                Kind::Board
            }
            Some(other) => {
                eprintln!(
                    "vfpga demo: backend `{}` cannot run the demo; use a model or sim config, or --backend",
                    other.name()
                );
                return EXIT_USAGE;
            }
        },
    };
    let mut opts = match workload {
        crate::WorkloadArg::Mixed => {
            let devmem = cfg.map(|c| c.device.devmem_size.value.0).unwrap_or(1 << 20);
            DemoOptions::new(kind, devmem)
        }
        // Its own device and guest sizes: the figures it is built around.
        crate::WorkloadArg::DirtyDevmem => DemoOptions::dirty(kind),
    };
    if let Err(e) = precopy.apply(&mut opts.source) {
        eprintln!("vfpga demo: {e}");
        return EXIT_USAGE;
    }
    if let Some(n) = descriptors {
        opts.descriptors = n;
    }
    let devmem = opts.devmem;
    opts.placement = match Placement::for_cli(in_process) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vfpga demo: {e}");
            return EXIT_USAGE;
        }
    };
    println!(
        "vfpga demo: {} backend, {} KiB device memory, {} descriptors ({}), {}; reference run, then live migration over TCP",
        kind.name(),
        devmem >> 10,
        opts.descriptors,
        opts.mix.name(),
        opts.placement.describe()
    );
    let p = &opts.source.policy;
    println!(
        "pre-copy: downtime limit {} ms, link {}, at most {} passes, auto-converge {}",
        p.downtime_limit.as_millis(),
        opts.source
            .link
            .map_or("unlimited".to_string(), |l| format!(
                "{} MiB/s",
                l.bytes_per_sec >> 20
            )),
        p.max_passes,
        if p.auto_converge.is_some() {
            "on"
        } else {
            "off"
        }
    );
    let report = match demo::run(&opts) {
        Ok(r) => r,
        Err(e) => return could_not_run(&e),
    };
    print!("{}", crate::report::text(&report));
    if let Some(p) = json
        && let Err(code) = write_json(p, &report)
    {
        return code;
    }
    if let Some(p) = plot
        && let Err(e) = std::fs::write(p, crate::report::svg(&report))
    {
        eprintln!("vfpga demo: cannot write {}: {e}", p.display());
        return EXIT_USAGE;
    }
    if report.pass { EXIT_OK } else { EXIT_FAILED }
}

/// Runs `vfpga demo --chain` and prints each hop; returns the exit status.
pub fn chain(forms: &[BackendArg], json: Option<&Path>, in_process: bool) -> u8 {
    use vfpga_vmm::chain::{self, ChainOptions};
    if let Some(p) = json
        && let Err(e) = crate::outpath::check_file(p)
    {
        eprintln!("vfpga demo: {e}");
        return EXIT_USAGE;
    }
    let mut o = ChainOptions::new(forms.iter().map(|b| b.kind()).collect());
    o.placement = match Placement::for_cli(in_process) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vfpga demo: {e}");
            return EXIT_USAGE;
        }
    };
    let names: Vec<&str> = o.kinds.iter().map(|k| k.name()).collect();
    println!(
        "vfpga demo: chain {}, {} KiB device memory, {} descriptors, {}; reference run on the model",
        names.join(" -> "),
        o.devmem >> 10,
        o.descriptors,
        o.placement.describe()
    );
    let r = match chain::run(&o) {
        Ok(r) => r,
        Err(e) => return could_not_run(&e),
    };
    for h in &r.hops {
        println!(
            "  {} -> {} at descriptor {} (stopped at {} of {}): {} pre-copy passes ({}), {} device bytes in stop-and-copy, downtime {:.3} ms",
            h.from,
            h.to,
            h.at_descriptor,
            h.verified_at_stop,
            r.descriptors,
            h.passes,
            h.stop_reason,
            h.stop_copy_device_bytes,
            h.downtime_ms
        );
    }
    println!(
        "  verified {} of {} descriptors against the shadow; completion interrupts {} of {}; {:.1} s",
        r.verified,
        r.descriptors,
        r.irqs_received,
        r.irqs_wanted,
        r.total_ms / 1000.0
    );
    match &r.failure {
        None => println!(
            "PASS: guest memory and device memory after {} equal the never-migrated model run byte for byte",
            names.join(" -> ")
        ),
        Some(f) => println!("FAIL: {f}"),
    }
    if let Some(p) = json
        && let Err(code) = write_json(p, &r)
    {
        return code;
    }
    if r.pass { EXIT_OK } else { EXIT_FAILED }
}

fn could_not_run(e: &vfpga_vmm::live::LiveError) -> u8 {
    eprintln!(
        "vfpga demo: could not run: {}",
        vfpga_device::error_chain(e)
    );
    EXIT_USAGE
}

/// Writes `report` as pretty JSON to `p`; the exit status on failure.
fn write_json(p: &Path, report: &impl serde::Serialize) -> Result<(), u8> {
    let t = serde_json::to_string_pretty(report).map_err(|e| {
        eprintln!("vfpga demo: cannot encode the report: {e}");
        EXIT_USAGE
    })?;
    std::fs::write(p, t + "\n").map_err(|e| {
        eprintln!("vfpga demo: cannot write {}: {e}", p.display());
        EXIT_USAGE
    })
}
