//! `novastack bench replicas` end to end on 127.0.0.1: two engine replicas of a tiny
//! fixture model behind the gateway, every balance policy; one report row per policy,
//! no failed request, every request served by a listed replica. Nothing is timed.

mod common;

use common::process::fixture;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bench_replicas_runs_every_policy_through_the_pool() {
    let dir = std::env::temp_dir().join(format!("novastack-bench-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("result.json");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let model = fixture("llama-f32");
    let mut child = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args(["bench", "replicas", "--model"])
        .arg(&model)
        .args([
            "--replicas",
            "2",
            "--balance",
            "prefix,least_loaded,round_robin",
            "--conversations",
            "4",
            "--turns",
            "2",
            "--concurrency",
            "2",
            "--max-tokens",
            "4",
            "--system-prompts",
            "2",
            "--system-words",
            "60",
            "--user-words",
            "12",
            "--engine-arg=--kv-cache-mb=16",
            "--startup-timeout",
            "60",
            "--request-timeout",
            "60",
            "--result-json",
        ])
        .arg(&json_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // A bound, not a timing assertion: a hung run fails instead of hanging CI.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench replicas still running after 60 s\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        status.success(),
        "bench replicas failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for policy in ["prefix", "least_loaded", "round_robin"] {
        let rows = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("| {policy} |")))
            .count();
        assert_eq!(rows, 1, "{policy}: {rows} rows in\n{stdout}");
    }

    let v: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 3);
    for p in policies {
        let name = p["policy"].as_str().unwrap();
        assert_eq!(p["failed"], 0, "{name}: {p}");
        assert_eq!(p["completed"], 8, "{name}");
        let urls: Vec<&str> = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["url"].as_str().unwrap())
            .collect();
        assert_eq!(urls.len(), 2);
        let outcomes = p["outcomes"].as_array().unwrap();
        assert_eq!(outcomes.len(), 8);
        for o in outcomes {
            let replica = o["replica"].as_str().unwrap();
            assert!(
                urls.contains(&replica),
                "{name}: a request served by {replica:?}, not one of {urls:?}"
            );
        }
        let per_replica: u64 = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(per_replica, 8, "{name}");
        // The engines' counters were read: the prompts share a system prompt, so at
        // least one prefix-cache lookup happened on some replica.
        let queried: f64 = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["queried_blocks"].as_f64().unwrap())
            .sum();
        assert!(
            queried > 0.0,
            "{name}: no prefix-cache lookups counted: {p}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
