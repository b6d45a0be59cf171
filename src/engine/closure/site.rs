//! Where a closure job's code is: a [`Descriptor`] in this binary's read-only data, named
//! across processes by its distance from an anchor (the closure module's `unsafe`).
//!
//! A closure cannot travel between processes, but its code is in the binary every worker
//! runs. A spawned worker's binary is loaded at another address (ASLR), so an address means
//! nothing there; the distance between two things of one binary image does not change with
//! where the image is loaded (procspawn names its functions the same way). The parent sends
//! the distance from [`ANCHOR`] to the job's descriptor; the worker adds it to its own
//! anchor.
//!
//! A distance arrives in a message, and a message is input. Before anything is read at the
//! address it names, [`resolve`] checks that the whole descriptor lies in a read-only
//! mapping of this process's own executable (linker-made data nobody can write, not the
//! heap, a stack or a library), is aligned, and starts with [`MAGIC`]; and that its
//! function lies in an executable mapping of that file. A distance computed by another
//! build is refused before that, by the build identity in the handshake.

use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use crate::workload::DynKernel;

/// Sixteen bytes that begin every descriptor: an offset that lands anywhere else in the
/// read-only data is refused.
pub(crate) const MAGIC: [u8; 16] = *b"procpool-closure";

/// Rebuilds a closure job from its encoded parameters (site included) for a job of
/// `elem_size`-byte elements: its kernel and its set-up time.
pub(crate) type Decode = fn(&[u8], usize) -> Result<(Box<dyn DynKernel>, Duration), String>;

/// What a worker finds at a closure job's site: how to rebuild the job from its encoded
/// parameters, monomorphized for the job's closures, parameter and element types.
#[repr(C)]
pub(crate) struct Descriptor {
    /// [`MAGIC`].
    pub(crate) magic: [u8; 16],
    /// Decodes the job's parameters (all of them, site included) for a job of
    /// `elem_size`-byte elements, and returns its kernel with its set-up time.
    pub(crate) decode: Decode,
}

/// The descriptor of `decode`, for a constant: `const { &describe(decode::<…>) }` puts
/// one in the binary's read-only data for each monomorphized decoder.
pub(crate) const fn describe(decode: Decode) -> Descriptor {
    Descriptor {
        magic: MAGIC,
        decode,
    }
}

/// The value of a zero-sized closure type: what a worker calls in place of the parent's
/// closure, which it never received.
///
/// Refused when the program is built for a closure with captures (a closure that is not
/// zero-sized): the captured values live in the parent's memory, and no worker can have
/// them.
pub(crate) fn conjure<F>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a closure given to procpool may capture nothing: it runs in worker processes, \
             which cannot see the caller's variables. Pass what it needs in `params` (or an \
             `Input` for large read-only data) and take it from the closure's first argument"
        )
    };
    // SAFETY: `F` is zero-sized (asserted when this is compiled), so a value of it has no
    // bytes to be valid or invalid. It is a closure or function type (the callers take it
    // as `Fn`, which user types cannot implement on stable Rust): such a type has no
    // invariant beyond its captures, and a zero-sized closure captures only zero-sized
    // values. The parent holds a value of this very type, so it is inhabited.
    unsafe { std::mem::zeroed() }
}

/// The fixed point sites are measured from. Never decodes anything.
static ANCHOR: Descriptor = Descriptor {
    magic: MAGIC,
    decode: |_, _| Err("the anchor is not a closure job".to_string()),
};

/// The distance from the anchor to `descriptor`, in bytes.
pub(crate) fn site_of(descriptor: &'static Descriptor) -> i64 {
    let here = std::ptr::from_ref(descriptor) as usize;
    let anchor = std::ptr::from_ref(&ANCHOR) as usize;
    here.wrapping_sub(anchor) as i64
}

/// The descriptor `site` names in this process, checked as the module docs say.
pub(crate) fn resolve(site: i64) -> Result<&'static Descriptor, String> {
    let anchor = std::ptr::from_ref(&ANCHOR) as usize;
    let refused = |why: &str| {
        Err(format!(
            "the closure job's site ({site:+}) {why}: the worker is not running the parent's \
             build"
        ))
    };
    let Some(at) = isize::try_from(site)
        .ok()
        .and_then(|site| anchor.checked_add_signed(site))
    else {
        return refused("lies outside the address space");
    };
    let size = std::mem::size_of::<Descriptor>();
    if at % std::mem::align_of::<Descriptor>() != 0 {
        return refused("is not aligned for a descriptor");
    }
    let image = image()?;
    if !image.read_only.iter().any(|r| contains(r, at, size)) {
        return refused("is not in this binary's read-only data");
    }
    // SAFETY: `at..at + size` lies inside one read-only mapping of this process's
    // executable (checked just above against /proc/self/maps, read after the executable
    // was loaded; such a mapping stays for the life of the process), and is aligned for
    // `Descriptor`; reading its first 16 bytes as bytes is valid for any contents.
    let magic = unsafe { std::ptr::read(at as *const [u8; 16]) };
    if magic != MAGIC {
        return refused("holds no closure descriptor");
    }
    // SAFETY: as above; a `usize` is valid for any 8 bytes, and the field's offset is
    // where `repr(C)` puts it.
    let decode =
        unsafe { std::ptr::read((at + std::mem::offset_of!(Descriptor, decode)) as *const usize) };
    if !image.code.iter().any(|r| contains(r, decode, 1)) {
        return refused("names code outside this binary");
    }
    // SAFETY: the memory is a `Descriptor`: linker-made read-only data of this very build
    // (the handshake compared build identities) that starts with the descriptors' magic
    // and whose function pointer (non-null, checked above) points into this binary's own
    // code. Only `descriptor_of` makes such data: the magic appears nowhere else in
    // read-only data followed by a pointer into the code. The data is never written
    // (read-only mapping) and lives as long as the process, hence `'static`.
    Ok(unsafe { &*(at as *const Descriptor) })
}

