//! The nightly array job on a real Slurm: the test starts munged, slurmctld and
//! slurmd for one local node (this host, its CPUs and memory), submits
//! `scripts/slurm/nightly.sbatch` with the scripted engine, cancels one array
//! task mid-shard (`scancel`), checks that its shard is left incomplete but
//! consistent and that the merge job never runs, resubmits that array index,
//! and checks that the night's final chains and export are byte-identical to a
//! single-process `cotforge run` of the same job.
//!
//! Needs root and Debian's `slurm-wlm` and `munge` (scripts/test.sh installs
//! them). Without them the test fails and says why; `COTFORGE_SKIP_SLURM=1`
//! skips it explicitly.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SKIP_VAR: &str = "COTFORGE_SKIP_SLURM";
const TOOLS: &[&str] = &[
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "scancel",
    "scontrol",
    "sinfo",
    "squeue",
];
/// Bound of each wait on the scheduler; the whole test takes well under a minute.
const WAIT: Duration = Duration::from_secs(120);
/// The array task the test cancels and resubmits.
const CANCELLED: u32 = 2;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Tools by absolute path, or None when the test is explicitly skipped.
fn preflight() -> Option<HashMap<&'static str, PathBuf>> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not running as root (slurmd must be root to start jobs)".to_string());
    }
    let mut tools = HashMap::new();
    for t in TOOLS {
        match find(t) {
            Some(p) => {
                tools.insert(*t, p);
            }
            None => problems.push(format!("`{t}` not found")),
        }
    }
    if problems.is_empty() {
        return Some(tools);
    }
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!(
            "skipping the Slurm test ({SKIP_VAR}=1): {}",
            problems.join("; ")
        );
        return None;
    }
    panic!(
        "the Slurm test cannot run: {}. Run it as root after `apt-get install slurm-wlm munge` \
         (scripts/test.sh does both), or set {SKIP_VAR}=1 to skip it explicitly",
        problems.join("; ")
    );
}

