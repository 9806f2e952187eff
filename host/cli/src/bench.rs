//! `vfpga bench`: runs `scripts/bench` of the source tree this binary was
//! built from (or of the tree the current directory is in), which measures
//! the baselines and the `scripts/bench.d/*` benchmarks, writes
//! `target/bench/NAME.json` and regenerates `BENCHMARKS.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::exit::{FAILED, USAGE};

/// Options of `vfpga bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Run only the benchmarks whose script name contains NAME (all when
    /// none is given; the baselines always run).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// List the benchmark names and exit.
    #[arg(long)]
    pub list: bool,
}

/// The vfpga source tree: the one this binary was built from, else the first
/// ancestor of the current directory holding `scripts/bench`.
fn source_tree() -> Option<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let here = std::env::current_dir().ok();
    std::iter::once(built)
        .chain(
            here.iter()
                .flat_map(|h| h.ancestors().map(Path::to_path_buf)),
        )
        .find(|d| d.join("scripts/bench").is_file() && d.join("scripts/bench.d").is_dir())
}

/// The benchmark script names under `scripts/bench.d`, sorted.
fn benchmarks(tree: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(tree.join("scripts/bench.d"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    Ok(v)
}

/// Runs `vfpga bench`; returns the exit status.
pub fn run(args: &BenchArgs) -> u8 {
    let Some(tree) = source_tree() else {
        eprintln!(
            "vfpga bench: no vfpga source tree found (it needs scripts/bench and cargo): \
             run it inside a checkout"
        );
        return USAGE;
    };
    let all = match benchmarks(&tree) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "vfpga bench: {}: {e}",
                tree.join("scripts/bench.d").display()
            );
            return USAGE;
        }
    };
    if args.list {
        for b in &all {
            println!("{b}");
        }
        return crate::exit::OK;
    }
    if let Some(n) = args
        .names
        .iter()
        .find(|n| !all.iter().any(|b| b.contains(n.as_str())))
    {
        eprintln!(
            "vfpga bench: no benchmark matches `{n}` (there are: {})",
            all.join(", ")
        );
        return USAGE;
    }
    let script = tree.join("scripts/bench");
    match Command::new(&script).args(&args.names).status() {
        Ok(s) if s.success() => crate::exit::OK,
        Ok(s) => {
            eprintln!("vfpga bench: {} {s}", script.display());
            FAILED
        }
        Err(e) => {
            eprintln!("vfpga bench: cannot run {}: {e}", script.display());
            USAGE
        }
    }
}
