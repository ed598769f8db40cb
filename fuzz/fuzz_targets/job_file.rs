//! Fuzz the job-file parser: any bytes as TOML text. Runs in the repository
//! root so the committed jobs' relative seed paths resolve.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static ROOT: std::sync::Once = std::sync::Once::new();
    ROOT.call_once(|| {
        let _ = std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    });
    cotforge_fuzz::job_text(&String::from_utf8_lossy(data));
});
