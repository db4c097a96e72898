//! GFLOP/s of the CPU backend's matmul against matrixmultiply's sgemm on the same shapes
//! (SmolLM2-135M and Llama-shaped projections), same threads, the best of five
//! alternating runs of each:
//! `cargo run --release -p novastack-kernels --example matmul_gflops`.
use novastack_kernels::{Backend, CpuBackend};
use std::time::Instant;

fn main() {
    let b = CpuBackend::new();
    println!("| m | n | k | novastack GFLOP/s | matrixmultiply GFLOP/s | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (m, n, k) in [
        (1, 1536, 576),
        (16, 1536, 576),
        (16, 3072, 576),
        (256, 3072, 576),
        (1024, 3072, 576),
        (1024, 576, 1536),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut out = vec![0.0f32; m * n];
        let mut out_mm = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = ((4e9 / flops) as usize).clamp(3, 2000);
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let wp = b.upload_weight(&w, 1, n, k).unwrap();
        let mut ours_f = || b.matmul(&x, &wp, None, m, k, n, &mut out).unwrap();
        let mut mm_f = || {
            use rayon::prelude::*;
            let per = n.div_ceil(rayon::current_num_threads() * 2).div_ceil(64) * 64;
            let ptr = out_mm.as_mut_ptr() as usize;
            (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
                let j0 = t * per;
                let nj = per.min(n - j0);
                // SAFETY: disjoint columns per task, sizes as allocated.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        nj,
                        1.0,
                        x.as_ptr(),
                        k as isize,
                        1,
                        w.as_ptr().add(j0 * k),
                        1,
                        k as isize,
                        0.0,
                        (ptr as *mut f32).add(j0),
                        n as isize,
                        1,
                    )
                }
            })
        };
        // The best of five alternating runs each: the machine's other load only slows
        // a run down.
        let (mut ours, mut mm) = (0.0f64, 0.0f64);
        for _ in 0..5 {
            ours = ours.max(time(&mut ours_f));
            mm = mm.max(time(&mut mm_f));
        }
        println!(
            "| {m} | {n} | {k} | {ours:.1} | {mm:.1} | {:.2} |",
            ours / mm
        );
    }
}
