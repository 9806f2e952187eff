//! The v2 state machine: every (from, to) pair, hook order, failures, ERROR.
//! Conformance catalogue §6 group C (cases 17-23) at engine level.

use std::collections::VecDeque;

use vfpga_migration::fsm::{
    ArcFailure, ArcHooks, Fsm, FsmError, MigState, MigrationFlags, NUM_STATES, PathError, path,
};

use MigState as S;

/// A fault-injecting fake: records every arc, fails the `fail_at`-th one.
#[derive(Debug, Default)]
struct FakeHooks {
    calls: Vec<(MigState, MigState)>,
    fail_at: Option<(usize, bool)>,
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure on arc {0}")]
struct Injected(usize);

impl ArcHooks for FakeHooks {
    type Error = Injected;
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), ArcFailure<Injected>> {
        let n = self.calls.len();
        self.calls.push((from, to));
        match self.fail_at {
            Some((k, fatal)) if k == n => Err(ArcFailure {
                fatal,
                error: Injected(n),
            }),
            _ => Ok(()),
        }
    }
}

/// The direct arcs of the uAPI for a device without P2P (§2.4 with the P2P
/// states collapsed, which is libvfio-user's `transitions[]`).
fn direct_arcs(pre_copy: bool) -> Vec<(MigState, MigState)> {
    let mut a = vec![
        (S::Stop, S::Running),
        (S::Stop, S::StopCopy),
        (S::Stop, S::Resuming),
        (S::Running, S::Stop),
        (S::StopCopy, S::Stop),
        (S::Resuming, S::Stop),
    ];
    if pre_copy {
        a.extend([
            (S::Running, S::PreCopy),
            (S::PreCopy, S::Running),
            (S::PreCopy, S::StopCopy),
        ]);
    }
    a
}

/// Independent oracle: breadth-first search over the direct arcs, where a
/// path may enter or leave the saving group at most once (it cannot leave
/// and re-enter, which would need a new data stream).
fn bfs(arcs: &[(MigState, MigState)], from: MigState, to: MigState) -> Option<Vec<MigState>> {
    let mut q = VecDeque::from([(vec![from], 0u8)]);
    while let Some((p, changes)) = q.pop_front() {
        let last = *p.last()?;
        if last == to {
            return Some(p[1..].to_vec());
        }
        if p.len() > NUM_STATES {
            continue;
        }
        for &(a, b) in arcs {
            if a != last || p.contains(&b) {
                continue;
            }
            let c = changes + u8::from(a.is_saving() != b.is_saving());
            if c > 1 {
                continue;
            }
            let mut n = p.clone();
            n.push(b);
            q.push_back((n, c));
        }
    }
    None
}

fn run(
    flags: MigrationFlags,
    from: MigState,
    target: u32,
) -> (Fsm, FakeHooks, Result<MigState, String>) {
    let mut fsm = Fsm::new(flags);
    let mut h = FakeHooks::default();
    // Drive to `from` first (only through supported arcs).
    if from != S::Running {
        fsm.set_state(from.raw(), &mut h)
            .expect("reach the start state");
    }
    let mut h = FakeHooks::default();
    let r = fsm.set_state(target, &mut h).map_err(|e| e.to_string());
    (fsm, h, r)
}

#[test]
fn every_pair_follows_the_shortest_path_and_calls_hooks_in_order() {
    for (flags, pre) in [
        (MigrationFlags::VFPGA, true),
        (MigrationFlags::STOP_COPY, false),
    ] {
        let arcs = direct_arcs(pre);
        for from in MigState::ALL {
            if from == S::Error || !flags.supports(from) {
                continue;
            }
            for target in 0..NUM_STATES as u32 {
                let to = MigState::from_raw(target).expect("in range");
                let (fsm, h, r) = run(flags, from, target);
                let want = if !flags.supports(to) {
                    None
                } else {
                    bfs(&arcs, from, to)
                };
                match want {
                    Some(p) => {
                        assert_eq!(r, Ok(to), "{from} -> {to} ({flags:?})");
                        let mut at = from;
                        let expect: Vec<_> = p
                            .iter()
                            .map(|&n| {
                                let arc = (at, n);
                                at = n;
                                arc
                            })
                            .collect();
                        assert_eq!(h.calls, expect, "{from} -> {to} hook order ({flags:?})");
                        assert_eq!(fsm.state(), to);
                    }
                    None => {
                        assert!(r.is_err(), "{from} -> {to} must be refused ({flags:?})");
                        assert!(h.calls.is_empty(), "a refused request runs no hook");
                        assert_eq!(fsm.state(), from, "a refused request changes nothing");
                    }
                }
            }
        }
    }
}

