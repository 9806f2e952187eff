//! The cross-check as `scripts/mutate` runs it against each RTL mutant: a
//! model-vs-RTL campaign over seeds `0..N` (`--seeds N`, default 100) on a
//! 64-page device, stopping at the first failing seed. `--first S,T,..`
//! runs those seeds (the ones that killed earlier mutants) before the
//! others: the same seeds in another order, so a mutant is killed by the
//! same set, sooner. Exit status 0: every scenario passed (the mutant
//! survived); 1: a divergence or an error (the mutant was killed; the line
//! printed says how, with the seed); 2: usage.
//!
//! `cargo run --release -p vfpga-crosscheck --example mutant_check -- --seeds 100`

use std::process::ExitCode;

use vfpga_crosscheck::campaign::run_pair;
use vfpga_crosscheck::scenario::generate;
use vfpga_crosscheck::{Impl, Pair, Verdict};

fn usage() -> ExitCode {
    eprintln!("usage: mutant_check [--seeds N] [--first S,T,..]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut seeds = 100u64;
    let mut first: Vec<u64> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let Some(v) = args.next() else {
            return usage();
        };
        match a.as_str() {
            "--seeds" => match v.parse() {
                Ok(n) => seeds = n,
                Err(_) => return usage(),
            },
            "--first" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    match s.parse() {
                        Ok(n) => first.push(n),
                        Err(_) => return usage(),
                    }
                }
            }
            _ => return usage(),
        }
    }
    let pair = Pair {
        reference: Impl::Model,
        checked: Impl::Sim,
        model_fault: None,
    };
    // The seeds 0..N, the preferred ones first (each once).
    let mut order: Vec<u64> = Vec::with_capacity(seeds as usize);
    for s in first.into_iter().chain(0..seeds) {
        if s < seeds && !order.contains(&s) {
            order.push(s);
        }
    }
    for (n, seed) in order.iter().enumerate() {
        let sc = generate(*seed, 64);
        let o = run_pair(&sc, pair, None);
        let what = match &o.verdict {
            Verdict::Pass => continue,
            Verdict::Diverged { divergence } => divergence.to_string(),
            Verdict::Error { message } => format!("error: {message}"),
        };
        println!("killed after {} scenarios: seed {seed}: {what}", n + 1);
        return ExitCode::from(1);
    }
    println!("survived {} scenarios", order.len());
    ExitCode::SUCCESS
}
