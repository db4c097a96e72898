//! The rope part of a `config.json`: the base and the scaling rule, from the hub's
//! `rope_theta` / `rope_scaling` or transformers 5's `rope_parameters`.

use super::{RawConfig, RopeScaling};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The rope base, the scaling rule, and the `mscale(factor, mscale_all_dim)` that
/// transformers' `yarn_apply_mscale` multiplies latent attention's softmax scale by
/// twice: for a rope type other than the default with a nonzero `mscale_all_dim`,
/// else 1.
pub(super) fn parse_rope(raw: &RawConfig, path: &Path) -> Result<(f32, RopeScaling, f64)> {
    let field = if raw.rope_parameters.is_some() {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let err = |msg: String| Error::Config {
        path: PathBuf::from(path),
        field: field.into(),
        msg,
    };
    let params = raw
        .rope_parameters
        .as_ref()
        .or(raw.rope_scaling.as_ref())
        .filter(|v| !v.is_null());
    let num =
        |key: &str| -> Option<f64> { params.and_then(|p| p.get(key)).and_then(Value::as_f64) };
    let theta = num("rope_theta").or(raw.rope_theta).unwrap_or(10000.0) as f32;
    let Some(p) = params else {
        return Ok((theta, RopeScaling::None, 1.0));
    };
    if !p.is_object() {
        return Err(err("must be an object".into()));
    }
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |key: &str| -> Result<f32> {
        num(key)
            .map(|v| v as f32)
            .ok_or_else(|| err(format!("rope type {kind:?} needs `{key}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "yarn" => {
            let max_positions = raw.max_position_embeddings.unwrap_or(4096) as f64;
            // As transformers: the top-level `original_max_position_embeddings` wins
            // (Phi-3 style), then the one in the rope block, then the model's context.
            let original = raw
                .original_max_position_embeddings
                .or_else(|| num("original_max_position_embeddings"))
                .unwrap_or(max_positions);
            if original <= 0.0 {
                return Err(err(
                    "`original_max_position_embeddings` must be positive".into()
                ));
            }
            let factor = num("factor").unwrap_or(max_positions / original);
            if factor < 1.0 {
                return Err(err(format!("`factor` must be at least 1, got {factor}")));
            }
            let mscale = yarn_mscale;
            let attention_factor = match (
                num("attention_factor"),
                num("mscale").filter(|m| *m != 0.0),
                num("mscale_all_dim").filter(|m| *m != 0.0),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor: factor as f32,
                original_max_position_embeddings: original as f32,
                beta_fast: num("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0) as f32,
                beta_slow: num("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0) as f32,
                truncate: params
                    .and_then(|p| p.get("truncate"))
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                attention_factor: attention_factor as f32,
            }
        }
        other => {
            return Err(err(format!(
                "rope type {other:?} is not supported (default, linear, llama3, yarn)"
            )))
        }
    };
    let mscale_all_dim = match (&scaling, num("mscale_all_dim").filter(|m| *m != 0.0)) {
        (RopeScaling::None, _) | (_, None) => 1.0,
        (
            RopeScaling::Linear { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. },
            Some(all),
        ) => yarn_mscale(*factor as f64, all),
    };
    Ok((theta, scaling, mscale_all_dim))
}

/// YaRN's `get_mscale`: 1 up to a factor of 1, then `0.1 · m · ln(factor) + 1`.
fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}
