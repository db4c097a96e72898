//! Shared helpers for the end-to-end tests.

use std::path::PathBuf;

/// The repository's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every golden model fixture folder, sorted.
pub fn model_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("models"))
        .expect("tests/fixtures/models exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    dirs
}
