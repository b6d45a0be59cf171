//! Renderings of the lab's results, which this layer only reads: the run report as text
//! ([`render_text`]; JSON is the report's own serde form, [`crate::Report::to_json`]), the
//! sweep table, its exporters (CSV, JSON, Markdown) and its SVG plot, the IPC benchmark,
//! processes against threads (`compare`), the advice, the catalogue of workloads, and a
//! run's timeline as a Chrome trace ([`trace`]) and as an SVG picture (`timeline`, with the
//! `plot` feature).

pub mod advice;
pub mod catalogue;
pub mod compare;
pub mod export;
pub mod ipc_bench;
#[cfg(feature = "plot")]
pub mod plot;
pub mod sweep;
mod text;
#[cfg(feature = "plot")]
pub mod timeline;
pub mod trace;

pub use text::{mismatch_text, render_text};
