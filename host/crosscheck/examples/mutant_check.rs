//! The cross-check as `scripts/mutate` runs it against each RTL mutant: a
//! model-vs-RTL campaign over `--seeds N` seeds (default 100) on a
//! 64-page device, stopping at the first failing seed. Exit status 0: every
//! scenario passed (the mutant survived); 1: a divergence or an error (the
//! mutant was killed; the first line says how); 2: usage.
//!
//! `cargo run --release -p vfpga-crosscheck --example mutant_check -- --seeds 100`

use std::process::ExitCode;

use vfpga_crosscheck::campaign::Plan;
use vfpga_crosscheck::{Impl, Pair, Verdict, campaign};

fn main() -> ExitCode {
    let mut seeds = 100u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--seeds", Some(n)) => seeds = n,
            _ => {
                eprintln!("usage: mutant_check [--seeds N]");
                return ExitCode::from(2);
            }
        }
    }
    let pair = Pair {
        reference: Impl::Model,
        checked: Impl::Sim,
        model_fault: None,
    };
    let plan = Plan {
        first: 0,
        count: Some(seeds),
        shard: (0, 1),
        duration: None,
        devmem_pages: 64,
    };
    let mut first: Option<String> = None;
    let s = campaign(pair, &plan, |seed, _, o| {
        if o.verdict.passed() {
            return true;
        }
        let what = match &o.verdict {
            Verdict::Diverged { divergence } => divergence.to_string(),
            Verdict::Error { message } => format!("error: {message}"),
            Verdict::Pass => String::new(),
        };
        first = Some(format!("seed {seed}: {what}"));
        false
    });
    match first {
        Some(f) => {
            println!("killed after {} scenarios: {}", s.scenarios, f);
            ExitCode::from(1)
        }
        None => {
            println!("survived {} scenarios", s.scenarios);
            ExitCode::SUCCESS
        }
    }
}
