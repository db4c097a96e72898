//! Model families, one file each: the family's block structure, how its weights are
//! named, and its [`crate::registry::Family`] entry. The mixture-of-experts families
//! share the Llama-style decoder (`llama.rs`); their files hold what is theirs.

pub mod deepseek_v3;
pub mod llama;
pub mod minimax_m2;
pub mod mixtral;
pub mod qwen3_moe;