/// The paths the reference lists for every flag set (vfio-migration.md §2.5),
/// including the P2P sets that vfpga does not advertise.
#[test]
fn listed_kernel_paths_for_all_four_flag_sets() {
    let sc = MigrationFlags::STOP_COPY;
    let pre = sc.with(MigrationFlags::PRE_COPY);
    let p2p = sc.with(MigrationFlags::P2P);
    let all = pre.with(MigrationFlags::P2P);
    let cases: &[(MigrationFlags, MigState, MigState, &[MigState])] = &[
        (sc, S::Running, S::StopCopy, &[S::Stop, S::StopCopy]),
        (sc, S::Running, S::Resuming, &[S::Stop, S::Resuming]),
        (sc, S::StopCopy, S::Running, &[S::Stop, S::Running]),
        (sc, S::StopCopy, S::Resuming, &[S::Stop, S::Resuming]),
        (sc, S::Resuming, S::Running, &[S::Stop, S::Running]),
        (sc, S::Resuming, S::StopCopy, &[S::Stop, S::StopCopy]),
        (pre, S::Stop, S::PreCopy, &[S::Running, S::PreCopy]),
        (
            pre,
            S::Resuming,
            S::PreCopy,
            &[S::Stop, S::Running, S::PreCopy],
        ),
        (pre, S::PreCopy, S::Stop, &[S::Running, S::Stop]),
        (pre, S::PreCopy, S::StopCopy, &[S::StopCopy]),
        (
            pre,
            S::PreCopy,
            S::Resuming,
            &[S::Running, S::Stop, S::Resuming],
        ),
        (p2p, S::Stop, S::Running, &[S::RunningP2p, S::Running]),
        (p2p, S::Running, S::Stop, &[S::RunningP2p, S::Stop]),
        (
            p2p,
            S::Running,
            S::StopCopy,
            &[S::RunningP2p, S::Stop, S::StopCopy],
        ),
        (
            p2p,
            S::Resuming,
            S::Running,
            &[S::Stop, S::RunningP2p, S::Running],
        ),
        (all, S::PreCopy, S::StopCopy, &[S::PreCopyP2p, S::StopCopy]),
        (
            all,
            S::PreCopy,
            S::Stop,
            &[S::Running, S::RunningP2p, S::Stop],
        ),
        (
            all,
            S::Resuming,
            S::PreCopy,
            &[S::Stop, S::RunningP2p, S::Running, S::PreCopy],
        ),
    ];
    for &(f, from, to, want) in cases {
        assert_eq!(
            path(f, from, to.raw()).as_deref(),
            Ok(want),
            "{from} -> {to} {f:?}"
        );
    }
    // Without P2P, P2P targets are refused; without PRE_COPY, PRE_COPY is.
    for (f, t) in [
        (pre, S::RunningP2p),
        (pre, S::PreCopyP2p),
        (p2p, S::PreCopy),
    ] {
        assert_eq!(path(f, S::Running, t.raw()), Err(PathError::Unsupported(t)));
    }
}

/// Case 20 and the kernel's endless-loop bug: STOP_COPY -> PRE_COPY(_P2P)
/// is refused at once, on every flag set, and the state stays STOP_COPY.
#[test]
fn stop_copy_to_pre_copy_is_rejected_promptly() {
    let all = MigrationFlags::VFPGA.with(MigrationFlags::P2P);
    for f in [MigrationFlags::VFPGA, all] {
        for t in [S::PreCopy, S::PreCopyP2p] {
            if !f.supports(t) {
                continue;
            }
            let (fsm, h, r) = run(f, S::StopCopy, t.raw());
            assert!(r.is_err());
            assert!(h.calls.is_empty());
            assert_eq!(fsm.state(), S::StopCopy);
            assert_eq!(
                path(f, S::StopCopy, t.raw()),
                Err(PathError::NoPath {
                    from: S::StopCopy,
                    to: t
                })
            );
        }
    }
}

