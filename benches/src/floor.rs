//! What this machine charges for the two things a lone persistent message needs at a low rate,
//! measured without any broker: a thread waking from sleep, and a small write made durable.
//!
//! At a fixed, low publish rate a broker cannot amortise either over many messages, so its CPU
//! per message is bounded below by them. On a virtual machine both are far dearer than on bare
//! metal (each timer, each interrupt and each device notification can exit to the hypervisor),
//! so `warren-compare` measures them in the same run as the brokers and prints them next to the
//! table: the fixed-rate row's CPU figures are read against this floor.
//!
//! CPU is the thread's own (`CLOCK_THREAD_CPUTIME_ID`, the scheduler's precise runtime, not
//! tick samples), so it includes the kernel's work done on the thread's behalf: the syscall,
//! the block layer, the wait for the device, and what the hypervisor's exits cost the guest.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};

/// Bytes of each durable write: one small persistent message's record.
pub const WRITE_BYTES: usize = 1024;
/// The file the writes cycle through, zero-filled and synced first, so that no write
/// allocates blocks or changes the file's size (as a broker's prepared log segment).
const FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Floor {
    /// The period of both loops.
    pub period_us: f64,
    /// CPU per wake-up of a thread that only sleeps until its next deadline.
    pub wake_up_cpu_us: f64,
    /// CPU per cycle of a thread that sleeps until its next deadline, then writes
    /// `WRITE_BYTES` and fdatasyncs them.
    pub write_sync_cpu_us: f64,
    /// Mean time from the start of the write to the return of fdatasync.
    pub write_sync_wall_us: f64,
}

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `cycles` iterations of `work`, each at its own deadline `period` after the last, and
/// returns the thread's CPU per iteration (sleeps included, as a waiting broker thread has them).
fn paced(
    period: Duration,
    cycles: u32,
    mut work: impl FnMut() -> io::Result<()>,
) -> io::Result<f64> {
    let cpu = thread_cpu();
    let mut deadline = Instant::now();
    for _ in 0..cycles {
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        work()?;
    }
    Ok((thread_cpu() - cpu).as_secs_f64() * 1e6 / f64::from(cycles.max(1)))
}

/// Measures both loops on a dedicated thread, writing to a file in `dir` (removed after).
pub fn measure(dir: &Path, period: Duration, cycles: u32) -> io::Result<Floor> {
    let path = dir.join("warren-floor.dat");
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let wake_up_cpu_us = paced(period, cycles, || Ok(()))?;
                let file = zero_filled(&path)?;
                let block = vec![0x5au8; WRITE_BYTES];
                let mut offset = 0u64;
                let mut busy = Duration::ZERO;
                let write_sync_cpu_us = paced(period, cycles, || {
                    let started = Instant::now();
                    file.write_all_at(&block, offset)?;
                    file.sync_data()?;
                    busy += started.elapsed();
                    offset = (offset + WRITE_BYTES as u64) % FILE_BYTES;
                    Ok(())
                })?;
                Ok(Floor {
                    period_us: period.as_secs_f64() * 1e6,
                    wake_up_cpu_us,
                    write_sync_cpu_us,
                    write_sync_wall_us: busy.as_secs_f64() * 1e6 / f64::from(cycles.max(1)),
                })
            })
            .join()
            .map_err(|_| io::Error::other("the floor measurement thread panicked"))?
    });
    let _ = std::fs::remove_file(&path);
    result
}

fn zero_filled(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for at in (0..FILE_BYTES).step_by(zeros.len()) {
        file.write_all_at(&zeros, at)?;
    }
    file.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_loops_are_charged_cpu_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let floor = measure(dir.path(), Duration::from_millis(1), 200).unwrap();
        assert_eq!(floor.period_us, 1000.0);
        assert!(floor.wake_up_cpu_us > 0.0, "{floor:?}");
        assert!(floor.write_sync_cpu_us > 0.0, "{floor:?}");
        assert!(floor.write_sync_wall_us > 0.0, "{floor:?}");
        assert!(!dir.path().join("warren-floor.dat").exists());
    }
}
