//! Which AMD architecture the kernels are compiled for: the device's own
//! `gcnArchName` (e.g. `gfx90a:sramecc+:xnack-`), read from `hipDeviceProp_t`, unless
//! `NOVASTACK_HIP_ARCH` overrides it. A code object built for another architecture
//! fails at `hipModuleLoadData` with an error that does not say why, so guessing (the
//! old default, gfx90a) was right on MI250 only.
//!
//! `hipDeviceProp_t` changed layout in ROCm 6 (`hipGetDevicePropertiesR0600`), and a
//! binding cannot include the header of the runtime it will meet, so the struct is
//! treated as bytes: a zeroed buffer much larger than any known layout is filled by the
//! runtime, `gcnArchName` is read at the offset of the layout that entry point fills,
//! and the result is accepted only if it reads as an architecture name. Anything else
//! (an unknown layout) falls back to looking for the one string in the struct that
//! reads as one, and failing that is an error naming the override.

use crate::{Error, Result};

/// Bytes handed to `hipGetDeviceProperties*`: the ROCm 6 struct is 1472 bytes and the
/// ROCm 5 one 792; the slack absorbs fields a later runtime appends.
pub(super) const PROPS_BUF: usize = 8192;

/// `gcnArchName` is `char[256]` in every layout.
const ARCH_NAME_LEN: usize = 256;

/// The `hipDeviceProp_t` layouts whose `gcnArchName` offset is known, by the entry
/// point that fills them. Offsets are `offsetof` from compiled probes against the
/// headers (Debian's ROCm 5.2 for `R0000`, ROCm 6's `hipDeviceProp_tR0600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PropsLayout {
    /// `hipGetDevicePropertiesR0600` (ROCm 6 and later).
    R0600,
    /// `hipGetDeviceProperties` on ROCm 5 (`hipGetDevicePropertiesR0000` on ROCm 6).
    R0000,
}

impl PropsLayout {
    /// Where `gcnArchName` starts.
    pub(super) fn arch_offset(self) -> usize {
        match self {
            PropsLayout::R0600 => 1160,
            PropsLayout::R0000 => 396,
        }
    }
}

/// The compile target named by the NUL-terminated string at the start of `field`, if
/// it reads as one: `gfx` and hex digits, then optional `:feature+` / `:feature-`
/// target-ID settings (`gfx90a:sramecc+:xnack-`).
pub(super) fn parse_target(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&field[..end]).ok()?;
    is_target(s).then(|| s.to_string())
}

