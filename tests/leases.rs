//! Leases for shared storage where flock does not exclude across nodes: a
//! stale lease of another node is taken over, the holder renews its
//! heartbeat while it works, and a worker whose lease another node took
//! over stops before committing anything (fencing). A live lease of another
//! node is refused (see the bad-input table).

mod store_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use store_support::{run, stderr, synthetic_seeds, tree, worker, write_seeds};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const LEASE: &str = "shards/instruction/lease-00000-of-00001.json";

fn foreign_lease(out: &Path, heartbeat: u64, ttl: u64) {
    let p = out.join(LEASE);
    std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &p,
        format!(r#"{{"host":"node-b","pid":777,"fingerprint":"0123456789abcdef","token":"node-b-token","heartbeat":{heartbeat},"ttl":{ttl}}}"#),
    )
    .expect("lease");
}

fn lease_json(out: &Path) -> Option<serde_json::Value> {
    let b = std::fs::read(out.join(LEASE)).ok()?;
    serde_json::from_slice(&b).ok()
}

#[test]
fn a_stale_lease_of_another_node_is_taken_over() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeds = tmp.path().join("s.parquet");
    write_seeds(&seeds, &synthetic_seeds(40));
    let reference = tmp.path().join("ref");
    assert!(run(worker(&seeds, &reference, 0, 1)).status.success());
    let out = tmp.path().join("out");
    foreign_lease(&out, now() - 600, 60);
    let mut c = worker(&seeds, &out, 0, 1);
    c.env("COTFORGE_LOG", "warn");
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("taking over the stale lease of pid 777 on host node-b"),
        "{}",
        stderr(&o)
    );
    assert!(
        !out.join(LEASE).exists(),
        "the lease is released at the end"
    );
    assert_eq!(
        tree(&out.join("shards")),
        tree(&reference.join("shards")),
        "a taken-over shard differs from a clean run"
    );
}

#[test]
fn the_holder_renews_its_lease_and_stops_when_another_node_takes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeds = tmp.path().join("s.parquet");
    write_seeds(&seeds, &synthetic_seeds(300));
    let reference = tmp.path().join("ref");
    assert!(run(worker(&seeds, &reference, 0, 1)).status.success());

    // A slow worker with a 2 s lease (renewed every 0.5 s).
    let out = tmp.path().join("out");
    let mut c = worker(&seeds, &out, 0, 1);
    c.args(["--lease-seconds", "2"])
        .env("COTFORGE_SLEEP_AT", "worker.processed:300")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    let t0 = Instant::now();
    let first = loop {
        if let Some(l) = lease_json(&out) {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no lease written");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first["pid"], child.id());
    std::thread::sleep(Duration::from_millis(2500));
    let later = lease_json(&out).expect("lease");
    assert_eq!(later["token"], first["token"], "the lease changed hands");
    assert!(
        later["heartbeat"].as_u64() > first["heartbeat"].as_u64(),
        "the heartbeat was not renewed: {first} then {later}"
    );
    // Another node takes the shard over (as after a network partition).
    foreign_lease(&out, now(), 600);
    let o = child.wait_with_output().expect("wait");
    assert!(!o.status.success(), "the fenced worker finished anyway");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("the lease was taken over by pid 777 on host node-b")
            && e.contains("stops without committing"),
        "{e}"
    );
    let dir = out.join("shards/instruction");
    for f in [
        "shard-00000-of-00001.parquet",
        "rejected-00000-of-00001.parquet",
        "manifest-00000-of-00001.json",
        "done-00000-of-00001.json",
    ] {
        assert!(!dir.join(f).exists(), "the fenced worker committed {f}");
    }
    assert_eq!(
        lease_json(&out).expect("lease")["token"],
        "node-b-token",
        "the fenced worker removed or overwrote the new holder's lease"
    );

    // Once that lease goes stale, the shard is taken over and completes as a clean run would.
    foreign_lease(&out, now() - 1200, 600);
    let o = run(worker(&seeds, &out, 0, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tree(&out.join("shards")), tree(&reference.join("shards")));
}