/// A command with none of the caller's scheduler or fault-injection variables:
/// the test may itself run inside a Slurm job.
fn clean(prog: &Path) -> Command {
    let mut c = Command::new(prog);
    for (k, _) in std::env::vars() {
        if ["SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "COTFORGE_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cotforge(dir: &Path, args: &[&str]) -> Output {
    clean(Path::new(env!("CARGO_BIN_EXE_cotforge")))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn cotforge")
}

fn cotforge_ok(dir: &Path, args: &[&str]) -> String {
    let o = cotforge(dir, args);
    assert!(
        o.status.success(),
        "cotforge {args:?} failed:\n{}",
        text(&o)
    );
    text(&o)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn tail(p: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A one-node Slurm cluster of this host in `dir`; daemons stop on drop.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    tools: HashMap<&'static str, PathBuf>,
    node: String,
    daemons: RefCell<Vec<(&'static str, Child)>>,
}

impl Cluster {
    fn start(dir: &Path, tools: HashMap<&'static str, PathBuf>) -> Cluster {
        let sub = |s: &str| {
            let p = dir.join(s);
            std::fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let (key_dir, run, log) = (sub("munge"), sub("run"), sub("log"));
        let (state, spool) = (sub("state"), sub("spool"));
        use std::os::unix::fs::PermissionsExt;
        // munged wants its socket directory searchable by all, its key private.
        for (d, mode) in [(dir, 0o755), (&run, 0o755), (&key_dir, 0o700)] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
            tools,
            node: String::new(),
            daemons: RefCell::new(Vec::new()),
        };
        let key = key_dir.join("munge.key");
        let o = c
            .cmd("mungekey")
            .arg("--create")
            .arg(format!("--keyfile={}", key.display()))
            .output()
            .expect("mungekey");
        assert!(o.status.success(), "mungekey: {}", text(&o));
        let socket = run.join("munge.socket");
        let mut munged = c.cmd("munged");
        munged.arg("--foreground").args([
            format!("--socket={}", socket.display()),
            format!("--key-file={}", key.display()),
            format!("--log-file={}", log.join("munged.log").display()),
            format!("--pid-file={}", run.join("munged.pid").display()),
            format!("--seed-file={}", key_dir.join("munged.seed").display()),
        ]);
        c.spawn("munged", munged);
        c.wait_for("munged to create its socket", || socket.exists());

        // This host as the node, with the CPUs and memory slurmd detects.
        let o = c.cmd("slurmd").arg("-C").output().expect("slurmd -C");
        let detected = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("NodeName="))
            .unwrap_or_else(|| panic!("slurmd -C printed no NodeName line: {}", text(&o)))
            .to_string();
        c.node = detected
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("NodeName="))
            .expect("node name")
            .to_string();
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let d = |p: &Path| p.display().to_string();
        let conf = format!(
            "# Written by tests/slurm_nightly.rs: one node, no cgroups, no accounting.\n\
             ClusterName=cotforge\n\
             SlurmctldHost={node}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket}\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={run}/slurmctld.pid\n\
             SlurmdPidFile={run}/slurmd.pid\n\
             SlurmctldLogFile={log}/slurmctld.log\n\
             SlurmdLogFile={log}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core_Memory\n\
             DefMemPerCPU=256\n\
             SchedulerType=sched/backfill\n\
             AccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             JobCompType=jobcomp/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             KillWait=10\n\
             MinJobAge=3600\n\
             {detected} NodeAddr=127.0.0.1 State=UNKNOWN\n\
             PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            node = c.node,
            socket = d(&socket),
            state = d(&state),
            spool = d(&spool),
            run = d(&run),
            log = d(&log),
        );
        std::fs::write(&c.conf, conf).expect("slurm.conf");

        let mut ctld = c.cmd("slurmctld");
        ctld.arg("-D").arg("-f").arg(&c.conf);
        c.spawn("slurmctld", ctld);
        c.wait_for("slurmctld to answer `scontrol ping`", || {
            c.cmd("scontrol")
                .arg("ping")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"))
        });
        let mut slurmd = c.cmd("slurmd");
        slurmd.arg("-D").arg("-f").arg(&c.conf);
        c.spawn("slurmd", slurmd);
        c.wait_for("the node to be idle", || {
            c.cmd("sinfo")
                .args(["-h", "-n", &c.node, "-o", "%t"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        c
    }

    /// A Slurm or munge tool pointed at this cluster.
    fn cmd(&self, tool: &str) -> Command {
        let mut c = clean(&self.tools[tool]);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn spawn(&self, name: &'static str, mut cmd: Command) {
        let log = |s: &str| {
            std::fs::File::create(self.dir.join("log").join(format!("{name}.{s}"))).expect("log")
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.daemons.borrow_mut().push((name, child));
    }

    /// The daemons' logs and every job log under the cluster's directory, for
    /// failure messages.
    fn diagnostics(&self) -> String {
        walkdir::WalkDir::new(&self.dir)
            .max_depth(3)
            .sort_by_file_name()
            .into_iter()
            .flatten()
            .filter(|e| {
                e.file_type().is_file() && !e.path().components().any(|c| c.as_os_str() == "out")
            })
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| ["log", "out", "err"].iter().any(|w| x == *w))
            })
            .map(|e| format!("--- {}\n{}", e.path().display(), tail(e.path(), 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            for (name, child) in self.daemons.borrow_mut().iter_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "{name} exited ({st}) while waiting for {what}\n{}",
                        self.diagnostics()
                    );
                }
            }
            assert!(
                t0.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `scontrol show job ID`, one map of fields per job record (an array job
    /// has one per task, or per still-pending range of tasks).
    fn jobs(&self, id: &str) -> Vec<HashMap<String, String>> {
        let o = self
            .cmd("scontrol")
            .args(["-o", "show", "job", id])
            .output()
            .expect("scontrol");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    fn state(&self, id: &str) -> Vec<String> {
        self.jobs(id)
            .iter()
            .map(|j| j.get("JobState").cloned().unwrap_or_default())
            .collect()
    }

    /// Wait until every record of `id` has ended; return their states.
    fn wait_ended(&self, id: &str) -> Vec<HashMap<String, String>> {
        const ENDED: &[&str] = &[
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
        ];
        let t0 = Instant::now();
        loop {
            let jobs = self.jobs(id);
            if !jobs.is_empty()
                && jobs.iter().all(|j| {
                    j.get("JobState")
                        .is_some_and(|s| ENDED.contains(&s.as_str()))
                })
            {
                return jobs;
            }
            assert!(
                t0.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for job {id} to end (now {:?})\n{}",
                self.state(id),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `sbatch scripts/slurm/nightly.sbatch job.toml` from `night`, as the README
    /// says; returns the worker array's and the merge job's ids.
    fn submit_night(&self, night: &Path, env: &[(&str, &str)], tag: &str) -> (String, String) {
        let log = night.join(format!("submit-{tag}.log"));
        let mut c = self.cmd("sbatch");
        c.current_dir(night)
            .arg("--parsable")
            .arg(format!("--output={}", log.display()))
            .arg(repo("scripts/slurm/nightly.sbatch"))
            .arg("job.toml")
            .env("COTFORGE", env!("CARGO_BIN_EXE_cotforge"))
            // This host is the whole cluster: small workers, so two run at once.
            .envs([
                ("CPUS", "1"),
                ("MEM", "256M"),
                ("TIME", "00:10:00"),
                ("MERGE_CPUS", "1"),
                ("MERGE_MEM", "512M"),
                ("MERGE_TIME", "00:10:00"),
            ])
            .envs(env.iter().copied());
        let o = c.output().expect("sbatch");
        assert!(o.status.success(), "sbatch nightly.sbatch: {}", text(&o));
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let st = self.wait_ended(&id);
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            st[0]["JobState"],
            "COMPLETED",
            "the submit job failed: {out}\n{}",
            self.diagnostics()
        );
        let after = |word: &str| {
            out.split(word)
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("no `{word}<id>` in the submit job's output: {out}"))
                .to_string()
        };
        (after("workers "), after("merge "))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.daemons.get_mut().len() == 3 {
            // Jobs first (this cluster's only: SLURM_CONF points at it), so no
            // slurmstepd outlives slurmd.
            let _ = self.cmd("scancel").arg("--user=root").output();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20)
                && self
                    .cmd("squeue")
                    .args(["-h", "-t", "running,completing"])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        while let Some((name, mut child)) = self.daemons.get_mut().pop() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let t0 = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} ignored SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The committed scripted job, with more seeds so a shard takes a while, and
/// paths that do not depend on where it runs (`out` relative to the job's directory).
fn write_job(extra_seeds: &Path) -> String {
    let text = std::fs::read_to_string(repo("data/jobs/scripted.toml")).expect("scripted.toml");
    let seeds = format!("\"{}/data/seeds/", env!("CARGO_MANIFEST_DIR"));
    let marco = "seeds = [\"data/seeds/gsm8k.parquet\", \"data/seeds/letter_count.parquet\"]";
    assert!(
        text.contains(marco) && text.contains("out = \"out/scripted\""),
        "data/jobs/scripted.toml changed: update this test"
    );
    let text = text
        .replace(
            marco,
            &format!(
                "seeds = [\"data/seeds/gsm8k.parquet\", \"data/seeds/letter_count.parquet\", {:?}]",
                extra_seeds.display().to_string()
            ),
        )
        .replace("out = \"out/scripted\"", "out = \"out\"")
        .replace("\"data/seeds/", &seeds);
    assert!(text.contains("num_shards = 4"));
    text
}

/// Synthetic word problems imported with `cotforge seeds import`.
fn synthetic_seeds(dir: &Path, n: usize) -> PathBuf {
    let jsonl = dir.join("synthetic.jsonl");
    let mut body = String::new();
    for i in 0..n {
        let (a, b, k) = (i * 7 % 97 + 3, i * 13 % 89 + 5, i % 9 + 2);
        let row = serde_json::json!({
            "question": format!("Sam has {a} apples and buys {b} bags of {k} apples each. How many apples does Sam have now? (problem {i})"),
            "answer": format!("#### {}", a + b * k),
        });
        body.push_str(&row.to_string());
        body.push('\n');
    }
    std::fs::write(&jsonl, body).expect("jsonl");
    let out = dir.join("synthetic.parquet");
    cotforge_ok(
        dir,
        &[
            "seeds",
            "import",
            jsonl.to_str().expect("utf8"),
            "--prompt-field",
            "question",
            "--answer-field",
            "answer",
            "--source",
            "synthetic",
            "--out",
            out.to_str().expect("utf8"),
        ],
    );
    out
}

/// Every file of the export and the final chains, as (relative path, bytes).
fn shipped(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = ["final/chains.parquet", "final/rejected-dedup.parquet"]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f.to_string(), bytes)
        })
        .collect();
    for e in walkdir::WalkDir::new(out.join("export")).sort_by_file_name() {
        let e = e.expect("walk export");
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(out).expect("rel");
            v.push((
                rel.display().to_string(),
                std::fs::read(e.path()).expect("read"),
            ));
        }
    }
    assert!(
        v.iter().any(|(p, _)| p.starts_with("export/data/")),
        "export wrote no data files"
    );
    v
}

fn shard_states(night: &Path) -> Vec<serde_json::Value> {
    let s = cotforge_ok(night, &["status", "--json", "out"]);
    let v: serde_json::Value = serde_json::from_str(&s).expect("status --json");
    v["shards"].as_array().expect("shards").clone()
}

#[test]
fn nightly_sbatch_on_a_real_slurm_survives_a_cancelled_task() {
    let Some(tools) = preflight() else { return };
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let extra = synthetic_seeds(dir, 240);
    let job = write_job(&extra);

    // The reference: one process runs every shard, then finalizes.
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).expect("mkdir");
    std::fs::write(reference.join("job.toml"), &job).expect("job");
    cotforge_ok(&reference, &["run", "job.toml", "--no-progress"]);

    let night = dir.join("night");
    std::fs::create_dir_all(&night).expect("mkdir");
    std::fs::write(night.join("job.toml"), &job).expect("job");
    let cluster = Cluster::start(dir, tools);
    let phase = |what: &str| eprintln!("[slurm test {:>6.1?}] {what}", t0.elapsed());
    phase(&format!("slurm up, node {}", cluster.node));

    // Night 1, paced (a pause after every processed batch) so the cancel
    // reliably lands inside a shard on any disk.
    let (workers, merge) = cluster.submit_night(
        &night,
        &[("COTFORGE_SLEEP_AT", "worker.processed:200")],
        "1",
    );
    let task = format!("{workers}_{CANCELLED}");
    let mut seen = 0;
    cluster.wait_for(
        &format!("the marco_cot shard of task {CANCELLED} to journal some seeds"),
        || {
            let marco = shard_states(&night).into_iter().find(|s| {
                s["kind"] == "marco_cot"
                    && s["shard"]["index"] == CANCELLED
                    && s["shard"]["count"] == 4
            });
            match marco {
                Some(s) if s["state"] == "done" => {
                    panic!("shard {CANCELLED} finished before the test could cancel it")
                }
                Some(s) if s["state"] == "running" && s["seeds"].as_u64() >= Some(8) => {
                    seen = s["seeds"].as_u64().unwrap_or(0);
                    true
                }
                _ => false,
            }
        },
    );
    phase(&format!(
        "night 1 running; cancelling {task} at {seen} journaled seeds"
    ));
    let o = cluster.cmd("scancel").arg(&task).output().expect("scancel");
    assert!(o.status.success(), "scancel {task}: {}", text(&o));

    let ended = cluster.wait_ended(&workers);
    let cancelled = cluster.jobs(&task);
    assert_eq!(cancelled[0]["JobState"], "CANCELLED", "{cancelled:?}");
    // cotforge caught Slurm's SIGTERM and exited "interrupted, resumable".
    assert_eq!(cancelled[0]["ExitCode"], "130:0", "{cancelled:?}");
    let log =
        std::fs::read_to_string(night.join(format!("logs/cotforge-{task}.log"))).expect("task log");
    assert!(
        log.contains("interrupted: finished work is journaled"),
        "{log}"
    );
    let completed = ended
        .iter()
        .filter(|j| j["JobState"] == "COMPLETED")
        .count();
    assert_eq!(completed, 3, "the other tasks complete: {ended:?}");

    // The task runs the recipes in job order: its open_o1 shard had finished,
    // marco_cot was cut short (journaled, not published), instruction never
    // started; everything committed is intact.
    for s in shard_states(&night) {
        let pending = s["shard"]["index"] == CANCELLED && s["kind"] != "open_o1";
        let want = if pending { "pending" } else { "done" };
        assert_eq!(s["state"], want, "{s}");
        if pending && s["kind"] == "marco_cot" {
            assert!(s["seeds"].as_u64() >= Some(seen), "{s}");
        }
    }
    let v = cotforge(&night, &["verify", "out"]);
    assert!(v.status.success(), "verify after the cancel: {}", text(&v));
    for kind in ["open_o1", "marco_cot", "instruction"] {
        let dir = night.join("out/shards").join(kind);
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with('.'), "temporary file {kind}/{name} left");
            assert!(
                kind == "open_o1"
                    || !name.contains(&format!("{CANCELLED:05}-of-00004"))
                    || name.starts_with("journal-"),
                "{kind}/{name} of the cancelled shard"
            );
        }
    }
    // Slurm never runs the merge after a failed dependency; the script has it dropped.
    let m = cluster.wait_ended(&merge);
    assert_eq!(m[0]["JobState"], "CANCELLED", "{m:?}");
    assert!(
        !night.join("out/final").exists(),
        "the merge ran on an incomplete night"
    );

    phase("night 1 ended: task cancelled, merge dropped");

    // Resubmit the cancelled index: it resumes its shard, then a new merge job runs.
    let (workers2, merge2) =
        cluster.submit_night(&night, &[("ARRAY", &CANCELLED.to_string())], "2");
    let m = cluster.wait_ended(&merge2);
    let merge_log =
        std::fs::read_to_string(night.join(format!("logs/cotforge-merge-{merge2}.log")))
            .unwrap_or_default();
    assert_eq!(
        (m[0]["JobState"].as_str(), m[0]["ExitCode"].as_str()),
        ("COMPLETED", "0:0"),
        "merge job: {merge_log}\n{}",
        cluster.diagnostics()
    );
    assert!(merge_log.contains(" 0 problems"), "{merge_log}");
    let log =
        std::fs::read_to_string(night.join(format!("logs/cotforge-{workers2}_{CANCELLED}.log")))
            .expect("resubmitted task log");
    let marco = log
        .lines()
        .find(|l| l.starts_with("marco_cot: Completed"))
        .unwrap_or_else(|| panic!("the resubmitted task did not complete marco_cot: {log}"));
    let resumed: u64 = marco
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed count in {marco:?}"));
    assert!(
        resumed >= seen,
        "{marco:?}: the shard resumed, {seen} seeds were journaled"
    );
    assert!(shard_states(&night).iter().all(|s| s["state"] == "done"));

    let (a, b) = (shipped(&reference.join("out")), shipped(&night.join("out")));
    assert_eq!(
        a.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        b.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((p, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{p} differs between one process and the Slurm night"
        );
    }
    phase("night 2 merged; output byte-identical to one process");
}
