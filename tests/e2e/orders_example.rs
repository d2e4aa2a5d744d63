//! The order-service example (`examples/orders-pytest`): a Flask app whose pytest suite talks to a
//! real PostgreSQL and a real Redis, from an image its script builds out of Debian's packages. Run
//! by plain pytest against containers of its own, by testfleet on local agents, and by agents that
//! cannot see the suite: every case comes out under pytest's name with pytest's verdict, and no
//! container of the example's image is left behind.

use std::path::Path;
use std::process::Command;

use crate::pytest_outcomes::{Verdicts, verdicts};
use crate::support::*;

const IMAGE: &str = "testfleet-example/orders-services:bookworm";

/// Whether the example's Python packages can be imported.
fn packages_or_skip(test: &str) -> bool {
    tool_or_skip(
        "python3",
        &["-c", "import flask, psycopg, redis"],
        "pip install -r examples/orders-pytest/requirements.txt",
        test,
    )
}

/// Containers of the example's image, running or not.
fn containers_of_the_image() -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("ancestor={IMAGE}")])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What plain pytest reports, against the containers the example's own script starts.
fn plain_pytest(suite: &Path, report: &Path) -> Verdicts {
    let out = Command::new("bash")
        .arg("services/pytest-with-services.sh")
        .args(["-q", "-p", "no:cacheprovider"])
        .arg(format!("--junitxml={}", report.display()))
        .current_dir(suite)
        .output()
        .unwrap();
    assert!(out.status.success(), "plain pytest: {out:?}");
    verdicts(&std::fs::read_to_string(report).unwrap())
}

fn check(label: &str, out: &std::process::Output, report: &Path, pytest: &Verdicts) {
    assert!(out.status.success(), "{label}: {}", stderr(out));
    let ours = verdicts(&std::fs::read_to_string(report).unwrap());
    assert_eq!(
        &ours, pytest,
        "{label}: every case under pytest's name and verdict"
    );
    let s = summary(&events(out));
    let skipped = pytest.values().filter(|v| **v == "skipped").count() as u32;
    assert_eq!(
        (s.passed, s.skipped, s.failed),
        (pytest.len() as u32 - skipped, skipped, 0),
        "{label}: {s:?}"
    );
}

#[test]
fn the_order_example_reports_what_plain_pytest_reports_locally_and_remotely() {
    let name = "the_order_example_reports_what_plain_pytest_reports_locally_and_remotely";
    if !docker_or_skip(name)
        || !pytest_or_skip(name)
        || !packages_or_skip(name)
        || !tool_or_skip(
            "debootstrap",
            &["--version"],
            "apt-get install debootstrap",
            name,
        )
        || !namespaces_or_skip(name)
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("orders");
    copy_example("orders-pytest", &suite);
    // The image is built once per machine (the script does nothing when it is there).
    let built = Command::new("sh")
        .arg("services/build-image.sh")
        .current_dir(&suite)
        .output()
        .unwrap();
    assert!(built.status.success(), "build-image.sh: {built:?}");

    let pytest = plain_pytest(&suite, &dir.path().join("pytest.xml"));
    // What the example is built to show, so that a change in it shows here first.
    let case = |class: &str, name: &str| (format!("tests.{class}"), name.to_owned());
    assert_eq!(pytest.len(), 31, "{pytest:?}");
    for (class, test) in [
        ("test_lifecycle", "test_a_paid_order_can_be_shipped"),
        (
            "test_lifecycle",
            "test_part_of_a_paid_order_can_be_refunded",
        ),
    ] {
        assert_eq!(
            pytest.get(&case(class, test)),
            Some(&"skipped"),
            "{pytest:?}"
        );
    }
    assert_eq!(containers_of_the_image(), Vec::<String>::new());

    let local = dir.path().join("local.xml");
    let out = RunLine::local(2)
        .in_dir(&suite)
        .json()
        .retries(0)
        .junit(&local)
        .output();
    check("local", &out, &local, &pytest);
    assert_eq!(
        containers_of_the_image(),
        Vec::<String>::new(),
        "the local agents removed their servers"
    );

    let (_coordinator, url) = coordinator(dir.path());
    let ids = [unique("orders-a"), unique("orders-b")];
    let mut agents: Vec<Proc> = ids
        .iter()
        .map(|id| {
            Proc::spawn(
                hidden_agent_command(dir.path(), &url, id, &suite),
                dir.path().join(format!("{id}.log")),
            )
        })
        .collect();
    wait_for_agents(&url, 2);
    let remote = dir.path().join("remote.xml");
    let out = RunLine::on(&url)
        .in_dir(&suite)
        .json()
        .retries(0)
        .junit(&remote)
        .output();
    check("agents that cannot see the suite", &out, &remote, &pytest);
    for agent in &mut agents {
        assert!(agent.stop().success(), "{}", agent.log());
    }
    for id in &ids {
        assert_eq!(leftovers(id), Vec::<String>::new(), "{id} left containers");
    }
}
