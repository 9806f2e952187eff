//! Shell completions (bash, zsh, fish) and man pages (one per subcommand),
//! generated from the clap definition so they never drift from `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Writes `OUT/completions/{vfpga.bash,_vfpga,vfpga.fish}` and
/// `OUT/man/vfpga*.1`; returns the files written.
pub fn write(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let comp = out.join("completions");
    std::fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::Cli::command();
        written.push(clap_complete::generate_to(shell, &mut cmd, "vfpga", &comp)?);
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let cmd = crate::Cli::command();
    clap_mangen::generate_to(cmd, &man)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    written.extend(pages);
    Ok(written)
}
