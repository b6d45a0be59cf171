//! Renderings of the lab's results, which this layer only reads: the run report as text
//! ([`render_text`]; JSON is the report's own serde form, [`crate::Report::to_json`]), the
//! advice, and a run's timeline as a Chrome trace ([`trace`]). The `procpool` command's
//! other renderings (the sweep table, its exporters and SVG plot, the IPC benchmark,
//! processes against threads, the catalogue of workloads, the timeline as an SVG picture)
//! are public for the command but hidden from these docs: they are not API.

pub mod advice;
mod text;
pub mod trace;

// The `procpool` command's renderings (its catalogue, `compare-modes`, `ipc-bench`,
// `sweep` and its exports and plot, `--timeline`): public so that the command, a client of
// the library, can call them, but not part of the library's API: they may change with the
// command's output, without notice.
#[doc(hidden)]
pub mod catalogue;
#[doc(hidden)]
pub mod compare;
#[doc(hidden)]
pub mod export;
#[doc(hidden)]
pub mod ipc_bench;
#[cfg(feature = "plot")]
#[doc(hidden)]
pub mod plot;
#[doc(hidden)]
pub mod sweep;
#[cfg(feature = "plot")]
#[doc(hidden)]
pub mod timeline;

pub use text::{mismatch_text, render_text};
