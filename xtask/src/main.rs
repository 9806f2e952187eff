//! `cargo xtask regen [--check]`: generates the register map everywhere from
//! `bitstream-docs/regmap.yaml`.
//!
//! Outputs (each starts with a stamp carrying the SHA-256 of the source):
//! - `host/regs/src/generated.rs`: Rust offsets, fields, bitflags, enums and the state layout;
//! - `rtl/generated/vfpga_regs.vh`: the Verilog include the RTL decodes with;
//! - `bitstream-docs/registers.md`: the register reference.
//!
//! With `--check` nothing is written; the command fails naming every stale file.

mod bench;
mod emit;
mod schema;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// The source file could not be read or an output written.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not parse.
    #[error("{path}: {source}")]
    Yaml {
        /// File concerned.
        path: PathBuf,
        /// Parser error (with line and column).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The register map parsed but is inconsistent.
    #[error("{path}: {msg}")]
    Invalid {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Paths of the generated files, relative to the workspace root.
pub const OUT_RUST: &str = "host/regs/src/generated.rs";
/// Verilog include.
pub const OUT_VERILOG: &str = "rtl/generated/vfpga_regs.vh";
/// Markdown reference.
pub const OUT_MARKDOWN: &str = "bitstream-docs/registers.md";
/// The single source.
pub const SOURCE: &str = "bitstream-docs/regmap.yaml";

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

fn usage() -> ExitCode {
    eprintln!("usage: cargo xtask regen [--check] | baselines | bench-report");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => return usage(),
    };
    let root = workspace_root();
    let bench_dir = root.join("target/bench");
    match (cmd, rest) {
        ("baselines", []) => {
            return match bench::baselines(&bench_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: baselines: {e}");
                    ExitCode::from(1)
                }
            };
        }
        ("bench-report", []) => {
            return match bench::report(&bench_dir, &root.join("BENCHMARKS.md")) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: bench-report: {e}");
                    ExitCode::from(1)
                }
            };
        }
        ("regen", _) => {}
        _ => return usage(),
    }
    let check = match rest {
        [] => false,
        [f] if f == "--check" => true,
        _ => return usage(),
    };
    match regen(&root, check) {
        Ok(stale) if stale.is_empty() => {
            if check {
                println!("generated files are up to date with {SOURCE}");
            }
            ExitCode::SUCCESS
        }
        Ok(stale) => {
            for f in &stale {
                eprintln!(
                    "error: stale generated file: {f} (does not match {SOURCE}; run scripts/regen)"
                );
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Generates all outputs; writes them unless `check`, and returns the list of
/// files that were (or, with `check`, would be) changed.
fn regen(root: &Path, check: bool) -> Result<Vec<String>, XtaskError> {
    let src_path = root.join(SOURCE);
    let text = std::fs::read_to_string(&src_path).map_err(|source| XtaskError::Io {
        path: src_path.clone(),
        source,
    })?;
    let map: schema::RegMap = serde_saphyr::from_str(&text).map_err(|e| XtaskError::Yaml {
        path: src_path.clone(),
        source: Box::new(e),
    })?;
    let digest = Sha256::digest(text.as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let model = schema::resolve(map).map_err(|msg| XtaskError::Invalid {
        path: src_path.clone(),
        msg,
    })?;
    let outputs = [
        (OUT_RUST, emit::rust(&model, &hash)),
        (OUT_VERILOG, emit::verilog(&model, &hash)),
        (OUT_MARKDOWN, emit::markdown(&model, &hash)),
    ];
    let mut changed = Vec::new();
    for (rel, content) in outputs {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != content {
            changed.push(rel.to_string());
            if !check {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| XtaskError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                std::fs::write(&path, content).map_err(|source| XtaskError::Io {
                    path: path.clone(),
                    source,
                })?;
                println!("wrote {rel}");
            }
        }
    }
    if check { Ok(changed) } else { Ok(Vec::new()) }
}
