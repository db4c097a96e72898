//! The GGUF container: header, typed metadata, tensor infos, aligned data section.

use super::dequant::{dequantize, GgmlType};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A metadata value as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type as u64 (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them: fastest-varying first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape in row-major (numpy / Hugging Face) order: GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The element count, `None` when it overflows u64 (a corrupt or hostile file).
    pub fn num_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    /// Keys in file order (for listing).
    pub metadata_keys: Vec<String>,
    pub tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    mmap: Mmap,
    data_start: usize,
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg: format!("{msg} (at byte {})", self.pos),
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(format!("unexpected end of file reading {n} bytes")));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    /// A count, sanity-checked against the bytes left so a corrupt file cannot make us
    /// allocate without bound.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > left {
            return Err(self.err(format!("count {n} exceeds the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8".into()))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>()?[0]),
            1 => MetaValue::I8(self.arr::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("bool value {b}"))),
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth > 8 {
                    return Err(self.err("arrays nested too deeply".into()));
                }
                let elem = self.u32()?;
                let n = self.count(1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: read-only mapping; we assume the file is not truncated while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
        };
        if r.bytes(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                msg: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let num_tensors = r.count(24)?;
        let num_kv = r.count(12)?;
        let mut metadata = HashMap::new();
        let mut metadata_keys = Vec::new();
        for _ in 0..num_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata_keys.push(key.clone());
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(num_tensors);
        let mut index = HashMap::new();
        for _ in 0..num_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 8 {
                return Err(r.err(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            index.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let f = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            metadata_keys,
            tensors,
            index,
            mmap,
            data_start,
        };
        for t in &f.tensors {
            f.tensor_bytes(t)?;
        }
        Ok(f)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor, checked to lie inside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let err = |msg: String| Error::Gguf {
            path: self.path.clone(),
            msg: format!("tensor `{}`: {msg}", t.name),
        };
        let ty = GgmlType::from_id(t.ggml_type).ok_or_else(|| {
            err(format!(
                "unsupported tensor type {}",
                GgmlType::name_of(t.ggml_type)
            ))
        })?;
        let n = t
            .num_elements()
            .ok_or_else(|| err(format!("dimensions {:?} overflow", t.dims)))?;
        let row = t.dims.first().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 {
            return Err(err(format!(
                "row length {row} is not a multiple of the {} block size {}",
                ty.name(),
                ty.block_size()
            )));
        }
        let len = (n / ty.block_size() as u64)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(|| err("size overflows".into()))?;
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.mmap.len() as u64 => {
                Ok(&self.mmap[s as usize..e as usize])
            }
            _ => Err(err(format!(
                "data at offset {} (+{len} bytes) lies outside the file",
                t.offset
            ))),
        }
    }

    /// A tensor dequantized to f32, in row-major order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        let ty = GgmlType::from_id(t.ggml_type).expect("checked by tensor_bytes");
        Ok(dequantize(ty, bytes))
    }
}
