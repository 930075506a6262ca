//! Disk probes: the raw fsync rate and write bandwidth of the file system the data dirs live
//! in, and where the no-disk control keeps its data dirs.

use super::*;

/// The disk's raw fsync rate: 4 KiB appends, each followed by fdatasync, for `dur` in `dir`;
/// also the latencies of the fdatasyncs, sorted.
pub(crate) fn fsync_rate(dir: &Path, dur: Duration) -> (f64, Vec<Duration>) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("fsync probe file");
    let block = [0x5au8; 4096];
    let (start, mut lat) = (Instant::now(), Vec::new());
    while start.elapsed() < dur {
        f.write_all(&block).expect("write fsync probe");
        let t = Instant::now();
        f.sync_data().expect("fdatasync fsync probe");
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    lat.sort();
    (rate, lat)
}

/// The file system's write bandwidth: 1 MiB appends, each followed by `fdatasync`, for `dur` or
/// 512 MiB, whichever comes first (the floor for large values: every node writes each one).
pub(crate) fn write_bandwidth(dir: &Path, dur: Duration) -> f64 {
    let path = dir.join("bandwidth-probe");
    let mut f = std::fs::File::create(&path).expect("bandwidth probe file");
    let block = vec![0xa5u8; 1 << 20];
    let (start, mut written) = (Instant::now(), 0usize);
    while start.elapsed() < dur && written < 512 << 20 {
        f.write_all(&block).expect("write bandwidth probe");
        f.sync_data().expect("fdatasync bandwidth probe");
        written += block.len();
    }
    let rate = written as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    rate
}

/// Where the no-disk control keeps its data dirs: /dev/shm, when a tmpfs is mounted there.
pub(crate) fn tmpfs_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.get(1) == Some(&"/dev/shm") && f.get(2) == Some(&"tmpfs"))
        .then(|| PathBuf::from("/dev/shm"))
}
