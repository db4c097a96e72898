//! What the simulated device compiles: the backend's kernel source with each
//! `__shared__` declaration rewritten for the simulator's per-block shared memory, and
//! one `ns_sim_run_<kernel>` entry point appended per requested kernel.
//!
//! A static `__shared__ T name[N];` becomes `NS_SIM_SHARED(T, name, [N]);` (a reference
//! into the block's arena, poisoned before each block), and `extern __shared__ T
//! name[];` becomes a pointer to the launch's dynamic shared memory. Anything else
//! spelled `__shared__` is left alone, and `ns_sim.h` turns it into a compile error,
//! so a declaration the rewrite does not understand can never silently become a global.

use crate::{Error, Result};

/// `src` with its `__shared__` declarations rewritten (see the module docs).
pub(super) fn rewrite_shared(file: &str, src: &str) -> Result<String> {
    let mut out = String::with_capacity(src.len() + 256);
    for (i, line) in src.lines().enumerate() {
        out.push_str(&rewrite_line(line).map_err(|e| {
            Error::Unavailable(format!("sim: {file}:{}: {e}: `{}`", i + 1, line.trim()))
        })?);
        out.push('\n');
    }
    Ok(out)
}

fn rewrite_line(line: &str) -> std::result::Result<String, &'static str> {
    let Some(at) = line.find("__shared__") else {
        return Ok(line.to_string());
    };
    let (head, rest) = line.split_at(at);
    let decl_start = head.trim_end();
    let is_extern = decl_start.ends_with("extern");
    let indent = &line[..line.len() - line.trim_start().len()];
    let after = &rest["__shared__".len()..];
    let Some(semi) = after.find(';') else {
        return Err("a __shared__ declaration must end on its line");
    };
    let (decl, tail) = (after[..semi].trim(), &after[semi + 1..]);
    let bracket = decl.find('[').unwrap_or(decl.len());
    let (ty_name, dims) = (decl[..bracket].trim_end(), &decl[bracket..]);
    let split = ty_name
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .ok_or("expected `__shared__ TYPE NAME[DIMS];`")?;
    let (ty, name) = (ty_name[..=split].trim(), &ty_name[split + 1..]);
    if ty.is_empty() || name.is_empty() || decl.contains(',') || decl.contains('=') {
        return Err("expected one `__shared__ TYPE NAME[DIMS];` per line");
    }
    if is_extern {
        if dims != "[]" {
            return Err("extern __shared__ must be an unsized array");
        }
        let prefix = &decl_start[..decl_start.len() - "extern".len()];
        return Ok(format!(
            "{prefix}{ty}* {name} = ({ty}*)::ns_sim::dyn_shared();{tail}"
        ));
    }
    if !head.trim().is_empty() {
        return Err("__shared__ must start its declaration");
    }
    Ok(format!(
        "{indent}NS_SIM_SHARED({ty}, {name}, {dims});{tail}"
    ))
}

/// One C entry point per kernel name, which runs a range of the launch's blocks.
pub(super) fn entry_points(names: &[String]) -> String {
    let mut s = String::from("\n// Entry points of the simulated device (vendor/sim/source.rs).\n");
    for n in names {
        s.push_str(&format!(
            "extern \"C\" __attribute__((visibility(\"default\"))) void ns_sim_run_{n}(\
             const ::ns_sim::Config* c, void** p, const size_t* s, size_t n, long b, long e, \
             ::ns_sim::Report* r) {{ ::ns_sim::run(\"{n}\", {n}, c, p, s, n, b, e, r); }}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_shared_declarations_are_rewritten() {
        let src = "  __shared__ float q[NS_MAX_HEAD_DIM];  // q\n\
                   __shared__ int si[NS_MAX_WARPS];\n\
                   __shared__ float total;\n\
                   \x20 extern __shared__ float smem[];\n\
                   int x = 1;\n";
        let out = rewrite_shared("a.hip", src).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "  NS_SIM_SHARED(float, q, [NS_MAX_HEAD_DIM]);  // q"
        );
        assert_eq!(lines[1], "NS_SIM_SHARED(int, si, [NS_MAX_WARPS]);");
        assert_eq!(lines[2], "NS_SIM_SHARED(float, total, );");
        assert_eq!(lines[3], "  float* smem = (float*)::ns_sim::dyn_shared();");
        assert_eq!(lines[4], "int x = 1;");
    }

    #[test]
    fn declarations_it_cannot_rewrite_are_errors_naming_the_line() {
        for bad in [
            "__shared__ float a[4], b[4];",
            "__shared__ float a[4]",
            "extern __shared__ float smem[16];",
            "static __shared__ float a[4];",
        ] {
            let e = rewrite_shared("k.hip", &format!("// x\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("k.hip:2"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_kernel_source_rewrites() {
        for (file, src) in crate::sources::KERNELS {
            let out = rewrite_shared(file, src).unwrap();
            assert!(!out.contains("__shared__"), "{file}");
        }
    }

    #[test]
    fn entry_points_name_each_kernel() {
        let s = entry_points(&["rms_norm_f32".into(), "argmax_rows".into()]);
        assert!(s.contains("void ns_sim_run_rms_norm_f32("));
        assert!(s.contains("::ns_sim::run(\"argmax_rows\", argmax_rows,"));
    }
}
