//! The model registry: which family runs a checkpoint. A Hugging Face folder is matched
//! by the first entry of `architectures` in its config.json, a GGUF file by its
//! `general.architecture`; the family then reads its own config and weights. Adding a
//! family is one line in [`families`].

use crate::arch;
use crate::causal_lm::CausalLm;
use crate::error::{read_json, Error, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::loader::SafetensorsSource;
use novastack_kernels::Backend;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A model built by a family, behind the model seam.
pub type BoxedModel<B> = Box<dyn CausalLm<B>>;

/// A Hugging Face model folder as a family sees it: config.json already read, weights
/// opened when the family asks (after it has checked its config).
pub struct HfCheckpoint<'a> {
    pub dir: &'a Path,
    pub config_path: PathBuf,
    pub config: Value,
}

impl HfCheckpoint<'_> {
    /// The folder's safetensors weights.
    pub fn weights(&self) -> Result<SafetensorsSource> {
        SafetensorsSource::open_dir(self.dir)
    }
}

/// Builds a family's model from a Hugging Face folder.
pub type LoadHf<B> = fn(HfCheckpoint<'_>, B) -> Result<BoxedModel<B>>;

/// Builds a family's model from a GGUF file.
pub type LoadGguf<B> = fn(&GgufFile, B) -> Result<BoxedModel<B>>;

/// One family of architectures: the names it answers to and how to build it.
pub struct Family<B: Backend> {
    pub name: &'static str,
    /// config.json `architectures` values it runs.
    pub hf_architectures: &'static [&'static str],
    /// GGUF `general.architecture` values it runs.
    pub gguf_architectures: &'static [&'static str],
    pub load_hf: LoadHf<B>,
    /// `None` for a family with no GGUF mapping.
    pub load_gguf: Option<LoadGguf<B>>,
}

/// Every supported family.
pub fn families<B: Backend + 'static>() -> Vec<Family<B>> {
    vec![
        arch::llama::family(),
        arch::qwen3_moe::family(),
        arch::mixtral::family(),
        arch::minimax_m2::family(),
        arch::deepseek_v3::family(),
    ]
}

/// All config.json architecture names, for error messages.
pub fn supported_hf<B: Backend + 'static>() -> String {
    let fams = families::<B>();
    let names: Vec<&str> = fams
        .iter()
        .flat_map(|f| f.hf_architectures)
        .copied()
        .collect();
    names.join(", ")
}

/// All GGUF architecture names, for error messages.
pub fn supported_gguf<B: Backend + 'static>() -> String {
    let fams = families::<B>();
    let names: Vec<&str> = fams
        .iter()
        .filter(|f| f.load_gguf.is_some())
        .flat_map(|f| f.gguf_architectures)
        .copied()
        .collect();
    names.join(", ")
}

/// Builds the model of a Hugging Face folder (`DIR/config.json` + safetensors).
pub fn load_hf_model<B: Backend + 'static>(dir: &Path, backend: B) -> Result<BoxedModel<B>> {
    let config_path = dir.join("config.json");
    let config: Value = read_json(&config_path)?;
    let name = match config.get("architectures") {
        Some(Value::Array(a)) if !a.is_empty() => match &a[0] {
            Value::String(s) => s.clone(),
            other => {
                return Err(Error::Config {
                    path: config_path,
                    field: "architectures".into(),
                    msg: format!("expected class names, got {other}"),
                })
            }
        },
        _ => {
            return Err(Error::Config {
                path: config_path,
                field: "architectures".into(),
                msg: "missing or empty".into(),
            })
        }
    };
    let Some(family) = families::<B>()
        .into_iter()
        .find(|f| f.hf_architectures.contains(&name.as_str()))
    else {
        return Err(Error::UnknownArchitecture {
            path: config_path,
            found: name,
            supported: supported_hf::<B>(),
        });
    };
    (family.load_hf)(
        HfCheckpoint {
            dir,
            config_path,
            config,
        },
        backend,
    )
}

/// Builds the model of an open GGUF file.
pub fn load_gguf_model<B: Backend + 'static>(file: &GgufFile, backend: B) -> Result<BoxedModel<B>> {
    let arch = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| Error::Config {
            path: file.path.clone(),
            field: "general.architecture".into(),
            msg: "missing".into(),
        })?;
    let load = families::<B>()
        .into_iter()
        .find(|f| f.gguf_architectures.contains(&arch))
        .and_then(|f| f.load_gguf);
    match load {
        Some(load) => load(file, backend),
        None => Err(Error::UnknownArchitecture {
            path: file.path.clone(),
            found: format!("GGUF architecture {arch:?}"),
            supported: supported_gguf::<B>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novastack_kernels::CpuBackend;
    use serde_json::json;

    fn dir_with_config(tag: &str, config: &Value) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("novastack-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        d
    }

    fn err(tag: &str, config: Value) -> String {
        let d = dir_with_config(tag, &config);
        match load_hf_model(&d, CpuBackend::new()) {
            Ok(_) => panic!("{tag}: loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_architectures_name_themselves_and_the_supported_ones() {
        let e = err("unknown", json!({"architectures": ["GPTNeoXForCausalLM"]}));
        assert!(e.contains("\"GPTNeoXForCausalLM\""), "{e}");
        assert!(e.contains("config.json"), "{e}");
        for name in [
            "LlamaForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "MistralForCausalLM",
        ] {
            assert!(e.contains(name), "{e}");
        }
        let e = err("missing", json!({"hidden_size": 8}));
        assert!(
            e.contains("architectures") && e.contains("missing or empty"),
            "{e}"
        );
        let e = err("wrong-type", json!({"architectures": [3]}));
        assert!(e.contains("architectures"), "{e}");
    }

    #[test]
    fn a_known_architecture_goes_to_its_family() {
        // The family parses its config (here incomplete) before opening any weights.
        let e = err("known", json!({"architectures": ["Qwen3ForCausalLM"]}));
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn every_name_belongs_to_one_family() {
        let fams = families::<CpuBackend>();
        let mut seen = std::collections::HashSet::new();
        for f in &fams {
            for n in f.hf_architectures.iter().chain(f.gguf_architectures) {
                assert!(seen.insert(*n), "{n} is claimed twice");
            }
        }
        assert_eq!(
            supported_gguf::<CpuBackend>(),
            "llama, qwen3moe, minimax-m2"
        );
    }
}
