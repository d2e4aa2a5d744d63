//! The files in `deploy/` are checked, not just kept: Kubernetes manifests against the API's
//! schemas (strictly: an unknown field fails), systemd units by systemd's own verifier, the
//! compose file by docker-compose, and every testfleet command line in them by testfleet's own
//! argument parser.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// What a tool printed, both streams: the checkers report on either.
fn everything_printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// testfleet accepts `args` (with `--help` after them, so nothing runs): every flag exists and
/// takes the value it is given.
fn assert_testfleet_accepts(args: &[String], origin: &str) {
    let out = testfleet().args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{origin}: testfleet refuses {args:?}: {}",
        stderr(&out)
    );
}

#[test]
fn kubernetes_manifests_match_the_api_schemas_and_testfleet_s_flags() {
    let dir = repo().join("deploy/kubernetes");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    if tool_or_skip(
        "kubernetes-validate",
        &["--version"],
        "pip install kubernetes-validate",
        "the Kubernetes schema checks",
    ) {
        let out = Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&files)
            .output()
            .unwrap();
        let text = everything_printed(&out);
        assert!(out.status.success() && !text.contains("ERROR"), "{text}");
        assert_eq!(text.matches("passed for resource").count(), 4, "{text}");
    }
    // Every container running the testfleet image: its arguments, with the pod's variables
    // filled in, as testfleet parses them.
    if tool_or_skip(
        "python3",
        &["-c", "import yaml"],
        "pip install pyyaml",
        "the manifests' testfleet arguments",
    ) {
        const SCRIPT: &str = r#"
import json, sys, yaml
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if c["image"].startswith("testfleet"):
                print(json.dumps(c["args"]))
"#;
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .args(&files)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "the coordinator and the agents");
        for args in lines {
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("$(POD_NAME)", "agent-0")
                        .replace("$(NODE_NAME)", "n1")
                })
                .collect();
            assert_testfleet_accepts(&args, "deploy/kubernetes");
        }
    }
}

/// `ExecStart=` of a unit, its continuation lines joined and systemd's variables filled in.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    line.split_whitespace()
        .skip(1) // the binary
        .map(|w| {
            w.replace("${STATE_DIRECTORY}", "/var/lib/testfleet")
                .replace("${CREDENTIALS_DIRECTORY}", "/run/credentials")
                .replace("%H", "host")
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_s_verifier_and_testfleet_s_flags() {
    let dir = repo().join("deploy/systemd");
    let units = ["testfleet-coordinator.service", "testfleet-agent@.service"];
    for name in units {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_testfleet_accepts(&exec_start(&text), name);
    }
    if !tool_or_skip(
        "systemd-analyze",
        &["--version"],
        "apt-get install systemd",
        "the systemd unit checks",
    ) {
        return;
    }
    // The verifier insists that the binary exists: point the units at the one under test, and
    // verify the agent template through an instance of it.
    let tmp = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_testfleet");
    let mut paths = Vec::new();
    for (name, as_name) in [
        (units[0], units[0]),
        (units[1], "testfleet-agent@1.service"),
    ] {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap()
            .replace("/usr/local/bin/testfleet", binary);
        let path = tmp.path().join(as_name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let text = everything_printed(&out);
    // It only warns about unknown keys or bad values: any output at all is a finding.
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn the_compose_file_is_valid_for_docker_compose() {
    if !tool_or_skip(
        "docker-compose",
        &["version"],
        "apt-get install docker-compose",
        "the compose file check",
    ) {
        return;
    }
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(repo().join("deploy/compose.yaml"))
        .args(["config", "-q"])
        .env("CLIENT_TOKEN", "c".repeat(32))
        .env("AGENT_TOKEN", "a".repeat(32))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