/// Whether `at..at + len` lies inside `range`.
fn contains(range: &Range<usize>, at: usize, len: usize) -> bool {
    at >= range.start && at.checked_add(len).is_some_and(|end| end <= range.end)
}

/// This process's executable in memory: its read-only and its executable mappings.
struct Image {
    read_only: Vec<Range<usize>>,
    code: Vec<Range<usize>>,
}

/// [`Image`], read once from /proc/self/maps.
fn image() -> Result<&'static Image, String> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let exe = std::fs::read_link("/proc/self/exe")
                .map_err(|e| format!("cannot read /proc/self/exe: {e}"))?;
            let maps = std::fs::read_to_string("/proc/self/maps")
                .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
            Ok(image_of(&maps, &exe.to_string_lossy()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The mappings of `exe` in `maps` (the text of /proc/self/maps): read-only ones and
/// executable ones; writable ones are neither.
fn image_of(maps: &str, exe: &str) -> Image {
    let mut image = Image {
        read_only: Vec::new(),
        code: Vec::new(),
    };
    for line in maps.lines() {
        // start-end perms offset dev inode path (the path may hold spaces).
        let mut fields = line.splitn(6, ' ');
        let (Some(span), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).map(str::trim_start).unwrap_or_default();
        if path != exe {
            continue;
        }
        let Some((start, end)) = span.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        match perms.as_bytes() {
            [b'r', b'-', b'-', _] => image.read_only.push(start..end),
            [b'r', b'-', b'x', _] => image.code.push(start..end),
            _ => {}
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    static OTHER: Descriptor = Descriptor {
        magic: MAGIC,
        decode: |_, _| Err("the other one".to_string()),
    };

    #[test]
    fn a_descriptor_in_this_binary_resolves_to_itself() {
        let back = resolve(site_of(&OTHER)).expect("resolves");
        assert!(std::ptr::eq(back, &OTHER));
        assert_eq!(
            (back.decode)(&[], 8).err().as_deref(),
            Some("the other one")
        );
        assert!(resolve(0).is_ok(), "the anchor itself is a descriptor");
    }

    #[test]
    fn a_site_that_names_anything_else_is_refused() {
        let heap = Box::new(Descriptor {
            magic: MAGIC,
            decode: |_, _| Err(String::new()),
        });
        let on_heap = (std::ptr::from_ref(&*heap) as usize)
            .wrapping_sub(std::ptr::from_ref(&ANCHOR) as usize) as i64;
        let below_zero = -(std::ptr::from_ref(&ANCHOR) as i64) - 8;
        let stack = [0u8; 64];
        let on_stack = (std::ptr::from_ref(&stack) as usize)
            .wrapping_sub(std::ptr::from_ref(&ANCHOR) as usize) as i64;
        for (site, why) in [
            (on_heap, "not in this binary's read-only data"),
            (on_stack, "not in this binary's read-only data"),
            (1, "not aligned"),
            (i64::MAX - 7, "not in this binary's read-only data"),
            (below_zero, "outside the address space"),
        ] {
            let error = resolve(site).err().expect("refused");
            assert!(error.contains(why), "site {site}: {error}");
            assert!(error.contains("not running the parent's build"), "{error}");
        }
        // Read-only data of this binary that is not a descriptor: a string literal.
        let text: &'static str = "0123456789abcdef0123456789abcdef";
        let aligned = (text.as_ptr() as usize).next_multiple_of(8);
        let site = aligned.wrapping_sub(std::ptr::from_ref(&ANCHOR) as usize) as i64;
        let error = resolve(site).err().expect("refused");
        assert!(error.contains("holds no closure descriptor"), "{error}");
    }

    #[test]
    fn the_maps_parser_keeps_only_the_executables_read_only_and_code_mappings() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 42  /bin/my prog
55d0a0001000-55d0a0005000 r-xp 00001000 fd:01 42  /bin/my prog
55d0a0005000-55d0a0006000 rw-p 00005000 fd:01 42  /bin/my prog
55d0a0006000-55d0a0007000 r--p 00000000 fd:01 43  /bin/other
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0   [stack]
garbage line";
        let image = image_of(maps, "/bin/my prog");
        assert_eq!(image.read_only, vec![0x55d0a0000000..0x55d0a0001000]);
        assert_eq!(image.code, vec![0x55d0a0001000..0x55d0a0005000]);
    }
}
