//! Machine load for `cargo xtask torture --load`: CPU, memory and disk burners at once, the
//! mix a cold release build of the workspace puts on a machine (the load under which the
//! torture once reported two holders; docs/RELIABILITY.md).
//!
//! - **CPU**: one busy thread per core, plus one, so the runner's own threads wait for a core;
//! - **memory**: a thread that keeps allocating 1 GiB, touching every page, and freeing it
//!   (page faults and memory bandwidth, as rustc and the linker cause);
//! - **disk**: a thread that writes 32 MiB files with `fsync` after each, in rotation over
//!   four files under `target/`, so etcd's own write-ahead-log syncs queue behind them.
//!
//! The burners run in this process, beside the runner's; dropping [`Load`] stops them and
//! removes their files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

const MEMORY: usize = 1 << 30;
const FILE: usize = 32 << 20;
const FILES: usize = 4;

/// Running burners; dropping this stops them.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    dir: PathBuf,
    /// Megabytes written and synced by the disk burner.
    synced: Arc<AtomicU64>,
}

impl Load {
    /// Starts the burners; the disk burner writes under `dir` (created, and removed on drop).
    pub(crate) fn start(dir: &Path) -> Result<Load, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicU64::new(0));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut threads = Vec::new();
        for _ in 0..=cores {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || cpu(&stop)));
        }
        let stop_memory = stop.clone();
        threads.push(std::thread::spawn(move || memory(&stop_memory)));
        let (stop_disk, disk_dir, written) = (stop.clone(), dir.to_path_buf(), synced.clone());
        threads.push(std::thread::spawn(move || {
            disk(&stop_disk, &disk_dir, &written)
        }));
        eprintln!(
            "xtask: load: {} CPU burners, 1 GiB allocated and touched in a loop, 32 MiB files \
             written with fsync under {}",
            cores + 1,
            dir.display()
        );
        Ok(Load {
            stop,
            threads,
            dir: dir.to_path_buf(),
            synced,
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!(
            "xtask: load stopped ({} MiB written and synced)",
            self.synced.load(Relaxed)
        );
    }
}

fn cpu(stop: &AtomicBool) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while !stop.load(Relaxed) {
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

fn memory(stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let mut block = vec![0u8; MEMORY];
        for pass in 0..4u8 {
            for page in block.chunks_mut(4096) {
                page[0] = pass;
            }
            if stop.load(Relaxed) {
                return;
            }
        }
        std::hint::black_box(&block);
    }
}

fn disk(stop: &AtomicBool, dir: &Path, synced: &AtomicU64) {
    let chunk = vec![0x5au8; 1 << 20];
    let mut n = 0usize;
    while !stop.load(Relaxed) {
        let path = dir.join(format!("burn-{}", n % FILES));
        n += 1;
        let Ok(mut file) = std::fs::File::create(&path) else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        };
        for _ in 0..FILE / chunk.len() {
            if stop.load(Relaxed) || file.write_all(&chunk).is_err() {
                return;
            }
        }
        if file.sync_all().is_ok() {
            synced.fetch_add((FILE >> 20) as u64, Relaxed);
        }
    }
}
