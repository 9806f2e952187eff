//! Running scenarios: one, many (seeds, shards, a time limit), shrinking a
//! divergent one, and the replay file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vfpga_device::{Device, DeviceError};

use crate::backend::{AnyDevice, Pair, SideDevice, factory, faulty_factory};
use crate::lockstep::{Divergence, DivergenceError, Factory, Lockstep, LockstepOptions};
use crate::scenario::{Op, RunStats, Scenario, apply, generate};

/// How one scenario ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every comparison agreed.
    Pass,
    /// The sides diverged.
    Diverged {
        /// The first divergence.
        divergence: Box<Divergence>,
    },
    /// Both sides failed the same way (or the pair could not be built):
    /// no comparison possible, a failure of the check all the same.
    Error {
        /// What failed.
        message: String,
    },
}

impl Verdict {
    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// Result of one scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// What it did.
    pub stats: RunStats,
}

/// Runs `sc` on a lockstep of the two factories.
pub fn run_with<A: Device + SideDevice, B: Device + SideDevice>(
    sc: &Scenario,
    reference: Factory<A>,
    checked: Factory<B>,
) -> Outcome {
    run_with_options(sc, LockstepOptions::default(), reference, checked)
}

/// [`run_with`] with lockstep options.
pub fn run_with_options<A: Device + SideDevice, B: Device + SideDevice>(
    sc: &Scenario,
    opts: LockstepOptions,
    reference: Factory<A>,
    checked: Factory<B>,
) -> Outcome {
    let mut stats = RunStats::default();
    let mut ls = match Lockstep::new(sc.guest, opts, reference, checked) {
        Ok(l) => l,
        Err(e) => {
            return Outcome {
                verdict: Verdict::Error {
                    message: error_chain(&e),
                },
                stats,
            };
        }
    };
    let r = apply(&mut ls, sc, &mut stats);
    stats.operations = ls.operations();
    stats.compared = ls.compared();
    stats.transplants = ls.transplants();
    let verdict = match (r, ls.divergence()) {
        (_, Some(d)) => Verdict::Diverged {
            divergence: Box::new(d.clone()),
        },
        (Ok(()), None) => Verdict::Pass,
        (Err(e), None) => Verdict::Error {
            message: error_chain(&e),
        },
    };
    Outcome { verdict, stats }
}

