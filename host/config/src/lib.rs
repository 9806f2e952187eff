//! vfpga configuration: one strict YAML loader, [`load`].
//!
//! Strict means: unknown keys and duplicate keys are errors, and every error
//! names the file, the line and the column. Parsing uses `serde-saphyr` (pure
//! Rust, maintained, rejects duplicate keys); `serde_yaml` is deprecated and
//! unmaintained, and `serde_yml` carries an unsoundness advisory.
//!
//! ```yaml
//! backend: sim            # model | sim | lockstep | board
//! device:
//!   devmem_size: 1MiB     # bytes (or KiB/MiB suffix); power of two, 4 KiB ..= 256 MiB
//! sim:
//!   clock: free-running   # free-running | explicit
//! server:
//!   socket: /tmp/vfpga.sock
//! log:
//!   level: info           # trace | debug | info | warn | error | off
//!   format: text          # text | json
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Smallest device memory (one page).
pub const MIN_DEVMEM: u64 = 4096;
/// Largest device memory (the architecture's limit, 256 MiB).
pub const MAX_DEVMEM: u64 = 256 << 20;
/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Which form of the device to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The Rust reference model (`vfpga-model`).
    Model,
    /// The RTL under Verilator (`vfpga-sim`).
    Sim,
    /// Model and RTL in lockstep (the `lockstep` section chooses).
    Lockstep,
    /// A board through VFIO (`vfpga-hw`; the `board` section is required).
    Board,
}

impl Backend {
    /// Name as written in config files.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Model => "model",
            Backend::Sim => "sim",
            Backend::Lockstep => "lockstep",
            Backend::Board => "board",
        }
    }
}

/// A byte size: an integer, or a string with a `KiB`, `MiB` or `GiB` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a size (use bytes, or a number with KiB, MiB or GiB)"
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .iter()
        .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n.trim(), *m)))
        .unwrap_or((s, 1));
    let n = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse::<u64>().ok()?
    };
    n.checked_mul(mul)
}

/// The device instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device memory (BAR2) size in bytes.
    #[serde(default = "default_devmem")]
    pub devmem_size: Spanned<ByteSize>,
    /// DMA write-log window of the device, in pages.
    #[serde(default = "default_dmalog")]
    pub dmalog_max_pages: Spanned<u32>,
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(
        v,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}
fn default_devmem() -> Spanned<ByteSize> {
    spanned(ByteSize(1 << 20))
}
fn default_dmalog() -> Spanned<u32> {
    spanned(65536)
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            devmem_size: default_devmem(),
            dmalog_max_pages: default_dmalog(),
        }
    }
}

impl DeviceConfig {
    /// Device memory in 4 KiB pages.
    pub fn devmem_pages(&self) -> u32 {
        (self.devmem_size.value.0 / 4096) as u32
    }
}

/// How the simulator is clocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// The simulator thread clocks while the device is busy and sleeps while idle.
    #[default]
    FreeRunning,
    /// The caller advances the clock (deterministic).
    Explicit,
}

/// Simulator backend options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Clocking mode.
    #[serde(default)]
    pub clock: Clock,
    /// Write a VCD waveform of the run to this file.
    #[serde(default)]
    pub vcd: Option<PathBuf>,
}

/// Which two devices run in lockstep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockstepConfig {
    /// The reference side (usually `model`).
    pub reference: Backend,
    /// The side checked against it (`sim` or `board`).
    pub checked: Backend,
}

/// What a board must report before vfpga uses it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedIds {
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// RTL_VERSION register (major.minor.patch as 0x00MMmmpp).
    pub rtl_version: u32,
}

/// A board bound to vfio-pci, or the simulated board (the PCIe shell and
/// the core simulated at the TLP level): exactly one of `pci_address` and
/// `simulated`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// PCI address, `DDDD:BB:DD.F` (a real board).
    #[serde(default)]
    pub pci_address: Option<Spanned<String>>,
    /// IOMMU group number (checked against sysfs when given).
    #[serde(default)]
    pub iommu_group: Option<u32>,
    /// Identity the bitstream must report.
    pub expected: ExpectedIds,
    /// The simulated board instead of a real one.
    #[serde(default)]
    pub simulated: Option<SimulatedBoard>,
}

impl BoardConfig {
    /// The board's name in messages: its PCI address, or `simulated board`.
    pub fn name(&self) -> &str {
        match &self.pci_address {
            Some(a) => a.value.as_str(),
            None => "simulated board",
        }
    }
}

