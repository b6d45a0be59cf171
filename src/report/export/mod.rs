//! The rows of a sweep written to a file, one format per file of this module, chosen by the
//! file's extension (`--export sweep.csv`, `.json` or `.md`).
//!
//! Every format sits behind the one small [`Exporter`] trait (hyperfine's `src/export`
//! layout): adding a format means one new file here and one arm in [`exporter_for`].

mod csv;
mod json;
mod markdown;

use std::io;
use std::path::Path;

use crate::lab::sweep::SweepTable;

pub use csv::Csv;
pub use json::Json;
pub use markdown::Markdown;

/// One output format of a [`SweepTable`].
pub trait Exporter {
    /// The rows in this format.
    fn export(&self, table: &SweepTable) -> String;
}

/// The exporter for `path`'s extension: `.csv`, `.json` or `.md`, in any case.
///
/// ```
/// use std::path::Path;
/// assert!(procpool::report::export::exporter_for(Path::new("out.CSV")).is_ok());
/// let err = procpool::report::export::exporter_for(Path::new("out.xyz")).err().unwrap();
/// assert_eq!(err, "unknown format `.xyz` (use .csv, .json or .md)");
/// ```
pub fn exporter_for(path: &Path) -> Result<Box<dyn Exporter>, String> {
    let Some(extension) = path.extension() else {
        return Err(format!(
            "`{}` has no extension to tell the format (use .csv, .json or .md)",
            path.display()
        ));
    };
    let extension = extension.to_string_lossy();
    match extension.to_ascii_lowercase().as_str() {
        "csv" => Ok(Box::new(Csv)),
        "json" => Ok(Box::new(Json)),
        "md" => Ok(Box::new(Markdown)),
        _ => Err(format!(
            "unknown format `.{extension}` (use .csv, .json or .md)"
        )),
    }
}

/// Writes `table` to `path` in the format its extension names (see [`exporter_for`]).
///
/// An unknown extension is an [`io::ErrorKind::InvalidInput`] error; every error message
/// names the path.
pub fn export_to_file(table: &SweepTable, path: &Path) -> io::Result<()> {
    let exporter = exporter_for(path)
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
    crate::lab::output::OutputFile::write(path, exporter.export(table).as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sweep::sample_table;

    #[test]
    fn exporter_for_dispatches_on_the_extension() {
        let table = sample_table();
        for (name, expected) in [
            ("a.csv", Csv.export(&table)),
            ("dir/b.JSON", Json.export(&table)),
            ("c.Md", Markdown.export(&table)),
        ] {
            let exporter = exporter_for(Path::new(name)).unwrap();
            assert_eq!(exporter.export(&table), expected, "{name}");
        }
    }

    #[test]
    fn exporter_for_refuses_unknown_formats() {
        assert_eq!(
            exporter_for(Path::new("sweep.xyz")).err().unwrap(),
            "unknown format `.xyz` (use .csv, .json or .md)"
        );
        assert_eq!(
            exporter_for(Path::new("sweep")).err().unwrap(),
            "`sweep` has no extension to tell the format (use .csv, .json or .md)"
        );
    }

    #[test]
    fn export_to_file_writes_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.csv");
        export_to_file(&sample_table(), &path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            Csv.export(&sample_table())
        );
    }

    #[test]
    fn export_to_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("sweep.json");
        let err = export_to_file(&sample_table(), &path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        let err = export_to_file(&sample_table(), Path::new("sweep.txt")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("`.txt`"), "{err}");
    }
}
