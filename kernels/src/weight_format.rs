//! How a weight matrix is stored on the host when it is kept in its file's precision:
//! the formats a model file holds (safetensors' bf16 / f16, GGUF's ggml block formats)
//! and rows of them as read from the file ([`StoredRows`]). A backend that can compute
//! on a format keeps it ([`crate::Backend::upload_stored_weight`]); the rest widen to f32.

/// A stored format. The quantized ones are ggml's block formats, byte for byte: a block
/// of [`WeightFormat::block_size`] values in [`WeightFormat::block_bytes`] bytes,
/// little-endian, scales as f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    /// 32 values: f16 scale, 32 signed bytes.
    Q8_0,
    /// 32 values: f16 scale, 16 bytes of nibbles (value = scale · (q − 8)).
    Q4_0,
    /// 32 values: f16 scale and min, 16 bytes of nibbles (value = scale · q + min).
    Q4_1,
    /// 32 values: f16 scale, 32 high bits, 16 bytes of nibbles (value = scale · (q − 16)).
    Q5_0,
    /// 32 values: f16 scale and min, 32 high bits, 16 bytes of nibbles.
    Q5_1,
    /// 256 values: f16 scale and min-scale, eight 6-bit (scale, min) pairs, nibbles.
    Q4K,
    /// 256 values: low nibbles, 2 high bits each, sixteen i8 scales, f16 scale.
    Q6K,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 10] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
    ];

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "F32",
            WeightFormat::F16 => "F16",
            WeightFormat::BF16 => "BF16",
            WeightFormat::Q8_0 => "Q8_0",
            WeightFormat::Q4_0 => "Q4_0",
            WeightFormat::Q4_1 => "Q4_1",
            WeightFormat::Q5_0 => "Q5_0",
            WeightFormat::Q5_1 => "Q5_1",
            WeightFormat::Q4K => "Q4_K",
            WeightFormat::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1 => 32,
            WeightFormat::Q4K | WeightFormat::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
            WeightFormat::Q4K => 144,
            WeightFormat::Q6K => 210,
        }
    }

    /// Bytes of one row of `k` values, or `None` when `k` is not a whole number of blocks.
    pub fn row_bytes(self, k: usize) -> Option<usize> {
        k.is_multiple_of(self.block_size())
            .then(|| k / self.block_size() * self.block_bytes())
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `rows` rows of `k` values in `format`, back to back as the file stores them.
#[derive(Debug, Clone)]
pub struct StoredRows {
    pub format: WeightFormat,
    pub rows: usize,
    pub bytes: Vec<u8>,
}

impl StoredRows {
    /// The rows, checked: `bytes` holds exactly `rows` rows of `k` values.
    pub fn new(format: WeightFormat, rows: usize, k: usize, bytes: Vec<u8>) -> Option<Self> {
        let per = format.row_bytes(k)?;
        (rows.checked_mul(per) == Some(bytes.len())).then_some(StoredRows {
            format,
            rows,
            bytes,
        })
    }

    /// Row `j`'s bytes (`k` values).
    pub fn row(&self, j: usize, k: usize) -> &[u8] {
        let per = self.format.row_bytes(k).unwrap_or(0);
        &self.bytes[j * per..(j + 1) * per]
    }

    /// The same rows reordered: row `i` of the result is row `order[i]` of these.
    pub fn reorder(&self, order: &[usize], k: usize) -> StoredRows {
        let mut bytes = Vec::with_capacity(self.bytes.len());
        for &j in order {
            bytes.extend_from_slice(self.row(j, k));
        }
        StoredRows {
            format: self.format,
            rows: order.len(),
            bytes,
        }
    }

    /// Bytes a pass over these rows reads.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}
