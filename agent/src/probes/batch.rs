//! Walking and taking a kernel hash map in batches (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, Linux 5.6+): thousands of entries
//! per system call instead of two system calls per entry, and no copy of the whole map in
//! memory — the caller looks at one batch at a time.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the pointers in it
    // point to buffers of the sizes its `count` says, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Entries read per system call.
pub const CHUNK: usize = 4096;

/// Calls `f` with every entry of the hash map `fd` (keys `K`, values `V`: the map's own
/// sizes), one batch of at most [`CHUNK`] at a time. Entries added or removed meanwhile may
/// or may not be seen; none is seen twice.
pub fn for_each<K: Copy + Default, V: Copy + Default>(
    fd: BorrowedFd<'_>,
    f: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    walk(fd, BPF_MAP_LOOKUP_BATCH, f)
}

/// Like [`for_each`], and deletes each entry as it is read, in the same step under the
/// kernel's lock of its bucket: an entry a program rewrites meanwhile is either read whole
/// and deleted, or left whole for the next call — never deleted unread.
pub fn take_each<K: Copy + Default, V: Copy + Default>(
    fd: BorrowedFd<'_>,
    f: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    walk(fd, BPF_MAP_LOOKUP_AND_DELETE_BATCH, f)
}

fn walk<K: Copy + Default, V: Copy + Default>(
    fd: BorrowedFd<'_>,
    cmd: libc::c_long,
    mut f: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The position in the walk (a bucket index for hash maps); 8 bytes hold it.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token[1..].as_mut_ptr() as u64,
            map_fd: fd.as_raw_fd() as u32,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            ..BatchAttr::default()
        };
        let r = bpf(cmd, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                f(&keys[..n], &values[..n]);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        f(&keys[..n], &values[..n]);
        token[0] = token[1];
        first = false;
    }
}
