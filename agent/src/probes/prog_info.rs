//! What the kernel says of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`) that aya does not
//! expose: the runs it skipped.
//!
//! The kernel does not run a program inside another run of itself on the same CPU (a
//! softirq's TCP state change arriving while a process's is being handled, for raw and BTF
//! tracepoint programs such as `tp_btf`, since Linux 6.0 or so; before, such a run nests), nor
//! a tracepoint program while any other tracepoint or kprobe program runs on that CPU: it
//! skips the run, and counts it in the program's `recursion_misses` (in `bpf_prog_info` from
//! Linux 5.11; tracepoint programs' skips are counted from 6.7). A skipped run is a state
//! change, signal or exit the agent never saw.

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::bpf_prog_info;

/// `enum bpf_cmd`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Where `recursion_misses` ends in `struct bpf_prog_info`: a kernel that fills fewer bytes
/// does not count skipped runs.
const MISSES_END: usize = offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();

/// The runs of program `fd` the kernel skipped since it was loaded; `None` when this kernel
/// does not count them.
pub fn runs_missed(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut buf = [0u8; size_of::<bpf_prog_info>()];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        info_len: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        info: buf.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `info` points to a
    // buffer of `info_len` bytes, alive for the call. The kernel writes at most that many
    // and sets `info_len` to what it wrote.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(misses_in(&buf, attr.info_len as usize))
}

/// `recursion_misses` in the first `filled` bytes of a `struct bpf_prog_info`, if they hold it.
fn misses_in(buf: &[u8], filled: usize) -> Option<u64> {
    if filled < MISSES_END {
        return None;
    }
    let bytes = buf.get(MISSES_END - size_of::<u64>()..MISSES_END)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_fills_less_does_not_count_misses() {
        let mut buf = vec![0u8; size_of::<bpf_prog_info>()];
        let at = MISSES_END - 8;
        buf[at..MISSES_END].copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(misses_in(&buf, buf.len()), Some(7));
        assert_eq!(misses_in(&buf, MISSES_END), Some(7));
        // Linux 5.10 stops before the field.
        assert_eq!(misses_in(&buf, MISSES_END - 1), None);
        assert_eq!(misses_in(&buf, 0), None);
    }

    #[test]
    fn the_field_sits_after_the_run_time_statistics() {
        // `run_time_ns`, `run_cnt`, `recursion_misses`: three u64 in a row (uapi/linux/bpf.h).
        assert_eq!(
            offset_of!(bpf_prog_info, recursion_misses),
            offset_of!(bpf_prog_info, run_cnt) + 8
        );
        assert_eq!(
            offset_of!(bpf_prog_info, run_cnt),
            offset_of!(bpf_prog_info, run_time_ns) + 8
        );
    }
}
