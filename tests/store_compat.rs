//! The shard files the store writes are what export/report read: the
//! report's independent reader finds them by scanning and gets the same rows.

mod store_support;

use cotforge::report::io::{read_all_chains, read_all_rejects, scan_out_dir};
use cotforge::store::parquet_io::read_parquet;
use cotforge::store::schema::{batch_to_chains, batch_to_rejects};
use store_support::*;

#[test]
fn report_reader_reads_store_shards() {
    let d = tempfile::tempdir().expect("tempdir");
    let seeds = d.path().join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(60));
    let out = d.path().join("out");
    for i in 0..2 {
        let o = run(worker(&seeds, &out, i, 2));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let files = scan_out_dir(&out).expect("scan");
    assert_eq!(files.chains.len(), 2, "{files:?}");
    assert_eq!(files.rejects.len(), 2, "{files:?}");
    let theirs = read_all_chains(&files.chains).expect("report reads chains");
    let mut ours = Vec::new();
    for p in &files.chains {
        for b in read_parquet(p).expect("read") {
            ours.extend(batch_to_chains(&b).expect("chains"));
        }
    }
    assert!(!ours.is_empty());
    assert_eq!(theirs, ours);
    let theirs = read_all_rejects(&files.rejects).expect("report reads rejects");
    let mut ours = Vec::new();
    for p in &files.rejects {
        for b in read_parquet(p).expect("read") {
            ours.extend(batch_to_rejects(&b).expect("rejects"));
        }
    }
    assert_eq!(theirs, ours);
    assert_eq!(
        theirs.len() + read_all_chains(&files.chains).expect("c").len(),
        60
    );
}
