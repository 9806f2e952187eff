//! Checker power: the model switched into each deliberate bug (feature
//! `fault-injection`) runs in lockstep against the correct model; the
//! cross-check must find every bug within a bounded number of generated
//! scenarios. And the other way round: the correct model against itself
//! never diverges (no false alarms from timing the datasheet allows).

use std::sync::Arc;

use vfpga_crosscheck::campaign::{Replay, run_with, shrink};
use vfpga_crosscheck::lockstep::Factory;
use vfpga_crosscheck::{Verdict, generate};
use vfpga_device::{DmaPort, IrqSink};
use vfpga_model::{Fault, Model, ModelConfig};

const PAGES: u32 = 16;
/// Scenarios each fault must be caught within.
const BOUND: u64 = 60;

fn model(fault: Option<Fault>) -> Factory<Model> {
    Box::new(move |dma: DmaPort, irq: Arc<dyn IrqSink>| {
        let cfg = ModelConfig {
            devmem_pages: PAGES,
            dmalog_max_pages: 1024,
            batch_bursts: false,
        };
        let mut m = Model::new(cfg, dma, irq)?;
        m.inject_fault(fault);
        Ok(m)
    })
}

/// Seeds until the first divergence, and its effect kind.
fn scenarios_to_catch(fault: Fault) -> Option<(u64, &'static str)> {
    for seed in 0..BOUND {
        let sc = generate(seed, PAGES);
        let o = run_with(&sc, model(None), model(Some(fault)));
        match o.verdict {
            Verdict::Pass => {}
            Verdict::Diverged { divergence } => return Some((seed + 1, divergence.effect.kind())),
            Verdict::Error { message } => panic!("{fault:?} seed {seed}: error {message}"),
        }
    }
    None
}

#[test]
fn every_deliberate_model_fault_is_caught() {
    let faults = [
        Fault::OffByOneLen,
        Fault::WrongCrcSeed,
        Fault::DroppedIrq,
        Fault::DirtyBitNotSet,
        Fault::StateWordNotSaved,
    ];
    let mut missed = Vec::new();
    for f in faults {
        match scenarios_to_catch(f) {
            Some((n, kind)) => eprintln!("fault {f:?}: caught after {n} scenario(s) as {kind}"),
            None => missed.push(f),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught within {BOUND} scenarios: {missed:?}"
    );
}

#[test]
fn the_correct_model_agrees_with_itself() {
    for seed in 0..300 {
        let sc = generate(seed, PAGES);
        let o = run_with(&sc, model(None), model(None));
        assert!(o.verdict.passed(), "seed {seed}: {:?}", o.verdict);
        assert!(o.stats.compared > 0, "seed {seed}: nothing compared");
    }
}

#[test]
fn a_divergence_shrinks_and_replays_from_its_file() {
    let (seed, sc, failing) = (0..BOUND)
        .find_map(|s| {
            let sc = generate(s, PAGES);
            let o = run_with(&sc, model(None), model(Some(Fault::WrongCrcSeed)));
            (!o.verdict.passed()).then_some((s, sc, o))
        })
        .expect("the CRC fault is caught");
    let (small, out) = shrink(&sc, &failing, 400, |c| {
        run_with(c, model(None), model(Some(Fault::WrongCrcSeed)))
    });
    assert!(
        small.ops.len() < sc.ops.len(),
        "seed {seed}: nothing dropped"
    );
    let Verdict::Diverged { divergence } = &out.verdict else {
        panic!("shrunk scenario passes: {out:?}");
    };
    assert!(!divergence.context.is_empty());
    // The same scenario without the fault passes: the shrunk case is about the bug.
    assert!(run_with(&small, model(None), model(None)).verdict.passed());
    let dir = std::env::temp_dir().join(format!("vfpga-xchk-{}", std::process::id()));
    let path = dir.join("replay.json");
    let r = Replay {
        pair: vfpga_crosscheck::Pair {
            reference: vfpga_crosscheck::Impl::Model,
            checked: vfpga_crosscheck::Impl::Model,
            model_fault: None,
        },
        scenario: small.clone(),
        outcome: out.clone(),
        original_ops: sc.ops.len(),
    };
    r.write(&path).expect("write");
    let back = Replay::read(&path).expect("read");
    assert_eq!(back, r);
    let again = run_with(
        &back.scenario,
        model(None),
        model(Some(Fault::WrongCrcSeed)),
    );
    assert_eq!(
        again.verdict, out.verdict,
        "replay reproduces the divergence"
    );
    let _ = std::fs::remove_dir_all(dir);
}