/// How to start the simulated board (`board.simulated`). Relative paths are
/// taken from the vfpga source tree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedBoard {
    /// The Python with cocotb (default `.venv/bin/python`, made by
    /// `scripts/setup`).
    #[serde(default)]
    pub python: Option<PathBuf>,
    /// The launcher (default `rtl/shell/usp/tb/board.py`).
    #[serde(default)]
    pub launcher: Option<PathBuf>,
    /// Where the simulator build is cached (default `target/simboard`).
    #[serde(default)]
    pub build_dir: Option<PathBuf>,
    /// The shell's WRITE_CONFIRM parameter (default true).
    #[serde(default)]
    pub write_confirm: Option<bool>,
}

/// vfio-user server options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// UNIX socket path to listen on (the command line's `--socket` wins).
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// A log level (the `tracing` levels, and `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Something worth a look.
    Warn,
    /// Failures only.
    Error,
    /// No logs.
    Off,
}

impl LogLevel {
    /// Name as written in config files (and understood by `RUST_LOG`).
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Off => "off",
        }
    }
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging options. `RUST_LOG` (a `tracing` filter, e.g.
/// `vfpga_vfio_user=debug,info`) overrides `level` when set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level: `trace`, `debug`, `info`, `warn`, `error` or `off`.
    #[serde(default)]
    pub level: LogLevel,
    /// Format: `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which form of the device.
    pub backend: Spanned<Backend>,
    /// The device instance.
    #[serde(default)]
    pub device: DeviceConfig,
    /// Simulator options.
    #[serde(default)]
    pub sim: SimConfig,
    /// Lockstep pair (backend `lockstep`).
    #[serde(default)]
    pub lockstep: Option<LockstepConfig>,
    /// Board (backend `board`).
    #[serde(default)]
    pub board: Option<BoardConfig>,
    /// vfio-user server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Errors of [`load`] and [`parse`]. Each names the file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path}: config is {size} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// YAML syntax, unknown or duplicate key, wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong.
        message: String,
        /// The parser's error.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A value parsed but is not acceptable.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text, path)
}

fn strip_location_prefix(msg: &str) -> String {
    // serde-saphyr renders "error: line L column C: message"; we print the
    // location ourselves in file:line:column form.
    let m = msg.trim_start_matches("error: ");
    let m = match m.find(": ") {
        Some(i) if m.starts_with("line ") => &m[i + 2..],
        _ => m,
    };
    let m = match m.rfind(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    m.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .trim()
        .to_string()
}

/// Messages of the parser that name its internals rather than the file,
/// and what a person reads instead.
const PLAIN_WORDS: &[(&str, &str)] = &[
    ("unknown variant", "unknown value"),
    (
        "externally tagged enum expected scalar or mapping",
        "expected one name here (like `sim` or `info`), not a list",
    ),
    (
        "did not find expected key",
        "did not find the expected key (check the indentation of this line and the one above)",
    ),
];

fn parse_error(e: serde_saphyr::Error, path: &Path, syntax: bool) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = strip_location_prefix(&e.without_snippet().to_string());
    for (from, to) in PLAIN_WORDS {
        message = message.replace(from, to);
    }
    if syntax {
        message = format!("YAML syntax error: {message}");
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
        source: Box::new(e),
    }
}

/// Parses and validates config text; `path` is used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    // Syntax first, on its own: a typed parse reports a broken line as
    // whatever the type expected at that point.
    serde_saphyr::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| parse_error(e, path, true))?;
    let cfg: Config = serde_saphyr::from_str(text).map_err(|e| parse_error(e, path, false))?;
    validate(&cfg, path)?;
    Ok(cfg)
}

fn invalid<T>(
    path: &Path,
    at: &Spanned<T>,
    key: &'static str,
    message: String,
) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        path: path.to_path_buf(),
        line: at.referenced.line(),
        column: at.referenced.column(),
        key,
        message,
    })
}

