//! The events of a run: the scripted job through `run_job` with a recording
//! sink. Every journaled row, chain and reject is reported once, with the
//! stage it was rejected at, and the events agree with the shard files; a
//! rerun reports the shards done without redoing a seed; a resumed shard
//! reports what it found in its journal.

mod store_support;

use std::collections::BTreeMap;

use cotforge::recipes::job;
use cotforge::recipes::run::{run_job, RunOptions};
use cotforge::record::{Recipe, Seed};
use cotforge::store::events::Event;
use cotforge::store::parquet_io::read_parquet;
use cotforge::store::schema::{batch_to_chains, batch_to_rejects};
use cotforge::store::worker::ShardState;
use cotforge::store::{run_shard_with, Ingest, IngestOptions, Processed, ShardSpec};
use store_support::*;

/// (kind, shard suffix) -> the events between its start and its commit.
fn per_shard(events: &[Event]) -> BTreeMap<(String, String), Vec<Event>> {
    let mut out: BTreeMap<(String, String), Vec<Event>> = BTreeMap::new();
    let mut current = None;
    for e in events {
        if let Event::ShardStarted { kind, shard, .. } = e {
            let k = (kind.to_string(), shard.suffix());
            assert!(!out.contains_key(&k), "{k:?} started twice");
            current = Some(k);
        }
        let k = current.clone().expect("an event before any ShardStarted");
        out.entry(k).or_default().push(e.clone());
        if matches!(e, Event::ShardCommitted { .. }) {
            current = None;
        }
    }
    out
}

#[test]
fn a_scripted_run_reports_every_row_chain_and_reject() {
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("out");
    let job = job::load(&scripted_job(d.path(), "job", &out, &[])).expect("job");
    let mut events: Vec<Event> = Vec::new();
    let s = run_job(&job, &RunOptions::default(), &mut events).expect("run");
    let shards = per_shard(&events);
    assert_eq!(shards.len(), 12, "3 recipes x 4 shards");
    let mut stages = BTreeMap::new();
    assert_eq!(s.shards.len(), 12);
    for ((kind, suffix), ev) in &shards {
        let Some(Event::ShardStarted { seeds: total, .. }) = ev.first() else {
            panic!("{kind} {suffix}: does not start with ShardStarted");
        };
        let Some(Event::ShardCommitted {
            state,
            seeds,
            accepted,
            rejected,
            ..
        }) = ev.last()
        else {
            panic!("{kind} {suffix}: does not end with ShardCommitted");
        };
        assert_eq!(*state, ShardState::Completed);
        assert_eq!(seeds, total, "{kind} {suffix}: rows started vs committed");
        let count = |f: fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count() as u64;
        assert_eq!(count(|e| matches!(e, Event::SeedDone { .. })), *seeds);
        assert_eq!(
            count(|e| matches!(e, Event::ChainAccepted { .. })),
            *accepted
        );
        assert_eq!(
            count(|e| matches!(e, Event::ChainRejected { .. })),
            *rejected
        );
        // Token counters only grow; every batch's seeds were reported done.
        let mut last = 0;
        let mut batched = 0;
        for e in ev {
            if let Event::BatchDone { seeds, tokens } = e {
                assert!(*tokens >= last, "{kind} {suffix}: tokens went back");
                last = *tokens;
                batched += seeds;
            }
        }
        assert!(
            batched > 0 && batched <= *seeds,
            "{kind} {suffix}: {batched}"
        );
        assert!(last > 0, "{kind} {suffix}: no engine tokens reported");

        // The events are the shard files: same chain ids, same (seed, stage) rejects.
        let dir = out.join("shards").join(kind);
        let mut want_chains = Vec::new();
        for b in read_parquet(&dir.join(format!("shard-{suffix}.parquet"))).expect("chains") {
            want_chains.extend(
                batch_to_chains(&b)
                    .expect("chains")
                    .into_iter()
                    .map(|c| c.id),
            );
        }
        let mut want_rejects = Vec::new();
        for b in read_parquet(&dir.join(format!("rejected-{suffix}.parquet"))).expect("rejects") {
            want_rejects.extend(
                batch_to_rejects(&b)
                    .expect("rejects")
                    .into_iter()
                    .map(|r| (r.seed_id, r.stage)),
            );
        }
        let mut got_chains = Vec::new();
        let mut got_rejects = Vec::new();
        for e in ev {
            match e {
                Event::ChainAccepted { chain_id, .. } => got_chains.push(chain_id.clone()),
                Event::ChainRejected { seed_id, stage, .. } => {
                    *stages.entry(stage.to_string()).or_insert(0) += 1;
                    got_rejects.push((seed_id.clone(), *stage))
                }
                _ => {}
            }
        }
        for v in [&mut want_chains, &mut got_chains] {
            v.sort();
        }
        want_rejects.sort();
        got_rejects.sort();
        assert_eq!(got_chains, want_chains, "{kind} {suffix}");
        assert_eq!(got_rejects, want_rejects, "{kind} {suffix}");
    }
    // The scripted engine is deterministic: these are the job's rejects.
    let want: BTreeMap<String, i32> = [
        ("marco_cot.ship".to_string(), 384),
        ("open_o1.input".to_string(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(stages, want);

    // A rerun: every shard already done, no seed redone.
    let mut again: Vec<Event> = Vec::new();
    run_job(&job, &RunOptions::default(), &mut again).expect("rerun");
    let shards = per_shard(&again);
    assert_eq!(shards.len(), 12);
    for ev in shards.values() {
        assert!(matches!(
            ev.last(),
            Some(Event::ShardCommitted {
                state: ShardState::AlreadyDone,
                ..
            })
        ));
        assert!(!ev.iter().any(|e| matches!(e, Event::SeedDone { .. })));
    }
}

#[test]
fn a_resumed_shard_reports_its_journal() {
    let d = tempfile::tempdir().expect("tempdir");
    let (seeds, o) = small_shard(d.path());
    let ingest = || Ingest::open(&[&seeds], IngestOptions::default()).expect("open");
    let ok = |s: &Seed| Processed {
        accepted: vec![cotforge::record::Chain {
            id: format!("c-{}", s.id),
            seed_id: s.id.clone(),
            ..Default::default()
        }],
        rejected: vec![],
    };
    let mut calls = 0;
    let mut first: Vec<Event> = Vec::new();
    run_shard_with(
        &o,
        ingest(),
        &mut |s: &Seed| {
            calls += 1;
            if calls == 10 {
                return Err("stop".to_string());
            }
            Ok(ok(s))
        },
        &mut first,
    )
    .expect_err("stops");
    // Two whole batches journaled, then the failure: no commit reported.
    let done = first
        .iter()
        .filter(|e| matches!(e, Event::SeedDone { .. }))
        .count();
    assert_eq!(done, 8);
    assert!(!first
        .iter()
        .any(|e| matches!(e, Event::ShardCommitted { .. })));

    let mut second: Vec<Event> = Vec::new();
    run_shard_with(&o, ingest(), &mut |s: &Seed| Ok(ok(s)), &mut second).expect("resume");
    assert_eq!(
        second.first(),
        Some(&Event::Resumed {
            kind: Recipe::Instruction,
            shard: ShardSpec::single(),
            rows: 8
        })
    );
    let done = second
        .iter()
        .filter(|e| matches!(e, Event::SeedDone { .. }))
        .count();
    assert_eq!(done, 12);
    assert!(matches!(
        second.last(),
        Some(Event::ShardCommitted {
            state: ShardState::Completed,
            seeds: 20,
            accepted: 20,
            rejected: 0,
            ..
        })
    ));
}
