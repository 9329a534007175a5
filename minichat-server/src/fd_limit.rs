//! The process's file-descriptor budget, checked once at start.
//!
//! Every socket is a file descriptor, so `MINICHAT_MAX_SOCKETS` can only be reached if the
//! process may open that many plus what the backends and the listener need. Many systems start
//! a process with a soft limit of 1,024 under a much higher hard limit; like most network
//! servers, the binary raises its soft limit towards the hard one (never above it) at start. If
//! even the hard limit is too low, the server still starts (a default must run anywhere), but
//! warns in one line naming the setting and the limit: past that point sockets are refused at
//! accept, before the cap is reached. This is the binary's business, not the library's: an
//! application embedding the server owns its process limits.

/// Descriptors kept for everything that is not a client socket: database and Redis
/// connections, the listener, the runtime's own, log files.
pub const RESERVED: u64 = 256;

/// Raises the soft limit for `max_sockets` client sockets; returns a warning when the limit
/// allowed is still too low for them.
pub fn ensure_room_for(max_sockets: usize) -> Option<String> {
    let wanted = max_sockets as u64 + RESERVED;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(allowed) if allowed >= wanted => None,
        Ok(allowed) => Some(format!(
            "MINICHAT_MAX_SOCKETS (--max-sockets) {max_sockets}: the file-descriptor limit is {allowed} \
             (hard limit reached), so at most ~{} sockets can be open ({RESERVED} are kept for \
             backends); raise `ulimit -n` / LimitNOFILE to {wanted} or more, or lower the setting",
            allowed.saturating_sub(RESERVED)
        )),
        Err(e) => Some(format!(
            "MINICHAT_MAX_SOCKETS (--max-sockets) {max_sockets}: cannot read or raise the \
             file-descriptor limit ({e}); sockets past that limit are refused at accept"
        )),
    }
}
