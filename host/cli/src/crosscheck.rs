//! `vfpga crosscheck`: a campaign of random scenarios on two forms of the
//! device in lockstep (model vs RTL by default), or the replay of one file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vfpga_config::{Backend, Config};
use vfpga_crosscheck::campaign::{Plan, Replay, reproduce, run_pair};
use vfpga_crosscheck::{Impl, Outcome, Pair, Verdict, campaign};

use crate::exit::{FAILED as EXIT_FAILED, OK as EXIT_OK, USAGE as EXIT_USAGE};

/// Options of `vfpga crosscheck`.
#[derive(Debug, Clone, Args)]
pub struct CrosscheckArgs {
    /// Number of random scenarios (seeds 0..N; default 100).
    #[arg(long, value_name = "N")]
    pub seeds: Option<u64>,
    /// Run the one scenario with this seed.
    #[arg(long, value_name = "S", conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Stop starting scenarios after this long (e.g. 90s, 10m, 2h); without
    /// --seeds, run until then.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Run only shard K of N (K in 1..=N): seeds with seed % N == K-1.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Replay a scenario file written by an earlier divergence (with a VCD
    /// waveform of the RTL beside it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seeds", "seed", "duration", "shard"])]
    pub replay: Option<PathBuf>,
    /// Where replay files and waveforms go.
    #[arg(long, value_name = "DIR", default_value = "target/crosscheck")]
    pub out: PathBuf,
    /// Break the reference model on purpose (checker power; needs a build
    /// with the cargo feature fault-injection): off-by-one-len,
    /// wrong-crc-seed, dropped-irq, dirty-bit-not-set, state-word-not-saved.
    #[arg(long, value_name = "FAULT", hide = true)]
    pub inject_fault: Option<String>,
    /// Also write the summary as JSON (see --merge).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Merge the --json summaries of shards (of one campaign: same pair,
    /// --seeds and N) into one report; with --json, write it there too.
    /// Exit 1 when a shard failed or one is missing.
    #[arg(
        long,
        value_name = "SHARD.json",
        num_args = 1..,
        conflicts_with_all = ["seeds", "seed", "duration", "shard", "replay", "inject_fault"]
    )]
    pub merge: Vec<PathBuf>,
}

/// Version of the crosscheck JSON document.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON summary of a campaign shard, or of several merged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The pair, e.g. `model vs sim`.
    pub pair: String,
    /// N of `--shard K/N` (1 without --shard).
    pub shard_count: u64,
    /// The shards (K, 1-based) this report covers, ascending.
    pub shards: Vec<u64>,
    /// The campaign's `--seeds` bound (null: run until `--duration`).
    pub seeds: Option<u64>,
    /// Whether every shard 1..=N is covered.
    pub complete: bool,
    /// Scenarios run.
    pub scenarios: u64,
    /// Scenario operations applied.
    pub scenario_ops: u64,
    /// Lockstep device operations.
    pub operations: u64,
    /// Operations after which the two sides were compared.
    pub operations_compared: u64,
    /// State transplants.
    pub transplants: u64,
    /// Scenarios that diverged.
    pub divergences: u64,
    /// Scenarios that failed without a divergence.
    pub errors: u64,
    /// Run time in seconds (summed over shards), to the millisecond.
    pub seconds: f64,
    /// The failing seeds, ascending.
    pub failing_seeds: Vec<u64>,
    /// No divergence and no error in the shards covered (see also `complete`).
    pub passed: bool,
}

