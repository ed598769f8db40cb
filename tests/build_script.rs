//! scripts/build.sh, the one place that picks cotforge's CPU flags: native by
//! default, the self-test after a native build, the portable rebuild when the
//! self-test dies of a signal, the per-CPU record of that, and the opt-out.
//! A stand-in `cargo` on PATH writes a stand-in `cotforge` whose self-test
//! behaves as told (a real SIGILL needs a CPU that lies about its features).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How the stand-in binary of a native build behaves when the self-test runs it.
#[derive(Clone, Copy)]
enum Native {
    Ok,
    Sigill,
    Exit1,
}

struct Sandbox {
    _dir: tempfile::TempDir,
    target: PathBuf,
    bin: PathBuf,
    model: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let cargo = bin.join("cargo");
        // Records each build's RUSTFLAGS; the built "cotforge" records each run.
        std::fs::write(
            &cargo,
            r#"#!/bin/sh
set -e
flags="${RUSTFLAGS:-<none>}"
mkdir -p "$CARGO_TARGET_DIR/release"
echo "$flags" >>"$CARGO_TARGET_DIR/cargo-calls"
echo "${CFLAGS:-<none>}" >>"$CARGO_TARGET_DIR/cargo-cflags"
# Like cargo: the same flags as the last build change nothing.
[ "$(cat "$CARGO_TARGET_DIR/last-flags" 2>/dev/null)" = "$flags" ] && exit 0
echo "$flags" >"$CARGO_TARGET_DIR/last-flags"
case "$flags" in
  *target-cpu=native*) body="$FAKE_NATIVE" ;;
  *) body="exit 0" ;;
esac
printf '#!/bin/sh\n# %s\necho run >>"%s/selftest-runs"\nulimit -c 0\n%s\n' \
  "$flags" "$CARGO_TARGET_DIR" "$body" >"$CARGO_TARGET_DIR/release/cotforge"
chmod +x "$CARGO_TARGET_DIR/release/cotforge"
"#,
        )
        .expect("write cargo");
        make_executable(&cargo);
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, b"stand-in").expect("write model");
        Sandbox {
            _dir: dir,
            target,
            bin,
            model,
        }
    }

    fn build(&self, native: Native, opt: Option<&str>) -> Output {
        self.build_amx(native, opt, "none")
    }

    /// `amx`: what the AMX probe found ("none", "ok", "faults"), given rather
    /// than probed so the test does not depend on the machine.
    fn build_amx(&self, native: Native, opt: Option<&str>, amx: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build.sh");
        let fake = match native {
            Native::Ok => "exit 0",
            Native::Sigill => "kill -ILL $$",
            Native::Exit1 => "echo 'error: bad model' >&2; exit 1",
        };
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        c.arg(&script)
            .env("PATH", path)
            .env("CARGO_TARGET_DIR", &self.target)
            .env("COTFORGE_SELFTEST_MODEL", &self.model)
            .env("FAKE_NATIVE", fake)
            .env("COTFORGE_AMX_STATE", amx);
        // What scripts/test.sh exported for the real build must not leak in.
        for v in [
            "RUSTFLAGS",
            "CFLAGS",
            "CXXFLAGS",
            "COTFORGE_USER_RUSTFLAGS",
            "COTFORGE_USER_CFLAGS",
            "COTFORGE_USER_CXXFLAGS",
            "COTFORGE_BUILD_CPU",
            "COTFORGE_BUILD_WHY",
            "COTFORGE_NATIVE",
        ] {
            c.env_remove(v);
        }
        if let Some(v) = opt {
            c.env("COTFORGE_NATIVE", v);
        }
        c.output().expect("running scripts/build.sh")
    }

    fn calls(&self) -> Vec<String> {
        read_lines(&self.target.join("cargo-calls"))
    }

    fn cflags(&self) -> Vec<String> {
        read_lines(&self.target.join("cargo-cflags"))
    }

    fn selftest_runs(&self) -> usize {
        read_lines(&self.target.join("selftest-runs")).len()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.target.join("cpu-build")).unwrap_or_default()
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const NATIVE: &str = "-C target-cpu=native";

#[test]
fn native_by_default_and_the_self_test_runs_once_per_binary() {
    let s = Sandbox::new();
    let o = s.build(Native::Ok, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.calls(), vec![NATIVE]);
    assert_eq!(s.selftest_runs(), 1);
    assert!(
        stderr(&o).contains("passed its CPU self-test"),
        "{}",
        stderr(&o)
    );
    assert!(s.state().starts_with("ok "), "{}", s.state());
    // Built again, unchanged: not tested again.
    let o = s.build(Native::Ok, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.calls(), vec![NATIVE, NATIVE]);
    assert_eq!(s.selftest_runs(), 1);
}

#[test]
fn amx_that_faults_is_left_out_of_the_native_build() {
    let s = Sandbox::new();
    let o = s.build_amx(Native::Ok, None, "faults");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        s.calls(),
        vec!["-C target-cpu=native --cfg cotforge_no_amx"]
    );
    assert_eq!(
        s.cflags(),
        vec!["-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"]
    );
    assert!(err.contains("tile instruction faults"), "{err}");
    // AMX that works stays in.
    let s = Sandbox::new();
    let o = s.build_amx(Native::Ok, None, "ok");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.calls(), vec![NATIVE]);
    assert_eq!(s.cflags(), vec!["<none>"]);
}

#[test]
fn a_crashing_native_build_is_rebuilt_portable_and_remembered() {
    let s = Sandbox::new();
    let o = s.build(Native::Sigill, None);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(s.calls(), vec![NATIVE, "<none>"], "{err}");
    assert!(
        err.contains("THE NATIVE BUILD CRASHED ON THIS CPU: SIGILL"),
        "{err}"
    );
    assert!(err.contains("COTFORGE_NATIVE=0"), "{err}");
    assert!(s.state().starts_with("fail "), "{}", s.state());
    assert!(s.state().contains("SIGILL"), "{}", s.state());

    // Next run: portable straight away, saying why.
    let o = s.build(Native::Sigill, None);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(s.calls(), vec![NATIVE, "<none>", "<none>"], "{err}");
    assert!(err.contains("failed its self-test on this CPU"), "{err}");

    // COTFORGE_NATIVE=1 tries native again (and falls back again).
    let o = s.build(Native::Sigill, Some("1"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.calls()[3..], [NATIVE, "<none>"]);
}

#[test]
fn opt_out_builds_portable_without_a_self_test() {
    let s = Sandbox::new();
    let o = s.build(Native::Sigill, Some("0"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.calls(), vec!["<none>"]);
    assert_eq!(s.selftest_runs(), 0);
    assert!(stderr(&o).contains("portable CPU kernels (COTFORGE_NATIVE=0)"));

    let o = s.build(Native::Ok, Some("maybe"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("COTFORGE_NATIVE='maybe'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_self_test_error_that_is_no_crash_fails_without_a_rebuild() {
    let s = Sandbox::new();
    let o = s.build(Native::Exit1, None);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert_eq!(s.calls(), vec![NATIVE]);
    assert!(err.contains("not a CPU fault"), "{err}");
    assert!(err.contains("error: bad model"), "{err}");
    assert!(!s.state().contains("fail"), "{}", s.state());
}
