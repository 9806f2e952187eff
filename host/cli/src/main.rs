//! `vfpga`: the one binary. It parses arguments and calls the libraries;
//! nothing here knows a register.
//!
//! Exit status: 0 success, 1 the check or migration failed, 2 usage or setup
//! error (including "not implemented yet").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod commands;
mod crosscheck;
mod demo;
mod doctor;
mod migrate;
mod serve;

/// Host-side backend for a live-migratable PCIe FPGA device.
#[derive(Debug, Parser)]
#[command(name = "vfpga", version, about, long_about = None)]
struct Cli {
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the device to a VMM over vfio-user on a UNIX socket.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Socket path to listen on (overrides the config's server.socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Live-migrate the device mid-workload and verify the results (the main job).
    Demo {
        #[command(flatten)]
        common: Common,
        /// Backend to use instead of the config's: model or sim.
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// Also write the report as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw the migration timeline as SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Run the devices in this process instead of one `vfpga serve` each.
        #[arg(long)]
        in_process: bool,
    },
    /// Migrate a device between hosts over TCP.
    Migrate {
        #[command(flatten)]
        common: Common,
        /// Source side: send to tcp:HOST:PORT.
        #[arg(long, value_name = "tcp:HOST:PORT", conflicts_with = "incoming")]
        to: Option<String>,
        /// Destination side: listen on tcp:ADDR:PORT.
        #[arg(long, value_name = "tcp:ADDR:PORT")]
        incoming: Option<String>,
        /// Backend to use instead of the config's: model or sim.
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// Run the device in this process instead of a `vfpga serve` child.
        #[arg(long)]
        in_process: bool,
    },
    /// Cross-check the reference model against the RTL in lockstep.
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
    /// Run benchmarks (same as scripts/bench).
    Bench {
        /// Benchmark names (all when empty).
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { common, socket } => commands::serve(&common, socket),
        Command::Demo {
            common,
            backend,
            json,
            plot,
            in_process,
        } => commands::demo(&common, backend, json, plot, in_process),
        Command::Migrate {
            common,
            to,
            incoming,
            backend,
            in_process,
        } => commands::migrate(&common, to, incoming, backend, in_process),
        Command::Crosscheck { common, args } => commands::crosscheck(&common, &args),
        Command::Doctor { common, json } => commands::doctor(&common, json),
        Command::Bench { names } => commands::bench(&names),
    };
    ExitCode::from(code)
}