/// Seconds to the millisecond.
fn millis(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    fn of(s: &campaign::Summary, plan: &Plan) -> Report {
        let mut failing = s.failing_seeds.clone();
        failing.sort_unstable();
        let complete = plan.shard.1 == 1;
        Report {
            schema_version: SCHEMA_VERSION,
            pair: s.pair.clone(),
            shard_count: plan.shard.1,
            shards: vec![plan.shard.0 + 1],
            seeds: plan.count,
            complete,
            scenarios: s.scenarios,
            scenario_ops: s.scenario_ops,
            operations: s.operations,
            operations_compared: s.operations_compared,
            transplants: s.transplants,
            divergences: s.divergences,
            errors: s.errors,
            seconds: millis(s.seconds),
            failing_seeds: failing,
            passed: s.divergences == 0 && s.errors == 0,
        }
    }

    /// Merges shard reports of one campaign; refuses reports of different
    /// campaigns, schema versions, or one shard twice.
    pub fn merge(parts: &[(PathBuf, Report)]) -> Result<Report, String> {
        let Some((p0, first)) = parts.first() else {
            return Err("nothing to merge".into());
        };
        let mut m = first.clone();
        for (p, r) in parts {
            if r.schema_version != SCHEMA_VERSION {
                return Err(format!(
                    "{}: schema_version {} (this vfpga reads {SCHEMA_VERSION})",
                    p.display(),
                    r.schema_version
                ));
            }
            if (&r.pair, r.shard_count, r.seeds) != (&first.pair, first.shard_count, first.seeds) {
                return Err(format!(
                    "{} ({}, {} shards, seeds {:?}) is not of the campaign of {} ({}, {} shards, seeds {:?})",
                    p.display(),
                    r.pair,
                    r.shard_count,
                    r.seeds,
                    p0.display(),
                    first.pair,
                    first.shard_count,
                    first.seeds
                ));
            }
        }
        m.shards.clear();
        m.failing_seeds.clear();
        m.seconds = 0.0;
        for f in [
            &mut m.scenarios,
            &mut m.scenario_ops,
            &mut m.operations,
            &mut m.operations_compared,
            &mut m.transplants,
            &mut m.divergences,
            &mut m.errors,
        ] {
            *f = 0;
        }
        for (p, r) in parts {
            if let Some(k) = r.shards.iter().find(|k| m.shards.contains(k)) {
                return Err(format!(
                    "{}: shard {k} is already in another file",
                    p.display()
                ));
            }
            m.shards.extend(&r.shards);
            m.failing_seeds.extend(&r.failing_seeds);
            m.scenarios += r.scenarios;
            m.scenario_ops += r.scenario_ops;
            m.operations += r.operations;
            m.operations_compared += r.operations_compared;
            m.transplants += r.transplants;
            m.divergences += r.divergences;
            m.errors += r.errors;
            m.seconds += r.seconds;
        }
        m.shards.sort_unstable();
        m.failing_seeds.sort_unstable();
        m.seconds = millis(m.seconds);
        m.complete = (1..=m.shard_count).all(|k| m.shards.contains(&k));
        m.passed = m.divergences == 0 && m.errors == 0;
        Ok(m)
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let shards: Vec<String> = self.shards.iter().map(u64::to_string).collect();
        format!(
            "crosscheck {} (shards {} of {}{}): {} scenarios, {} operations compared \
             ({} device operations, {} state transplants), {} divergences, {} errors in {:.1} s",
            self.pair,
            shards.join(","),
            self.shard_count,
            if self.complete { "" } else { ", INCOMPLETE" },
            self.scenarios,
            self.operations_compared,
            self.operations,
            self.transplants,
            self.divergences,
            self.errors,
            self.seconds
        )
    }
}

fn write_json(path: &Path, r: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// `vfpga crosscheck --merge`.
fn merge(files: &[PathBuf], out: Option<&Path>) -> u8 {
    let mut parts = Vec::new();
    for f in files {
        let r = std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Report>(&t).map_err(|e| e.to_string()));
        match r {
            Ok(r) => parts.push((f.clone(), r)),
            Err(e) => return usage(format!("{}: {e}", f.display())),
        }
    }
    let m = match Report::merge(&parts) {
        Ok(m) => m,
        Err(e) => return usage(e),
    };
    println!("{}", m.line());
    if !m.failing_seeds.is_empty() {
        let s: Vec<String> = m.failing_seeds.iter().map(u64::to_string).collect();
        println!("failing seeds (rerun one with --seed S): {}", s.join(", "));
    }
    if !m.complete {
        let missing: Vec<String> = (1..=m.shard_count)
            .filter(|k| !m.shards.contains(k))
            .map(|k| k.to_string())
            .collect();
        println!("missing shards: {}", missing.join(", "));
    }
    if let Some(p) = out
        && let Err(e) = write_json(p, &m)
    {
        return usage(e);
    }
    if m.passed && m.complete {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Default device memory of generated scenarios (pages) without a config.
const DEFAULT_PAGES: u32 = 16;
/// Scenario runs the shrinker may spend on one divergence.
const SHRINK_BUDGET: usize = 300;

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("vfpga crosscheck: {msg}");
    EXIT_USAGE
}

/// Parses `90s`, `10m`, `2h` or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, mul) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: f64 = n.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n * f64::from(mul)))
}

/// Parses `K/N` (1-based K) into a 0-based shard.
fn parse_shard(s: &str) -> Option<(u64, u64)> {
    let (k, n) = s.split_once('/')?;
    let (k, n): (u64, u64) = (k.trim().parse().ok()?, n.trim().parse().ok()?);
    (n >= 1 && (1..=n).contains(&k)).then(|| (k - 1, n))
}

