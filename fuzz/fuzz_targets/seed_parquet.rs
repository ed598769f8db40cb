//! Fuzz the seed Parquet ingest: any bytes, opened and read to the end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn scratch() -> std::path::PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("cotforge-fuzz-{}.parquet", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static SCRATCH: std::path::PathBuf = scratch());
    SCRATCH.with(|p| cotforge_fuzz::ingest_bytes(data, p));
});
