//! The build identity of this program: what a worker tells its parent so that a closure
//! job (which names code by its place in the binary) runs only in workers of the same
//! build.
//!
//! It is the linker's GNU build ID (`.note.gnu.build-id`, a hash of the linked output that
//! `cc` and `rustc` ask for by default on Linux), read from `/proc/self/exe`: the image this
//! process runs, even after the file on disk was rebuilt or deleted. A binary without one
//! is named by its size and modification time instead.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

/// `PT_NOTE`: a program header of notes.
const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;
/// The most bytes of notes read from one segment (a build ID note takes 36).
const MAX_NOTES: u64 = 64 << 10;
/// The most program headers looked at.
const MAX_HEADERS: u16 = 256;

/// This process's build identity, read once: `build-id <hex>`, or `file <size> <mtime>`
/// when the binary has no build ID, or `unknown: <why>`.
pub(crate) fn this_build() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        let read = || -> std::io::Result<String> {
            let mut exe = File::open("/proc/self/exe")?;
            if let Some(id) = gnu_build_id(&mut exe)? {
                return Ok(format!("build-id {}", hex(&id)));
            }
            let meta = exe.metadata()?;
            let modified = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(format!("file {} {}", meta.len(), modified.as_nanos()))
        };
        read().unwrap_or_else(|e| format!("unknown: {e}"))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The GNU build ID in the 64-bit little-endian ELF file `elf`, if it has one.
fn gnu_build_id(elf: &mut (impl Read + Seek)) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 64];
    elf.read_exact(&mut header)?;
    // "\x7fELF", 64-bit, little-endian: the only kind procpool runs on.
    if header[..6] != [0x7f, b'E', b'L', b'F', 2, 1] {
        return Ok(None);
    }
    let phoff = u64_at(&header, 0x20);
    let phentsize = u64::from(u16_at(&header, 0x36));
    let phnum = u16_at(&header, 0x38).min(MAX_HEADERS);
    if phentsize < 0x28 {
        return Ok(None);
    }
    for k in 0..u64::from(phnum) {
        let mut ph = [0u8; 0x28];
        elf.seek(SeekFrom::Start(phoff.saturating_add(k * phentsize)))?;
        elf.read_exact(&mut ph)?;
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 0x08), u64_at(&ph, 0x20).min(MAX_NOTES));
        let mut notes = vec![0u8; size as usize];
        elf.seek(SeekFrom::Start(offset))?;
        elf.read_exact(&mut notes)?;
        if let Some(id) = build_id_note(&notes) {
            return Ok(Some(id.to_vec()));
        }
    }
    Ok(None)
}

/// The descriptor of the `GNU` build ID note among `notes` (one note segment's bytes).
fn build_id_note(mut notes: &[u8]) -> Option<&[u8]> {
    while notes.len() >= 12 {
        let name_size = u32_at(notes, 0) as usize;
        let desc_size = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        let name_end = 12usize.checked_add(name_size.checked_next_multiple_of(4)?)?;
        let desc_end = name_end.checked_add(desc_size.checked_next_multiple_of(4)?)?;
        let name = notes.get(12..12 + name_size)?;
        let desc = notes.get(name_end..name_end + desc_size)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_has_the_linkers_build_id() {
        let build = this_build();
        let id = build.strip_prefix("build-id ").expect(build);
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{build}"
        );
        assert_eq!(this_build(), build, "read once");
    }

    #[test]
    fn notes_are_walked_and_bad_ones_end_the_walk() {
        let mut notes = Vec::new();
        // An ABI tag note first ("GNU", kind 1), then the build ID.
        for (kind, desc) in [(1u32, &[0u8, 0, 0, 0][..]), (3, &[0xab, 0xcd, 0xef][..])] {
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(b"GNU\0");
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(build_id_note(&notes), Some(&[0xab, 0xcd, 0xef][..]));
        // A size past the end, or wrapping: no build ID, no panic.
        let mut bad = notes.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(build_id_note(&bad), None);
        assert_eq!(build_id_note(&notes[..20]), None);
        assert_eq!(build_id_note(&[]), None);
    }

    #[test]
    fn a_file_that_is_not_elf_has_no_build_id() {
        let mut text = std::io::Cursor::new(vec![b'#'; 100]);
        assert_eq!(gnu_build_id(&mut text).unwrap(), None);
        let mut short = std::io::Cursor::new(vec![0x7f, b'E']);
        assert!(gnu_build_id(&mut short).is_err());
    }
}
