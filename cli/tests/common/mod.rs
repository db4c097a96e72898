//! Helpers the `novastack` binary's test files share: run it, read a fixture's golden
//! references, spell token ids as a flag value.
#![allow(dead_code)] // each test file uses its own subset

pub mod process;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Runs the built binary with `args`, and `env` set.
pub fn novastack_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_novastack"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn novastack(args: &[&str]) -> Output {
    novastack_env(args, &[])
}

pub fn golden(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap()
}

/// `[1, 2, 3]` as `1,2,3`.
pub fn ids_arg(v: &Value) -> String {
    let ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    ids.join(",")
}