/// Whether `s` is an AMD target ID: `gfx<hex digits>` and optional `:<feature>[+-]`.
fn is_target(s: &str) -> bool {
    let mut parts = s.split(':');
    let base = parts.next().unwrap_or_default();
    let digits = match base.strip_prefix("gfx") {
        Some(d) => d,
        None => return false,
    };
    let base_ok = (2..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit());
    base_ok
        && parts.all(|f| {
            let name = f.strip_suffix(['+', '-']).unwrap_or_default();
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// The device's compile target from a filled `hipDeviceProp_t` buffer: `gcnArchName`
/// at the layout's offset, else the only architecture named by the strings in the
/// buffer that start where a string starts (after a NUL, or at 0) and read as a target.
pub(super) fn target_from_props(props: &[u8], layout: PropsLayout) -> Option<String> {
    let at = layout.arch_offset();
    if let Some(field) = props.get(at..(at + ARCH_NAME_LEN).min(props.len())) {
        if let Some(t) = parse_target(field) {
            return Some(t);
        }
    }
    let mut found = None;
    for i in 0..props.len() {
        if props[i] == b'g' && (i == 0 || props[i - 1] == 0) {
            let end = (i + ARCH_NAME_LEN).min(props.len());
            if let Some(t) = parse_target(&props[i..end]) {
                found = match found {
                    None => Some(t),
                    // The name field may read `gfx90a` where gcnArchName reads
                    // `gfx90a:xnack-`: the same chip, keep the full target ID.
                    Some(f) if base(&f) == base(&t) => Some(if t.len() > f.len() { t } else { f }),
                    // Two different chips named: refuse to guess.
                    Some(_) => return None,
                };
            }
        }
    }
    found
}

/// The architecture without target-ID features, for display and for rules by family
/// (`gfx90a:sramecc+:xnack-` → `gfx90a`).
pub fn base(target: &str) -> &str {
    target.split(':').next().unwrap_or(target)
}

/// `NOVASTACK_HIP_ARCH` when set and not empty.
pub(super) fn env_override() -> Option<String> {
    std::env::var("NOVASTACK_HIP_ARCH")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The compile target: the override if given (taken as is: hiprtc reports a bad name
/// itself), else what the device reported, else an error saying how to set it.
pub(super) fn select(override_: Option<String>, device: Result<String>) -> Result<String> {
    match (override_, device) {
        (Some(o), _) => Ok(o),
        (None, Ok(t)) => Ok(t),
        (None, Err(e)) => Err(Error::Unavailable(format!(
            "cannot tell which AMD architecture to compile for ({e}); set NOVASTACK_HIP_ARCH (e.g. gfx90a for MI250, gfx942 for MI300)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props_with(at: usize, s: &str) -> Vec<u8> {
        let mut p = vec![0u8; PROPS_BUF];
        p[at..at + s.len()].copy_from_slice(s.as_bytes());
        p
    }

    #[test]
    fn target_ids_parse_with_and_without_features() {
        for ok in [
            "gfx90a",
            "gfx942:sramecc+:xnack-",
            "gfx1100",
            "gfx908:xnack+",
            "gfx90c",
        ] {
            assert_eq!(
                parse_target(format!("{ok}\0junk").as_bytes()),
                Some(ok.into())
            );
        }
        for bad in [
            "",
            "gfx",
            "Radeon",
            "gfx90a:",
            "gfx90a:xnack",
            "gfx9z0",
            "AMD gfx90a",
            "gfx1234567",
        ] {
            assert_eq!(parse_target(format!("{bad}\0").as_bytes()), None, "{bad:?}");
        }
        // No terminating NUL within the field: not a string we can trust.
        assert_eq!(parse_target(b"gfx90a"), None);
    }

    #[test]
    fn the_layouts_offset_is_read_first() {
        for layout in [PropsLayout::R0600, PropsLayout::R0000] {
            let mut p = props_with(layout.arch_offset(), "gfx90a:sramecc+:xnack-");
            p[..20].copy_from_slice(b"AMD Instinct MI250X\0");
            assert_eq!(
                target_from_props(&p, layout).as_deref(),
                Some("gfx90a:sramecc+:xnack-")
            );
        }
    }

    /// A runtime whose layout is not the expected one: the one target-like string is
    /// found; two different ones, or none, are refused.
    #[test]
    fn an_unknown_layout_falls_back_to_the_only_target_string() {
        let p = props_with(1200, "gfx942:sramecc+:xnack-");
        assert_eq!(
            target_from_props(&p, PropsLayout::R0600).as_deref(),
            Some("gfx942:sramecc+:xnack-")
        );
        // The name field reading "gfx90a" too, as some runtimes report it: the same
        // chip, and the full target ID is kept.
        let mut p = props_with(1200, "gfx90a:xnack-");
        p[..7].copy_from_slice(b"gfx90a\0");
        assert_eq!(
            target_from_props(&p, PropsLayout::R0000).as_deref(),
            Some("gfx90a:xnack-")
        );
        // Two different chips: refused.
        p[..8].copy_from_slice(b"gfx1100\0");
        assert_eq!(target_from_props(&p, PropsLayout::R0000), None);
        let p = props_with(0, "AMD Radeon\0");
        assert_eq!(target_from_props(&p, PropsLayout::R0600), None);
        // A "gfx" inside another string is not a string start.
        let p = props_with(0, "Device gfx90a\0");
        assert_eq!(target_from_props(&p, PropsLayout::R0600), None);
        // A short buffer does not panic.
        assert_eq!(
            target_from_props(b"gfx90a\0", PropsLayout::R0600).as_deref(),
            Some("gfx90a")
        );
    }

    #[test]
    fn base_strips_target_features() {
        assert_eq!(base("gfx90a:sramecc+:xnack-"), "gfx90a");
        assert_eq!(base("gfx1100"), "gfx1100");
        assert_eq!(base(""), "");
    }

    #[test]
    fn the_override_wins_and_a_missing_arch_names_it() {
        let dev = || Ok::<_, Error>("gfx942:sramecc+:xnack-".to_string());
        assert_eq!(select(Some("gfx90a".into()), dev()).unwrap(), "gfx90a");
        assert_eq!(select(None, dev()).unwrap(), "gfx942:sramecc+:xnack-");
        assert_eq!(
            select(Some("gfx90a".into()), Err(Error::Unavailable("x".into()))).unwrap(),
            "gfx90a"
        );
        let e = select(None, Err(Error::Unavailable("unreadable".into())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("NOVASTACK_HIP_ARCH") && e.contains("unreadable"),
            "{e}"
        );
    }
}
