//! `vfpga crosscheck --shard K/N --json` then `--merge`: the merged report of
//! the shards counts exactly what one unsharded run of the same campaign
//! counts, and a missing or repeated shard is reported. Runs the binary on
//! a model-vs-model pair (no simulator needed).

#![allow(clippy::unwrap_used)] // test code: a failure is a test failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("crosscheck-merge-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn vfpga(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfpga"))
        .args(args)
        .output()
        .unwrap()
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn merged_shards_count_what_one_run_counts() {
    let d = dir();
    let cfg = d.join("pair.yaml");
    std::fs::write(
        &cfg,
        "backend: lockstep\nlockstep: {reference: model, checked: model}\ndevice:\n  devmem_size: 64KiB\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = d.join("replays");
    let out = out.to_str().unwrap();
    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let run = |seeds: &str, extra: &[&str], json_out: &str| {
        let mut a = vec![
            "crosscheck",
            "--config",
            cfg,
            "--seeds",
            seeds,
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--json", json_out]);
        let o = vfpga(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run("7", &[], &path("all.json"));
    run("7", &["--shard", "1/2"], &path("s1.json"));
    run("7", &["--shard", "2/2"], &path("s2.json"));

    let o = vfpga(&[
        "crosscheck",
        "--merge",
        &path("s2.json"),
        &path("s1.json"),
        "--json",
        &path("merged.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (all, merged) = (json(&d.join("all.json")), json(&d.join("merged.json")));
    assert_eq!(merged["schema_version"], 1);
    assert_eq!(merged["shards"], serde_json::json!([1, 2]));
    assert_eq!(merged["complete"], true);
    assert_eq!(merged["passed"], true);
    for k in [
        "pair",
        "seeds",
        "scenarios",
        "scenario_ops",
        "operations",
        "operations_compared",
        "transplants",
        "divergences",
        "errors",
        "failing_seeds",
    ] {
        assert_eq!(merged[k], all[k], "{k}");
    }
    assert_eq!(all["scenarios"], 7);

    // One shard alone is an incomplete campaign: exit 1, the missing one named.
    let o = vfpga(&["crosscheck", "--merge", &path("s1.json")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("missing shards: 2"));
    // The same shard twice is refused.
    let o = vfpga(&["crosscheck", "--merge", &path("s1.json"), &path("s1.json")]);
    assert_eq!(o.status.code(), Some(2));
    // A shard of another campaign (other --seeds) is refused.
    run("9", &["--shard", "2/2"], &path("other.json"));
    let o = vfpga(&[
        "crosscheck",
        "--merge",
        &path("s1.json"),
        &path("other.json"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not of the campaign"));
    let _ = std::fs::remove_dir_all(&d);
}
