//! Subcommand bodies. Each loads and checks `--config` first, so a bad config
//! is reported even by a subcommand that is not built yet.

use std::path::PathBuf;

use vfpga_config::Config;

use crate::Common;

/// Exit status: success.
#[allow(dead_code)]
pub const EXIT_OK: u8 = 0;
/// Exit status: the check or migration failed.
#[allow(dead_code)]
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage or setup error (including "not implemented yet").
pub const EXIT_USAGE: u8 = 2;

/// Loads `--config` if given. On error prints one line and returns the exit status.
fn load_config(common: &Common) -> Result<Option<Config>, u8> {
    match &common.config {
        None => Ok(None),
        Some(p) => match vfpga_config::load(p) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                eprintln!("vfpga: {e}");
                Err(EXIT_USAGE)
            }
        },
    }
}

fn init_logging(cfg: Option<&Config>) {
    let level = cfg
        .map(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `vfpga serve`.
pub fn serve(common: &Common, socket: Option<PathBuf>) -> u8 {
    let cfg = match load_config(common) {
        Ok(Some(c)) => c,
        Ok(None) => {
            crate::serve::usage();
            return EXIT_USAGE;
        }
        Err(code) => return code,
    };
    init_logging(Some(&cfg));
    crate::serve::run(&cfg, socket)
}

/// `vfpga demo`.
pub fn demo(
    common: &Common,
    backend: Option<String>,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    in_process: bool,
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.as_ref());
    crate::demo::run(
        cfg.as_ref(),
        backend.as_deref(),
        json.as_deref(),
        plot.as_deref(),
        in_process,
    )
}

/// `vfpga migrate`.
pub fn migrate(
    common: &Common,
    to: Option<String>,
    incoming: Option<String>,
    backend: Option<String>,
    in_process: bool,
) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.as_ref());
    crate::migrate::run(
        cfg.as_ref(),
        backend.as_deref(),
        to.as_deref(),
        incoming.as_deref(),
        in_process,
    )
}

/// `vfpga crosscheck`.
pub fn crosscheck(common: &Common, args: &crate::crosscheck::CrosscheckArgs) -> u8 {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.as_ref());
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

/// `vfpga bench`.
pub fn bench(_names: &[String]) -> u8 {
    eprintln!("vfpga bench: run scripts/bench [NAME...] (it drives the criterion benches)");
    EXIT_USAGE
}
