//! `vfpga`: the one binary. It parses arguments and calls the libraries;
//! nothing here knows a register.
//!
//! Exit status: 0 success, 1 the check or migration failed, 2 usage or setup
//! error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
mod commands;
mod crosscheck;
mod demo;
mod dist;
mod doctor;
mod exit;
mod logging;
mod migrate;
mod notify;
mod outpath;
mod report;
mod serve;
mod version;

/// Host-side backend for a live-migratable PCIe FPGA device.
#[derive(Debug, Parser)]
#[command(name = "vfpga", version = version::LONG.as_str(), about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (overrides the config's log.format). The level
    /// comes from RUST_LOG when set, else the config's log.level, else info.
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    log_format: Option<logging::Format>,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand that touches a device takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file (YAML; see config/*.yaml). Loaded and checked first.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// A device form the demo and `migrate` can run (a board or a lockstep pair
/// cannot run the built-in workload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The Rust reference model.
    Model,
    /// The RTL under Verilator.
    Sim,
    /// The simulated board: the PCIe shell and the core at the TLP level
    /// under the board layer (needs scripts/setup; a few thousand cycles
    /// per second).
    Board,
}

impl BackendArg {
    /// The VMM's backend kind.
    pub fn kind(self) -> vfpga_vmm::backend::Kind {
        match self {
            BackendArg::Model => vfpga_vmm::backend::Kind::Model,
            BackendArg::Sim => vfpga_vmm::backend::Kind::Sim,
            BackendArg::Board => vfpga_vmm::backend::Kind::Board,
        }
    }
}

/// The demo's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Copies both ways, CRC32C and fills.
    Mixed,
    /// Large back-to-back writes into device memory over a 4 MiB/s link with
    /// a 20 ms downtime limit: a device that dirties faster than the link
    /// drains (converges only with auto-converge).
    DirtyDevmem,
}

/// Pre-copy knobs of `demo` and `migrate`.
#[derive(Debug, Clone, Args)]
pub struct PrecopyArgs {
    /// Pre-copy ends once the bytes left, at the bandwidth the last pass
    /// measured, would take at most this long [default: 300, or the
    /// workload's]
    #[arg(long, value_name = "MS")]
    pub downtime_limit: Option<u64>,
    /// Rate-limit the migration link to this many MiB/s (the guest runs
    /// meanwhile) [default: none, or the workload's]
    #[arg(long, value_name = "MIB_PER_S")]
    pub max_bandwidth: Option<u64>,
    /// Fallback: end pre-copy after this many passes whatever is left
    /// [default: 8]
    #[arg(long, value_name = "N")]
    pub max_passes: Option<u32>,
    /// Never throttle the device's DMA (auto-converge off): a device that
    /// dirties faster than the link drains then ends on the pass limit.
    #[arg(long)]
    pub no_auto_converge: bool,
}

impl PrecopyArgs {
    /// Applies the knobs given to `o`.
    pub fn apply(&self, o: &mut vfpga_vmm::live::SourceOptions) -> Result<(), String> {
        if let Some(ms) = self.downtime_limit {
            o.policy.downtime_limit = std::time::Duration::from_millis(ms);
        }
        if let Some(n) = self.max_passes {
            if n == 0 {
                return Err("--max-passes must be at least 1".into());
            }
            o.policy.max_passes = n;
        }
        if let Some(mib) = self.max_bandwidth {
            let bytes_per_sec = mib
                .checked_mul(1 << 20)
                .filter(|&b| b > 0)
                .ok_or("--max-bandwidth must be from 1 MiB/s to 2^44 MiB/s")?;
            let units = o.link.map_or(vfpga_vmm::live::DEVICE_UNITS_PER_SEC, |l| {
                l.device_units_per_sec
            });
            o.link = Some(vfpga_vmm::live::Link {
                bytes_per_sec,
                device_units_per_sec: units,
            });
        }
        if self.no_auto_converge {
            o.policy.auto_converge = None;
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the device to a VMM over vfio-user on a UNIX socket.
    #[command(
        after_help = "A socket file left by a server that died (nothing accepts on it) is replaced; \
                      a socket a live server accepts on is never taken (exit 2). SIGTERM and SIGINT \
                      remove the socket and exit 0. Under systemd (NOTIFY_SOCKET set), READY=1 is \
                      sent once the socket accepts."
    )]
    Serve {
        /// Configuration file (YAML; see config/*.yaml). Loaded and checked first.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Socket path to listen on (overrides the config's server.socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Live-migrate the device mid-workload and verify the results (the main job).
    Demo {
        #[command(flatten)]
        common: Common,
        /// Backend to use instead of the config's.
        #[arg(long, value_enum, value_name = "NAME")]
        backend: Option<BackendArg>,
        /// Also write the report as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw the migration timeline as SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Run the devices in this process instead of one `vfpga serve` each.
        #[arg(long)]
        in_process: bool,
        /// Instead of one migration, a chain across device forms: the
        /// workload starts on the first and live-migrates, mid-workload, to
        /// each next one (e.g. board,model,sim,board), verified bit-exact
        /// against a never-migrated run on the model.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            value_name = "FORM,FORM,...",
            conflicts_with_all = ["backend", "plot", "descriptors"]
        )]
        chain: Vec<BackendArg>,
        /// The guest workload.
        #[arg(long, value_enum, value_name = "NAME", default_value = "mixed")]
        workload: WorkloadArg,
        /// Descriptors in the workload [default: the workload's]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        descriptors: Option<u64>,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Cross-host live migration of the built-in seeded workload: run one side
    /// on each host.
    #[command(long_about = "Cross-host live migration of the built-in workload.\n\n\
                      Each side starts a fresh device (its own `vfpga serve` child, or in this \
                      process with --in-process) and guest memory. The source (--to) runs vfpga's \
                      seeded DMA workload on it, live-migrates device, guest memory and workload \
                      part-way to the destination over TCP, and the destination (--incoming) \
                      resumes and finishes the workload, verifying every completion and the final \
                      memory.\n\n\
                      It does not migrate a device that some other VMM is using: to migrate a VM, \
                      migrate the VMM (see docs/attach-to-qemu.md).")]
    Migrate {
        #[command(flatten)]
        common: Common,
        /// Source side: send to tcp:HOST:PORT.
        #[arg(long, value_name = "tcp:HOST:PORT", conflicts_with = "incoming")]
        to: Option<String>,
        /// Destination side: listen on tcp:ADDR:PORT.
        #[arg(long, value_name = "tcp:ADDR:PORT")]
        incoming: Option<String>,
        /// Backend to use instead of the config's.
        #[arg(long, value_enum, value_name = "NAME")]
        backend: Option<BackendArg>,
        /// Run the device in this process instead of a `vfpga serve` child.
        #[arg(long)]
        in_process: bool,
        #[command(flatten)]
        precopy: PrecopyArgs,
    },
    /// Cross-check the reference model against the RTL in lockstep, or merge
    /// the JSON summaries of shards.
    Crosscheck {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crosscheck::CrosscheckArgs,
    },
    /// Check this host for board use and explain each finding.
    #[command(
        after_help = "Exit status: 0 every finding ok, a warning or skipped; 1 at least one failure; \
                      2 usage or setup error (a bad --config included)."
    )]
    Doctor {
        #[command(flatten)]
        common: Common,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the benchmarks: scripts/bench of the source tree this binary was
    /// built in (needs that tree and cargo); regenerates BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Write shell completions and the man pages, generated from this
    /// command line's definition.
    #[command(hide = true)]
    Dist {
        /// Output directory (completions/ and man/ go under it).
        #[arg(long, value_name = "DIR", default_value = "target/dist")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    let code = match cli.command {
        Command::Serve { config, socket } => commands::serve(&config, socket, log_format),
        Command::Demo {
            common,
            json,
            in_process,
            chain,
            ..
        } if !chain.is_empty() => commands::chain(&common, log_format, &chain, json, in_process),
        Command::Demo {
            common,
            backend,
            json,
            plot,
            in_process,
            workload,
            descriptors,
            precopy,
            ..
        } => commands::demo(
            &common,
            log_format,
            backend,
            json,
            plot,
            in_process,
            (workload, descriptors, &precopy),
        ),
        Command::Migrate {
            common,
            to,
            incoming,
            backend,
            in_process,
            precopy,
        } => commands::migrate(
            &common, log_format, to, incoming, backend, in_process, &precopy,
        ),
        Command::Crosscheck { common, args } => commands::crosscheck(&common, log_format, &args),
        Command::Doctor { common, json } => commands::doctor(&common, json),
        Command::Bench(args) => bench::run(&args),
        Command::Dist { out } => commands::dist(&out),
    };
    ExitCode::from(code)
}