/// Case 19: a self-transition succeeds and calls no hook.
#[test]
fn self_transition_is_a_no_op() {
    for s in [S::Stop, S::Running, S::StopCopy, S::Resuming, S::PreCopy] {
        let (fsm, h, r) = run(MigrationFlags::VFPGA, s, s.raw());
        assert_eq!(r, Ok(s));
        assert!(h.calls.is_empty(), "{s}");
        assert_eq!(fsm.state(), s);
    }
}

/// Case 21: ERROR, unadvertised P2P states and out-of-range values are
/// refused without touching the table out of bounds.
#[test]
fn invalid_targets_are_rejected_without_out_of_range_indexing() {
    for s in [S::Stop, S::Running, S::StopCopy, S::Resuming, S::PreCopy] {
        for t in [0u32, 5, 7, 8, 9, 0xabcd, 0x8000_0000, u32::MAX] {
            let (fsm, h, r) = run(MigrationFlags::VFPGA, s, t);
            assert!(r.is_err(), "{s} -> {t}");
            assert!(h.calls.is_empty());
            assert_eq!(fsm.state(), s);
        }
    }
    assert_eq!(
        path(MigrationFlags::VFPGA, S::Running, 8),
        Err(PathError::NotAState(8))
    );
    assert_eq!(
        path(MigrationFlags::VFPGA, S::Running, 0),
        Err(PathError::Unsupported(S::Error))
    );
}

/// Case 22: a failing step leaves the defined intermediate state (the start
/// of the failed arc), for every arc position of every multi-step path.
#[test]
fn failing_hook_leaves_the_last_state_reached() {
    let f = MigrationFlags::VFPGA;
    for from in [S::Stop, S::Running, S::StopCopy, S::Resuming, S::PreCopy] {
        for to in [S::Stop, S::Running, S::StopCopy, S::Resuming, S::PreCopy] {
            let Ok(p) = path(f, from, to.raw()) else {
                continue;
            };
            for k in 0..p.len() {
                let mut fsm = Fsm::new(f);
                fsm.set_state(from.raw(), &mut FakeHooks::default())
                    .expect("start");
                let mut h = FakeHooks {
                    fail_at: Some((k, false)),
                    ..Default::default()
                };
                let e = fsm.set_state(to.raw(), &mut h).unwrap_err();
                let expect_now = if k == 0 { from } else { p[k - 1] };
                assert_eq!(fsm.state(), expect_now, "{from} -> {to}, arc {k} fails");
                assert!(matches!(e, FsmError::Arc { now, .. } if now == expect_now));
                assert_eq!(h.calls.len(), k + 1, "no arc after the failed one");
                // The intermediate state is valid: the machine goes on from it.
                fsm.set_state(S::Running.raw(), &mut FakeHooks::default())
                    .expect("recover to RUNNING from the intermediate state");
            }
        }
    }
}

/// Case 23: an unrecoverable failure moves to ERROR; every SET is refused
/// there with no hook; only reset leaves it.
#[test]
fn fatal_hook_failure_enters_error_which_only_reset_leaves() {
    let mut fsm = Fsm::new(MigrationFlags::VFPGA);
    let mut h = FakeHooks {
        fail_at: Some((1, true)),
        ..Default::default()
    };
    let e = fsm.set_state(S::StopCopy.raw(), &mut h).unwrap_err();
    assert!(matches!(
        e,
        FsmError::Arc {
            from: S::Stop,
            to: S::StopCopy,
            now: S::Error,
            ..
        }
    ));
    assert_eq!(fsm.state(), S::Error);
    for t in 0..NUM_STATES as u32 {
        let mut h = FakeHooks::default();
        assert!(fsm.set_state(t, &mut h).is_err(), "SET {t} in ERROR");
        assert!(h.calls.is_empty());
        assert_eq!(fsm.state(), S::Error);
    }
    fsm.reset();
    assert_eq!(fsm.state(), S::Running);
    fsm.set_state(S::Stop.raw(), &mut FakeHooks::default())
        .expect("usable after reset");
}

/// Case 16: the initial state is RUNNING.
#[test]
fn initial_state_is_running() {
    assert_eq!(Fsm::new(MigrationFlags::VFPGA).state(), S::Running);
    assert_eq!(
        Fsm::new(MigrationFlags::VFPGA).flags(),
        MigrationFlags::VFPGA
    );
}
