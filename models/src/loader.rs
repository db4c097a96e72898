//! Weights from safetensors, memory-mapped: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Tensors are converted to f32 on request.

use crate::error::{read_json, Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use novastack_kernels::{StoredRows, WeightFormat};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A source of named tensors, converted to f32. Implemented by safetensors folders and,
/// later, other formats mapped to Hugging Face names.
pub trait TensorSource {
    /// The tensor `name` with exactly `shape`, as f32 values in row-major order.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    fn contains(&self, name: &str) -> bool;
    /// Where tensors come from, for error messages.
    fn describe(&self) -> String;
    /// The matrix `name` (`[n, k]`, checked as [`TensorSource::tensor`] checks it) as the
    /// file stores it, rows in the Hugging Face order, when that is a format a backend may
    /// compute on (bf16, f16, ggml's quantized formats); `None` where only f32 is offered.
    fn stored(&self, _name: &str, _n: usize, _k: usize) -> Result<Option<StoredRows>> {
        Ok(None)
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

pub struct SafetensorsSource {
    shards: Vec<Shard>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
    dir: PathBuf,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SafetensorsSource {
    /// Opens `DIR/model.safetensors`, or the shards named by `DIR/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index_path.exists() {
            let index: serde_json::Value = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: index_path.clone(),
                    field: "weight_map".into(),
                    msg: "missing or not an object".into(),
                })?;
            let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json here",
                ),
            });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let shard = open_shard(&path)?;
            for name in shard.metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(SafetensorsSource {
            shards,
            index,
            dir: dir.to_path_buf(),
        })
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let io = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is
    // not truncated while the process runs.
    let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let data_start = 8 + header_len;
    let data_len = mmap.len().saturating_sub(data_start);
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let elems: usize = info.shape.iter().product();
        if end > data_len
            || start > end
            || end - start != (elems * info.dtype.bitsize()).div_ceil(8)
        {
            return Err(Error::Safetensors {
                path: path.to_path_buf(),
                msg: format!("tensor `{name}` has offsets {start}..{end} outside the data or not matching its shape"),
            });
        }
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start,
        metadata,
    })
}

/// Converts little-endian `bytes` of `dtype` to f32, or `None` for other dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    const CHUNK: usize = 1 << 16;
    fn conv<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0.0f32; bytes.len() / N];
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * N))
            .for_each(|(o, b)| {
                for (v, c) in o.iter_mut().zip(b.chunks_exact(N)) {
                    *v = f(c.try_into().expect("chunk of N bytes"));
                }
            });
        out
    }
    Some(match dtype {
        Dtype::F32 => conv::<4>(bytes, f32::from_le_bytes),
        Dtype::F16 => conv::<2>(bytes, |b| f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => conv::<2>(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => conv::<8>(bytes, |b| f64::from_le_bytes(b) as f32),
        _ => return None,
    })
}

impl SafetensorsSource {
    /// Tensor `name`'s dtype, bytes and shard, its shape checked against `shape`.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8], &Path)> {
        let Some(&i) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                name: name.into(),
                looked_in: self.describe(),
            });
        };
        let shard = &self.shards[i];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.into(),
                looked_in: shard.path.display().to_string(),
            })?;
        if info.shape != shape {
            return Err(Error::Shape {
                name: name.into(),
                path: shard.path.clone(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        Ok((info.dtype, bytes, &shard.path))
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, bytes, path) = self.raw(name, shape)?;
        to_f32(dtype, bytes).ok_or_else(|| Error::DType {
            name: name.into(),
            path: path.to_path_buf(),
            dtype: format!("{dtype:?}"),
        })
    }

    /// bf16 and f16 matrices as stored (f32 ones gain nothing over the oracle's path).
    fn stored(&self, name: &str, n: usize, k: usize) -> Result<Option<StoredRows>> {
        let (dtype, bytes, _) = self.raw(name, &[n, k])?;
        let format = match dtype {
            Dtype::BF16 => WeightFormat::BF16,
            Dtype::F16 => WeightFormat::F16,
            _ => return Ok(None),
        };
        Ok(StoredRows::new(format, n, k, bytes.to_vec()))
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn describe(&self) -> String {
        if self.shards.len() == 1 {
            self.shards[0].path.display().to_string()
        } else {
            format!("{} shards in {}", self.shards.len(), self.dir.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("novastack-loader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn converts_dtypes_and_checks_shapes() {
        let d = tmpdir("dtypes");
        let vals = [1.5f32, -2.25, 0.0, 1e-6];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let i32b: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_st(
            &d,
            &[
                ("a", Dtype::F32, vec![2, 2], f32b),
                ("b", Dtype::F16, vec![4], f16b),
                ("c", Dtype::BF16, vec![4], bf16b),
                ("d", Dtype::I32, vec![2], i32b),
            ],
        );
        let src = SafetensorsSource::open_dir(&d).unwrap();
        assert_eq!(src.tensor("a", &[2, 2]).unwrap(), vals);
        assert_eq!(src.tensor("b", &[4]).unwrap()[1], -2.25);
        assert_eq!(src.tensor("c", &[4]).unwrap()[0], 1.5);
        let e = src.tensor("a", &[4]).unwrap_err().to_string();
        assert!(e.contains("`a`") && e.contains("[2, 2]"), "{e}");
        let e = src.tensor("zz", &[1]).unwrap_err().to_string();
        assert!(e.contains("`zz`"), "{e}");
        let e = src.tensor("d", &[2]).unwrap_err().to_string();
        assert!(e.contains("I32"), "{e}");
    }

    #[test]
    fn corrupt_and_missing_files_are_errors() {
        let d = tmpdir("corrupt");
        let e = SafetensorsSource::open_dir(&d).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        std::fs::write(
            d.join("model.safetensors"),
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
        )
        .unwrap();
        let e = SafetensorsSource::open_dir(&d).unwrap_err().to_string();
        assert!(
            e.contains("corrupt") && e.contains("model.safetensors"),
            "{e}"
        );
        // A truncated file: valid header, data cut short.
        write_st(&d, &[("a", Dtype::F32, vec![4], vec![0u8; 16])]);
        let full = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &full[..full.len() - 4]).unwrap();
        assert!(SafetensorsSource::open_dir(&d).is_err());
        // An index naming a shard that does not exist.
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let e = SafetensorsSource::open_dir(&d).unwrap_err().to_string();
        assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");
    }
}
