//! Peak resident memory of this process, per model: Linux's `VmHWM`, reset between models by
//! writing "5" to `/proc/self/clear_refs` (proc(5)).

/// Resets the peak-RSS counter. Returns false where the kernel does not support it (then the
/// reported peak covers the whole process lifetime).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size in bytes since the last reset, if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_grows_with_a_large_allocation_and_resets() {
        assert!(reset_peak_rss());
        let before = peak_rss_bytes().unwrap();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(big);
        assert!(reset_peak_rss());
        assert!(peak_rss_bytes().unwrap() < after);
    }
}
