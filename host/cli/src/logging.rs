//! The `tracing` subscriber of every subcommand: text or JSON lines on
//! stderr, filtered by `RUST_LOG` when set, else by the config's `log.level`.

use clap::ValueEnum;
use vfpga_config::{Config, LogFormat};

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

impl From<LogFormat> for Format {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Format::Text,
            LogFormat::Json => Format::Json,
        }
    }
}

/// Installs the subscriber. The command line's `--log-format` wins over the
/// config's `log.format`; `RUST_LOG` (a `tracing` filter such as
/// `vfpga_vfio_user=debug,info`) wins over `log.level`.
pub fn init(cfg: Option<&Config>, format: Option<Format>) {
    let level = cfg.map_or("info", |c| c.log.level.name());
    let format = format
        .or_else(|| cfg.map(|c| c.log.format.into()))
        .unwrap_or(Format::Text);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling twice) keeps the first subscriber.
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}
