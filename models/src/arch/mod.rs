//! Model families, one file each: the family's block structure, how its weights are
//! named, and its [`crate::registry::Family`] entry.

pub mod llama;