fn validate(cfg: &Config, path: &Path) -> Result<(), ConfigError> {
    let size = cfg.device.devmem_size.value.0;
    if !size.is_power_of_two() || !(MIN_DEVMEM..=MAX_DEVMEM).contains(&size) {
        return invalid(
            path,
            &cfg.device.devmem_size,
            "device.devmem_size",
            format!("{size} is not a power of two between 4 KiB and 256 MiB"),
        );
    }
    let pages = cfg.device.dmalog_max_pages.value;
    if pages == 0 || pages > 65536 || !pages.is_multiple_of(32) {
        return invalid(
            path,
            &cfg.device.dmalog_max_pages,
            "device.dmalog_max_pages",
            format!("{pages} is not a multiple of 32 between 32 and 65536"),
        );
    }
    match cfg.backend.value {
        Backend::Board if cfg.board.is_none() => {
            return invalid(
                path,
                &cfg.backend,
                "backend",
                "backend `board` needs a `board:` section (see config/board.example.yaml)".into(),
            );
        }
        Backend::Lockstep if cfg.lockstep.is_none() => {
            return invalid(
                path,
                &cfg.backend,
                "backend",
                "backend `lockstep` needs a `lockstep:` section (see config/lockstep.yaml)".into(),
            );
        }
        _ => {}
    }
    if let Some(l) = &cfg.lockstep
        && (l.reference == Backend::Lockstep || l.checked == Backend::Lockstep)
    {
        return invalid(
            path,
            &cfg.backend,
            "lockstep",
            "a lockstep side cannot itself be `lockstep`".into(),
        );
    }
    if let Some(b) = &cfg.board {
        match (&b.pci_address, &b.simulated) {
            (Some(a), None) if !is_pci_address(&a.value) => {
                return invalid(
                    path,
                    a,
                    "board.pci_address",
                    format!("`{}` is not a PCI address like 0000:01:00.0", a.value),
                );
            }
            (Some(a), Some(_)) => {
                return invalid(
                    path,
                    a,
                    "board",
                    "give either `pci_address` (a real board) or `simulated` (the simulated board), not both"
                        .into(),
                );
            }
            (None, None) => {
                return invalid(
                    path,
                    &cfg.backend,
                    "board",
                    "the `board:` section needs `pci_address` (a real board) or `simulated: {}` (the simulated board)"
                        .into(),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `s` has the form `DDDD:BB:DD.F` (hex digits).
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[11])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Result<Config, ConfigError> {
        parse(t, Path::new("test.yaml"))
    }

    #[test]
    fn shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        for f in [
            "sim.yaml",
            "model.yaml",
            "lockstep.yaml",
            "board.example.yaml",
        ] {
            let c = load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(c.device.devmem_pages() >= 1, "{f}");
        }
    }

    #[test]
    fn misspelled_key_names_key_file_and_line() {
        let e = p("backend: sim\ndevice:\n  devmem_szie: 4096\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.yaml:3:3: "), "{s}");
        assert!(s.contains("devmem_szie"), "{s}");
    }

    #[test]
    fn duplicate_key_is_rejected_with_position() {
        let e = p("backend: sim\nbackend: model\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.yaml:2:"), "{s}");
        assert!(s.contains("duplicate"), "{s}");
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let e = p("backend: sim\ndevice:\n  devmem_size: 3000\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.yaml:3:16: device.devmem_size"), "{s}");
        let e = p("backend: board\n").unwrap_err();
        assert!(e.to_string().contains("needs a `board:` section"), "{e}");
        let e = p(
            "backend: board\nboard:\n  pci_address: 01:00.0\n  expected: {vendor_id: 1, device_id: 2, rtl_version: 3}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("test.yaml:3:16: board.pci_address"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_say_so_with_line_and_column() {
        let e = p("backend: [sim\n").unwrap_err().to_string();
        assert!(e.starts_with("test.yaml:"), "{e}");
        assert!(e.contains("YAML syntax error"), "{e}");
        assert!(!e.contains("externally tagged"), "{e}");
        let e = p("backend: sim\ndevice:\n  devmem_size: 1MiB\n log:\n  level: info\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml:4:2: YAML syntax error"), "{e}");
        assert!(e.contains("indentation"), "{e}");
        let e = p("backend:\n  - sim\n").unwrap_err().to_string();
        assert!(
            e.starts_with("test.yaml:2:3: expected one name here"),
            "{e}"
        );
    }

    #[test]
    fn log_level_and_format_take_only_their_names() {
        let e = p("backend: sim\nlog:\n  level: loud\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml:3:10: unknown value `loud`"), "{e}");
        assert!(e.contains("trace, debug, info, warn, error, off"), "{e}");
        let c = p("backend: sim\nlog:\n  level: off\n  format: json\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.log.level, c.log.format),
            (LogLevel::Off, LogFormat::Json)
        );
        assert!(p("backend: sim\nlog:\n  format: xml\n").is_err());
        let c = p("backend: sim\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.log.level, c.log.format),
            (LogLevel::Info, LogFormat::Text)
        );
    }

    #[test]
    fn sizes_accept_suffixes() {
        let c = p("backend: model\ndevice:\n  devmem_size: 256MiB\n").unwrap();
        assert_eq!(c.device.devmem_size.value.0, 256 << 20);
        assert!(p("backend: model\ndevice:\n  devmem_size: 512MiB\n").is_err());
        assert!(p("backend: model\ndevice:\n  devmem_size: lots\n").is_err());
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        for t in [
            "",
            "[",
            "backend: [1,2",
            "&a [*a]",
            "backend: !!binary x",
            "\0\0",
            "- - - -",
        ] {
            let _ = p(t);
        }
    }

    #[test]
    fn pci_address_shape() {
        assert!(is_pci_address("0000:01:00.0"));
        assert!(!is_pci_address("0000:01:00.8"));
        assert!(!is_pci_address("01:00.0"));
    }
}
