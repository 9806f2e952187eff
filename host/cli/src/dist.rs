//! Shell completions (bash, zsh, fish) and man pages (one per subcommand),
//! generated from the clap definition so they never drift from `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Writes `OUT/completions/{vfpga.bash,_vfpga,vfpga.fish}` and
/// `OUT/man/man1/vfpga*.1` (so `MANPATH=OUT/man` finds them); returns the
/// files written.
pub fn write(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let comp = out.join("completions");
    std::fs::create_dir_all(&comp)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::Cli::command();
        written.push(clap_complete::generate_to(shell, &mut cmd, "vfpga", &comp)?);
    }
    let man = out.join("man/man1");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_follow_the_cli() {
        let out = std::env::temp_dir().join(format!("vfpga-dist-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let files = write(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 3 + 7, "{files:?}");
        let bash = std::fs::read_to_string(out.join("completions/vfpga.bash"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(bash.contains("--incoming") && bash.contains("crosscheck"));
        let serve = std::fs::read_to_string(out.join("man/man1/vfpga-serve.1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(serve.contains("config"), "{serve}");
        assert!(!out.join("man/man1/vfpga-dist.1").exists());
        let _ = std::fs::remove_dir_all(&out);
    }
}