/// The seed of the random pre-reset contents of the RTL in scenario `sc`.
pub fn x_seed(sc: &Scenario) -> u32 {
    ((sc.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32).max(1)
}

/// Runs `sc` on `pair`; `vcd` names the RTL waveform when the pair has one.
/// A pair with the simulated board runs the scenario without slow memory
/// ([`Scenario::without_slow_memory`]).
pub fn run_pair(sc: &Scenario, pair: Pair, vcd: Option<PathBuf>) -> Outcome {
    let stripped;
    let sc = if pair.has_board() {
        stripped = sc.clone().without_slow_memory();
        &stripped
    } else {
        sc
    };
    run_with_options(
        sc,
        pair.options(),
        faulty_factory(
            pair.reference,
            sc.devmem_pages,
            vcd.clone(),
            pair.model_fault,
            x_seed(sc),
        ),
        factory(pair.checked, sc.devmem_pages, vcd, x_seed(sc)),
    )
}

/// The error and its sources (vfpga_device's formatter), leaving out the
/// divergence a lockstep error carries as its source (its message is the
/// error's own, and a verdict is compared by this text).
fn error_chain(e: &DeviceError) -> String {
    std::iter::once(e.to_string())
        .chain(
            vfpga_device::error_sources(e)
                .filter(|x| x.downcast_ref::<DivergenceError>().is_none())
                .map(ToString::to_string),
        )
        .collect::<Vec<_>>()
        .join(": ")
}

/// Whether two verdicts fail the same way (shrinking keeps that).
fn same_failure(a: &Verdict, b: &Verdict) -> bool {
    match (a, b) {
        (Verdict::Diverged { divergence: x }, Verdict::Diverged { divergence: y }) => {
            x.effect.kind() == y.effect.kind()
        }
        (Verdict::Error { .. }, Verdict::Error { .. }) => true,
        _ => false,
    }
}

/// Drops operations from a failing scenario while it still fails the same
/// way (same kind of effect): chunks first, then single operations, within
/// `budget` runs. Returns the smallest failing scenario and its outcome.
pub fn shrink(
    sc: &Scenario,
    failing: &Outcome,
    budget: usize,
    mut run: impl FnMut(&Scenario) -> Outcome,
) -> (Scenario, Outcome) {
    let mut best = sc.clone();
    let mut best_out = failing.clone();
    let mut runs = 0;
    let mut chunk = best.ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progressed = false;
        while i < best.ops.len() && runs < budget {
            let mut cand = best.clone();
            let end = (i + chunk).min(cand.ops.len());
            cand.ops.drain(i..end);
            runs += 1;
            let o = run(&cand);
            if same_failure(&failing.verdict, &o.verdict) {
                best = cand;
                best_out = o;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if runs >= budget || (chunk == 1 && !progressed) {
            break;
        }
        if !progressed {
            chunk = (chunk / 2).max(1);
        }
    }
    (best, best_out)
}

/// A replayable file: the pair, the scenario and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// The implementations.
    pub pair: Pair,
    /// The (shrunk) scenario.
    pub scenario: Scenario,
    /// The outcome recorded when the file was written.
    pub outcome: Outcome,
    /// Operations of the scenario before shrinking.
    pub original_ops: usize,
}

/// Errors reading or writing a replay file.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a replay file.
    #[error("{path}: not a replay file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Replay {
    /// Writes the file (pretty JSON).
    pub fn write(&self, path: &Path) -> Result<(), ReplayError> {
        let io = |source| ReplayError::Io {
            path: path.into(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let j = serde_json::to_string_pretty(self).map_err(|source| ReplayError::Parse {
            path: path.into(),
            source,
        })?;
        std::fs::write(path, j).map_err(io)
    }

    /// Reads a file.
    pub fn read(path: &Path) -> Result<Self, ReplayError> {
        let s = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&s).map_err(|source| ReplayError::Parse {
            path: path.into(),
            source,
        })
    }
}

/// Which seeds a campaign runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// First seed.
    pub first: u64,
    /// Number of seeds (`None`: until the time limit).
    pub count: Option<u64>,
    /// Shard `k` (0-based) of `n`: seed `s` runs when `s % n == k`.
    pub shard: (u64, u64),
    /// Stop starting scenarios after this long.
    pub duration: Option<Duration>,
    /// Device memory of the generated scenarios, in pages.
    pub devmem_pages: u32,
}

impl Plan {
    /// The seeds of this shard, in order (unbounded when `count` is `None`).
    pub fn seeds(&self) -> impl Iterator<Item = u64> + '_ {
        let end = self
            .count
            .map_or(u64::MAX, |c| self.first.saturating_add(c));
        (self.first..end).filter(move |s| s % self.shard.1 == self.shard.0)
    }

    /// How many seeds this shard runs, if bounded.
    pub fn seed_count(&self) -> Option<u64> {
        self.count.map(|_| self.seeds().count() as u64)
    }
}

/// Totals of a campaign.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The pair.
    pub pair: String,
    /// Scenarios run.
    pub scenarios: u64,
    /// Scenario operations applied.
    pub scenario_ops: u64,
    /// Lockstep operations.
    pub operations: u64,
    /// Operations after which effects were compared.
    pub operations_compared: u64,
    /// State transplants.
    pub transplants: u64,
    /// Scenarios whose guest memory answers later (slow memory).
    #[serde(default)]
    pub slow_scenarios: u64,
    /// DMA waits both sides were brought into (slow memory).
    #[serde(default)]
    pub dma_waits: u64,
    /// MMIO accesses issued during those waits.
    #[serde(default)]
    pub wait_accesses: u64,
    /// Hardware resets (the core's reset input) applied.
    #[serde(default)]
    pub hw_resets: u64,
    /// Of those, inside a step waiting for DMA.
    #[serde(default)]
    pub hw_resets_in_step: u64,
    /// Scenarios with at least one hardware reset.
    #[serde(default)]
    pub reset_scenarios: u64,
    /// Back-to-back MMIO sequences.
    #[serde(default)]
    pub back_to_back: u64,
    /// Accesses in them.
    #[serde(default)]
    pub back_to_back_accesses: u64,
    /// Scenarios with at least one back-to-back sequence.
    #[serde(default)]
    pub back_to_back_scenarios: u64,
    /// MMIO sequences racing a running burst.
    #[serde(default)]
    pub racing_bursts: u64,
    /// Accesses in them.
    #[serde(default)]
    pub racing_accesses: u64,
    /// Bitmap reads among them.
    #[serde(default)]
    pub racing_bitmap_reads: u64,
    /// Scenarios with at least one.
    #[serde(default)]
    pub racing_scenarios: u64,
    /// Bitmap marks the checked side's racing reads caught mid-burst.
    #[serde(default)]
    pub racing_marks_mid_burst: u64,
    /// Raw port accesses compared with the datasheet's answer.
    #[serde(default)]
    pub raw_port_accesses: u64,
    /// Throttle timings bounded on the checked side.
    #[serde(default)]
    pub throttle_timings: u64,
    /// Scenarios that diverged.
    pub divergences: u64,
    /// Scenarios that failed without a divergence.
    pub errors: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The failing seeds.
    pub failing_seeds: Vec<u64>,
}

