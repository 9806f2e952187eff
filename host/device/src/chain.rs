//! The one error-chain formatter of the workspace: an error and its
//! `source()`s on one line, as every binary, report and test prints them.

use std::error::Error;

/// The sources of `e`, outermost first (`e` itself not included).
pub fn error_sources<'a>(e: &'a dyn Error) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(e.source(), |s: &&(dyn Error + 'static)| (*s).source())
}

/// `e` and each of its sources, joined by `: `. A source whose message the
/// one before it already contains (an `#[error("...: {0}")]` wrapper) is not
/// repeated.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut prev = out.clone();
    for s in error_sources(e) {
        let m = s.to_string();
        if !prev.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        prev = m;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot start")]
        Start(#[source] std::io::Error),
        #[error("cannot open: {0}")]
        Open(#[source] std::io::Error),
    }

    #[test]
    fn chains_sources_once() {
        let io = || std::io::Error::other("no such file");
        assert_eq!(
            error_chain(&Outer::Start(io())),
            "cannot start: no such file"
        );
        assert_eq!(error_chain(&Outer::Open(io())), "cannot open: no such file");
        assert_eq!(error_sources(&Outer::Start(io())).count(), 1);
        assert_eq!(error_chain(&io()), "no such file");
    }
}
