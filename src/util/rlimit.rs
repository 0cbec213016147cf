//! The process's limit on open files, read once here for the start-up check, the default
//! connection limit and `/health`.

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `lim`, a valid and exclusively borrowed local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// The kernel's `fs.nr_open`: the most an unlimited hard limit allows in practice.
pub fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok())
}