/// Runs the plan on `pair`. `each` sees every (seed, scenario, outcome) as it
/// finishes (progress, reports) and may stop the campaign by returning false.
pub fn campaign(
    pair: Pair,
    plan: &Plan,
    mut each: impl FnMut(u64, &Scenario, &Outcome) -> bool,
) -> Summary {
    let start = Instant::now();
    let mut s = Summary {
        pair: pair.to_string(),
        ..Summary::default()
    };
    for seed in plan.seeds() {
        if plan.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let sc = generate(seed, plan.devmem_pages);
        let o = run_pair(&sc, pair, None);
        s.scenarios += 1;
        s.scenario_ops += o.stats.scenario_ops;
        s.operations += o.stats.operations;
        s.operations_compared += o.stats.compared;
        s.transplants += o.stats.transplants;
        s.slow_scenarios += u64::from(o.stats.slow_memory);
        s.dma_waits += o.stats.dma_waits;
        s.wait_accesses += o.stats.wait_accesses;
        s.hw_resets += o.stats.hw_resets;
        s.hw_resets_in_step += o.stats.hw_resets_in_step;
        s.reset_scenarios += u64::from(o.stats.hw_resets > 0);
        s.back_to_back += o.stats.back_to_back;
        s.back_to_back_accesses += o.stats.back_to_back_accesses;
        s.back_to_back_scenarios += u64::from(o.stats.back_to_back > 0);
        s.racing_bursts += o.stats.racing_bursts;
        s.racing_accesses += o.stats.racing_accesses;
        s.racing_bitmap_reads += o.stats.racing_bitmap_reads;
        s.racing_scenarios += u64::from(o.stats.racing_bursts > 0);
        s.racing_marks_mid_burst += o.stats.racing_marks_mid_burst;
        s.raw_port_accesses += o.stats.raw_port_accesses;
        s.throttle_timings += o.stats.throttle_timings;
        match &o.verdict {
            Verdict::Pass => {}
            Verdict::Diverged { .. } => {
                s.divergences += 1;
                s.failing_seeds.push(seed);
            }
            Verdict::Error { .. } => {
                s.errors += 1;
                s.failing_seeds.push(seed);
            }
        }
        if !each(seed, &sc, &o) {
            break;
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    s
}

/// Shrinks a failing scenario on `pair`, writes the replay file to `path`,
/// and re-runs the shrunk scenario with an RTL waveform beside it
/// (`path` with extension `vcd`). Returns the replay and the waveform path
/// (if the pair has an RTL side).
pub fn reproduce(
    pair: Pair,
    sc: &Scenario,
    failing: &Outcome,
    path: &Path,
    shrink_budget: usize,
) -> Result<(Replay, Option<PathBuf>), ReplayError> {
    let (small, _) = shrink(sc, failing, shrink_budget, |c| run_pair(c, pair, None));
    let vcd = pair.needs_sim().then(|| path.with_extension("vcd"));
    let outcome = run_pair(&small, pair, vcd.clone());
    let replay = Replay {
        pair,
        scenario: small,
        outcome,
        original_ops: sc.ops.len(),
    };
    replay.write(path)?;
    Ok((replay, vcd))
}

/// Whether a scenario has an operation of this kind (for tests and reports).
pub fn has_op(sc: &Scenario, f: impl Fn(&Op) -> bool) -> bool {
    sc.ops.iter().any(f)
}

/// The lockstep of `pair` as a boxed pair of [`AnyDevice`]s, for callers that
/// drive it themselves.
pub fn lockstep(pair: Pair, sc: &Scenario) -> Result<Lockstep<AnyDevice, AnyDevice>, DeviceError> {
    Lockstep::new(
        sc.guest,
        pair.options(),
        factory(pair.reference, sc.devmem_pages, None, x_seed(sc)),
        factory(pair.checked, sc.devmem_pages, None, x_seed(sc)),
    )
}
