//! Renderings of the lab's results, which this layer only reads: the run report as text
//! ([`render_text`]; JSON is the report's own serde form, [`crate::Report::to_json`]), the
//! sweep table, its exporters (CSV, JSON, Markdown) and its SVG plot, the IPC benchmark,
//! processes against threads (`compare`), the advice, and the catalogue of workloads.

pub mod advice;
pub mod catalogue;
pub mod compare;
pub mod export;
pub mod ipc_bench;
#[cfg(feature = "plot")]
pub mod plot;
pub mod sweep;
mod text;

pub use text::{mismatch_text, render_text};