fn impl_of(b: Backend) -> Option<Impl> {
    match b {
        Backend::Model => Some(Impl::Model),
        Backend::Sim => Some(Impl::Sim),
        Backend::Board => Some(Impl::Board),
        Backend::Lockstep => None,
    }
}

/// The pair and device memory from the config (model vs sim without one).
fn pair_of(cfg: Option<&Config>) -> Result<(Pair, u32), String> {
    let Some(cfg) = cfg else {
        return Ok((
            Pair {
                reference: Impl::Model,
                checked: Impl::Sim,
                model_fault: None,
            },
            DEFAULT_PAGES,
        ));
    };
    let Some(l) = &cfg.lockstep else {
        return Err("the config has no `lockstep` section (see config/lockstep.yaml)".to_string());
    };
    let side = |b: Backend| {
        impl_of(b).ok_or_else(|| {
            format!(
                "lockstep side `{}` is not supported here (model, sim or board)",
                b.name()
            )
        })
    };
    let board_side = l.reference == Backend::Board || l.checked == Backend::Board;
    if board_side && cfg.board.as_ref().is_some_and(|b| b.pci_address.is_some()) {
        return Err(
            "a cross-check against a real board (board.pci_address) is not built yet; \
             the `board` side is the simulated board (board: {simulated: {}, ...})"
                .into(),
        );
    }
    let pages = cfg.device.devmem_pages();
    if pages < 2 {
        return Err("device.devmem_size must be at least 8KiB for a cross-check".into());
    }
    Ok((
        Pair {
            reference: side(l.reference)?,
            checked: side(l.checked)?,
            model_fault: None,
        },
        pages,
    ))
}

fn check_sim(pair: Pair) -> Result<(), u8> {
    if pair.needs_sim() && !vfpga_sim::AVAILABLE {
        return Err(usage(
            "this build has no Verilated RTL: install Verilator (apt-get install verilator, \
             or run scripts/setup) and rebuild, or cross-check the model against itself \
             with a config whose lockstep.checked is `model`",
        ));
    }
    Ok(())
}

/// Runs `vfpga crosscheck`.
pub fn run(cfg: Option<&Config>, args: &CrosscheckArgs) -> u8 {
    if let Some(p) = &args.json
        && let Err(e) = crate::outpath::check_file(p)
    {
        return usage(e);
    }
    if !args.merge.is_empty() {
        return merge(&args.merge, args.json.as_deref());
    }
    if let Some(file) = &args.replay {
        return replay(file);
    }
    if let Err(e) = crate::outpath::check_dir(&args.out) {
        return usage(format!("--out: {e}"));
    }
    let (mut pair, pages) = match pair_of(cfg) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if let Some(f) = &args.inject_fault {
        match vfpga_crosscheck::ModelFault::from_name(f) {
            Some(x) if pair.reference == Impl::Model => pair.model_fault = Some(x),
            Some(_) => return usage("--inject-fault needs the model as the reference"),
            None => return usage(format!("unknown model fault `{f}`")),
        }
    }
    if let Err(code) = check_sim(pair) {
        return code;
    }
    let duration = match args.duration.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => return usage("--duration takes e.g. 90s, 10m or 2h"),
    };
    let shard = match args.shard.as_deref().map(parse_shard) {
        None => (0, 1),
        Some(Some(s)) => s,
        Some(None) => return usage("--shard takes K/N with 1 <= K <= N"),
    };
    let plan = match (args.seed, args.seeds, duration) {
        (Some(s), _, _) => Plan {
            first: s,
            count: Some(1),
            shard: (s % shard.1, shard.1),
            duration,
            devmem_pages: pages,
        },
        (None, n, d) => Plan {
            first: 0,
            count: n.or(if d.is_some() { None } else { Some(100) }),
            shard,
            duration,
            devmem_pages: pages,
        },
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = plan
            .seed_count()
            .map_or_else(ProgressBar::no_length, ProgressBar::new);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut failures: Vec<(u64, vfpga_crosscheck::Scenario, Outcome)> = Vec::new();
    let mut compared = 0u64;
    let summary = campaign(pair, &plan, |seed, sc, o| {
        compared += o.stats.compared;
        bar.inc(1);
        bar.set_message(format!(
            "{compared} compared, {} failing",
            failures.len() + usize::from(!o.verdict.passed())
        ));
        if !o.verdict.passed() {
            bar.suspend(|| eprintln!("seed {seed}: {}", verdict_line(&o.verdict)));
            failures.push((seed, sc.clone(), o.clone()));
        }
        true
    });
    bar.finish_and_clear();
    let shard_s = format!("shard {}/{}", plan.shard.0 + 1, plan.shard.1);
    println!(
        "crosscheck {pair} ({shard_s}): {} scenarios, {} operations compared \
         ({} device operations, {} state transplants), {} divergences, {} errors in {:.1} s",
        summary.scenarios,
        summary.operations_compared,
        summary.operations,
        summary.transplants,
        summary.divergences,
        summary.errors,
        summary.seconds
    );
    println!(
        "  slow memory: {} scenarios, {} DMA waits entered on both sides, {} MMIO accesses during them",
        summary.slow_scenarios, summary.dma_waits, summary.wait_accesses
    );
    println!(
        "  hardware reset: {} scenarios, {} resets ({} inside a step waiting for DMA)",
        summary.reset_scenarios, summary.hw_resets, summary.hw_resets_in_step
    );
    println!(
        "  back-to-back MMIO: {} scenarios, {} sequences, {} accesses",
        summary.back_to_back_scenarios, summary.back_to_back, summary.back_to_back_accesses
    );
    println!(
        "  MMIO racing a burst: {} scenarios, {} sequences, {} accesses ({} bitmap reads, \
         {} marks read mid-burst)",
        summary.racing_scenarios,
        summary.racing_bursts,
        summary.racing_accesses,
        summary.racing_bitmap_reads,
        summary.racing_marks_mid_burst
    );
    println!(
        "  raw port accesses (compared with the datasheet's answer): {}",
        summary.raw_port_accesses
    );
    println!(
        "  DMA_THROTTLE timing bounded on the RTL's cycles: {} runs",
        summary.throttle_timings
    );
    if let Some(j) = &args.json
        && let Err(e) = write_json(j, &Report::of(&summary, &plan))
    {
        eprintln!("vfpga crosscheck: {e}");
        return EXIT_USAGE;
    }
    if failures.is_empty() {
        return EXIT_OK;
    }
    // Shrink and write a replay for the first; the rest rerun with --seed.
    if let Some((seed, sc, o)) = failures.first() {
        report_failure(pair, *seed, sc, o, &args.out);
    }
    if failures.len() > 1 {
        let rest: Vec<String> = failures[1..].iter().map(|f| f.0.to_string()).collect();
        println!(
            "\nother failing seeds (rerun one with --seed S): {}",
            rest.join(", ")
        );
    }
    EXIT_FAILED
}

