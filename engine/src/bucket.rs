//! Context-length buckets: a step's batch is drawn from requests of like context length.

/// Bucket `i` holds context lengths in `[boundaries[i-1], boundaries[i])`; the last
/// bucket is unbounded. No boundaries means one bucket (bucketing off).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Buckets {
    boundaries: Vec<usize>,
}

impl Buckets {
    /// Boundaries are sorted and deduplicated; zeros are dropped.
    pub fn new(mut boundaries: Vec<usize>) -> Self {
        boundaries.retain(|&b| b > 0);
        boundaries.sort_unstable();
        boundaries.dedup();
        Buckets { boundaries }
    }

    /// vLLM-style default: 0-512-2k-8k-32k-128k-...
    pub fn default_boundaries() -> Vec<usize> {
        vec![512, 2048, 8192, 32768, 131072]
    }

    pub fn off() -> Self {
        Buckets::default()
    }

    pub fn num_buckets(&self) -> usize {
        self.boundaries.len() + 1
    }

    pub fn of(&self, context_len: usize) -> usize {
        self.boundaries
            .iter()
            .position(|&b| context_len < b)
            .unwrap_or(self.boundaries.len())
    }

    /// `off` (or empty), or comma-separated token counts such as `512,2048,8192`.
    pub fn parse(s: &str) -> Result<Buckets, String> {
        if s == "off" || s.is_empty() {
            return Ok(Buckets::off());
        }
        s.split(',')
            .map(|v| v.trim().parse())
            .collect::<Result<Vec<usize>, _>>()
            .map(Buckets::new)
            .map_err(|_| {
                format!("buckets must be comma-separated token counts or `off`, got {s:?}")
            })
    }

    pub fn boundaries(&self) -> &[usize] {
        &self.boundaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_length() {
        let b = Buckets::new(vec![2048, 512, 0, 512]);
        assert_eq!(b.boundaries(), &[512, 2048]);
        assert_eq!((b.of(0), b.of(511), b.of(512), b.of(5000)), (0, 0, 1, 2));
        assert_eq!(Buckets::off().of(99999), 0);
        assert_eq!(
            Buckets::parse("2048, 512").unwrap().boundaries(),
            &[512, 2048]
        );
        assert_eq!(Buckets::parse("off").unwrap(), Buckets::off());
        assert!(Buckets::parse("512,x").unwrap_err().contains("512,x"));
    }
}
