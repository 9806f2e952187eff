//! Output paths checked before a long run, not after it.

use std::path::{Path, PathBuf};

/// Why an output path cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutPathError {
    /// The parent directory does not exist.
    #[error("{path}: directory {dir} does not exist")]
    NoDir {
        /// The output file.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
    },
    /// The path names a directory where a file is wanted.
    #[error("{0}: is a directory")]
    IsDir(PathBuf),
    /// A file cannot be created in the directory.
    #[error("{dir}: cannot write there: {source}")]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// What creating a probe file there said.
        #[source]
        source: std::io::Error,
    },
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that a file can be created in `dir` by creating and removing one.
pub fn writable_dir(dir: &Path) -> Result<(), OutPathError> {
    if !dir.is_dir() {
        return Err(OutPathError::NoDir {
            path: dir.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    let probe = dir.join(format!(".vfpga-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(OutPathError::NotWritable {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Checks that the file `path` can be written later: its directory exists
/// and takes a new file, and `path` is not a directory.
pub fn check_file(path: &Path) -> Result<(), OutPathError> {
    if path.is_dir() {
        return Err(OutPathError::IsDir(path.to_path_buf()));
    }
    let dir = parent_of(path);
    if !dir.is_dir() {
        return Err(OutPathError::NoDir {
            path: path.to_path_buf(),
            dir,
        });
    }
    writable_dir(&dir)
}

/// Checks that the directory `dir` can be written later: it exists and
/// takes a new file, or its nearest existing ancestor does (it is created
/// when first needed).
pub fn check_dir(dir: &Path) -> Result<(), OutPathError> {
    if dir.exists() && !dir.is_dir() {
        return Err(OutPathError::NotWritable {
            dir: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let base = dir
        .ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("."));
    writable_dir(if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_and_directories_are_refused() {
        let t = std::env::temp_dir();
        assert!(check_file(&t.join("vfpga-out.json")).is_ok());
        let e = check_file(&t.join("no-such-dir-vfpga/x.json")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(matches!(check_file(&t), Err(OutPathError::IsDir(_))));
        assert!(check_file(Path::new("relative.json")).is_ok());
    }
}