fn verdict_line(v: &Verdict) -> String {
    match v {
        Verdict::Pass => "pass".into(),
        Verdict::Diverged { divergence } => divergence.to_string(),
        Verdict::Error { message } => format!("error: {message}"),
    }
}

fn report_failure(pair: Pair, seed: u64, sc: &vfpga_crosscheck::Scenario, o: &Outcome, out: &Path) {
    let path = out.join(format!("seed-{seed}.json"));
    println!("\nseed {seed}: {}", verdict_line(&o.verdict));
    match reproduce(pair, sc, o, &path, SHRINK_BUDGET) {
        Ok((r, vcd)) => {
            println!(
                "  shrunk: {} -> {} operations; reproduced: {}",
                r.original_ops,
                r.scenario.ops.len(),
                verdict_line(&r.outcome.verdict)
            );
            if let Verdict::Diverged { divergence } = &r.outcome.verdict {
                println!("  last operations:");
                for c in &divergence.context {
                    println!("    {c}");
                }
                println!("    {}   <- diverged here", divergence.op);
            }
            println!("  replay file: {}", path.display());
            if let Some(v) = vcd {
                println!("  waveform:    {}", v.display());
            }
            println!(
                "  replay with: vfpga crosscheck --replay {}",
                path.display()
            );
        }
        Err(e) => println!("  could not write the replay file: {e}"),
    }
}

fn replay(file: &Path) -> u8 {
    let r = match Replay::read(file) {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if let Err(code) = check_sim(r.pair) {
        return code;
    }
    let vcd = r.pair.needs_sim().then(|| file.with_extension("vcd"));
    let o = run_pair(&r.scenario, r.pair, vcd.clone());
    println!(
        "replay {} ({}, seed {}, {} operations): {}",
        file.display(),
        r.pair,
        r.scenario.seed,
        r.scenario.ops.len(),
        verdict_line(&o.verdict)
    );
    if let Verdict::Diverged { divergence } = &o.verdict {
        for c in &divergence.context {
            println!("    {c}");
        }
        println!("    {}   <- diverged here", divergence.op);
    }
    if let Some(v) = vcd {
        println!("waveform: {}", v.display());
    }
    if o.verdict.passed() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_shards_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_shard("1/4"), Some((0, 4)));
        assert_eq!(parse_shard("4/4"), Some((3, 4)));
        assert_eq!(parse_shard("0/4"), None);
        assert_eq!(parse_shard("5/4"), None);
    }
}
