//! What the server processes spent, from /proc: CPU (utime + stime), bytes written to disk
//! (`write_bytes` in /proc/PID/io: what reached the block layer, so fsynced WAL and B-tree
//! pages, not page-cache hits) and resident memory.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// One process's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Bytes this process caused to be written to storage.
    pub write_bytes: u64,
    pub rss_bytes: u64,
}

impl ProcSample {
    /// `pid` 0 means this process.
    pub fn read(pid: u32) -> Result<ProcSample> {
        if pid != 0 && !alive(pid) {
            anyhow::bail!("process {pid} is not running (exited or killed)");
        }
        let dir = if pid == 0 { "/proc/self".to_string() } else { format!("/proc/{pid}") };
        let stat =
            std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("read {dir}/stat"))?;
        let cpu_ticks = parse_stat_cpu_ticks(&stat).with_context(|| format!("parse {dir}/stat"))?;
        // /proc/PID/io needs the same user (or root); report zero bytes rather than fail.
        let write_bytes = std::fs::read_to_string(format!("{dir}/io"))
            .ok()
            .and_then(|io| parse_io_write_bytes(&io))
            .unwrap_or(0);
        let rss_bytes = std::fs::read_to_string(format!("{dir}/status"))
            .ok()
            .and_then(|status| parse_status_rss_bytes(&status))
            .unwrap_or(0);
        Ok(ProcSample { cpu_ticks, write_bytes, rss_bytes })
    }

    /// The sum over several processes.
    pub fn read_all(pids: &[u32]) -> Result<ProcSample> {
        let mut total = ProcSample::default();
        for &pid in pids {
            let s = ProcSample::read(pid)?;
            total.cpu_ticks += s.cpu_ticks;
            total.write_bytes += s.write_bytes;
            total.rss_bytes += s.rss_bytes;
        }
        Ok(total)
    }
}

/// Whether a process is alive (its /proc entry exists).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime: fields 14 and 15 of /proc/PID/stat, counted after the `)` that closes the
/// command name (which may itself contain spaces and parentheses).
pub fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let after = &stat[stat.rfind(')').ok_or_else(|| anyhow!("no ')' in stat"))? + 1..];
    // After ')' come field 3 (state) onwards: utime is field 14, so index 11 here.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("stat has {} fields after the name", fields.len()))?
            .parse()
            .context("number")
    };
    Ok(field(11)? + field(12)?)
}

pub fn parse_io_write_bytes(io: &str) -> Option<u64> {
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    let kib = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (flo (tilla) x) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 333);
        assert!(parse_stat_cpu_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn io_and_status_parse() {
        assert_eq!(
            parse_io_write_bytes("rchar: 1\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n"),
            Some(4096)
        );
        assert_eq!(parse_status_rss_bytes("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234 * 1024));
    }

    #[test]
    fn this_process_can_be_read() {
        let me = ProcSample::read(0).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(alive(std::process::id()));
    }
}
