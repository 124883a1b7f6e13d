//! The README's "Running a fleet" section runs as written: `scripts/readme-fleet` runs its
//! commands (on free ports, with this build's binaries), the calls at the top of the README
//! against its example function among them, and the loadgen's audit passes.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_fleet_section_runs_and_its_audit_passes() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_flotilla-loadgen"))
        .parent()
        .expect("binary folder");
    for bin in ["flotilla-gateway", "flotilla-worker"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{bin} is not built in {} (run the workspace's tests)",
            bin_dir.display()
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    let out = Command::new(root.join("scripts/readme-fleet"))
        .env("FLOTILLA_BIN_DIR", bin_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run scripts/readme-fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let audits: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("- audit:"))
        .collect();
    assert_eq!(audits.len(), 2, "two audited runs in\n{stdout}\n{stderr}");
    assert!(
        audits[0].contains("accepted 10,000 · completed 10,000 · lost 0")
            && audits[0].ends_with("→ OK"),
        "{}",
        audits[0]
    );
    assert!(
        audits[1].contains("accepted 2,000 · completed 2,000 · lost 0")
            && audits[1].ends_with("→ OK"),
        "{}",
        audits[1]
    );
    assert!(
        stdout.contains("final states (status API): succeeded × 2,000"),
        "{stdout}"
    );
    // The calls by hand: the call's status, its result not there yet, its cancel, and the
    // synchronous call's answer (the example function echoes what it was sent).
    assert!(
        stdout.matches(r#""function":"resize""#).count() >= 2,
        "the status, and the 409 for its result while it runs: {stdout}"
    );
    assert!(stdout.contains("photo bytes"), "{stdout}");
}
