//! A userspace TCP/IP stack under virtual IPs (work in progress).
