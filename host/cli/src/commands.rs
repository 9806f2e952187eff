//! Subcommand bodies. Each loads and checks `--config` first, so a bad config
//! is reported before anything runs.

use std::path::{Path, PathBuf};

use vfpga_config::Config;

use crate::exit::USAGE;
use crate::logging::{self, Format};
use crate::{BackendArg, Common};

/// Loads `--config` if given. On error prints one line and returns the exit status.
fn load_config(common: &Common) -> Result<Option<Config>, u8> {
    common.config.as_deref().map(load).transpose()
}

fn load(p: &Path) -> Result<Config, u8> {
    vfpga_config::load(p).map_err(|e| {
        eprintln!("vfpga: {e}");
        USAGE
    })
}

/// `vfpga serve`.
pub fn serve(config: &Path, socket: Option<PathBuf>, log_format: Option<Format>) -> u8 {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(Some(&cfg), log_format);
    crate::serve::run(&cfg, socket)
}

/// `vfpga demo`.
pub fn demo(
    common: &Common,
    log_format: Option<Format>,
    backend: Option<BackendArg>,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    in_process: bool,
    (workload, descriptors, precopy): (crate::WorkloadArg, Option<u64>, &crate::PrecopyArgs),
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.as_ref(), log_format);
    crate::demo::run(
        cfg.as_ref(),
        backend,
        json.as_deref(),
        plot.as_deref(),
        in_process,
        (workload, descriptors),
        precopy,
    )
}

/// `vfpga demo --chain`.
pub fn chain(
    common: &Common,
    log_format: Option<Format>,
    chain: &[BackendArg],
    json: Option<PathBuf>,
    in_process: bool,
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.as_ref(), log_format);
    crate::demo::chain(chain, json.as_deref(), in_process)
}

/// `vfpga migrate`.
pub fn migrate(
    common: &Common,
    log_format: Option<Format>,
    to: Option<String>,
    incoming: Option<String>,
    backend: Option<BackendArg>,
    in_process: bool,
    precopy: &crate::PrecopyArgs,
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.as_ref(), log_format);
    crate::migrate::run(
        cfg.as_ref(),
        common.config.as_deref(),
        backend,
        to.as_deref(),
        incoming.as_deref(),
        in_process,
        precopy,
    )
}

/// `vfpga crosscheck`.
pub fn crosscheck(
    common: &Common,
    log_format: Option<Format>,
    args: &crate::crosscheck::CrosscheckArgs,
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(cfg.as_ref(), log_format);
    crate::crosscheck::run(cfg.as_ref(), args)
}

/// `vfpga doctor`.
pub fn doctor(common: &Common, json: bool) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::doctor::doctor(cfg.as_ref(), json)
}

/// `vfpga dist`: shell completions and man pages from the command line's
/// definition.
pub fn dist(out: &Path) -> u8 {
    match crate::dist::write(out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            crate::exit::OK
        }
        Err(e) => {
            eprintln!("vfpga dist: {}: {e}", out.display());
            crate::exit::FAILED
        }
    }
}
