//! Service images from registries, against a real registry on loopback: an image only the
//! registry has is pulled once per engine however many agents want it, the pull is timed apart
//! from the starts, credentials come from where Docker users keep them, `build` images pull their
//! base images, and every failed pull is an infrastructure error that names the image, the
//! registry and the cause, within a minute.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testfleet_model::{EventKind, RunEvent, exit_code};

use crate::fixture;
use crate::loopback_registry::{
    PASSWORD, Registry, USER, engine_has, fixture_server_image, free_port, registry_or_skip,
    remove_image,
};
use crate::support::*;

/// Every failed pull must be said within this, however long `pull_timeout` is.
const WITHIN: Duration = Duration::from_secs(60);

/// The services fixture's three services (one per scope), run from `image`, with `extra` keys.
fn services_from(dir: &Path, image: &str, extra: &str) -> PathBuf {
    let mut text = String::new();
    for (scope, var, binary) in [
        ("agent", "AGENT_SVC", "agent_scope"),
        ("lease", "LEASE_SVC", "lease_scope"),
        ("test", "TEST_SVC", "test_scope"),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{scope}-svc\"\nimage = \"{image}\"\nports = [7000]\n\
             wait = {{ log = \"fixture-server ready\" }}\nstartup_timeout = 30\nscope = \"{scope}\"\n{extra}\
             exports = {{ {var} = \"{{host}}:{{port:7000}}\" }}\n\
             binaries = [\"fixture-services::{binary}\"]\n\n"
        ));
    }
    let path = dir.join(format!("registry-services{}.toml", extra.len()));
    std::fs::write(&path, text).unwrap();
    path
}

fn pulls(events: &[RunEvent]) -> Vec<(String, String, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ImagePulled {
                agent_id,
                image,
                error,
                ..
            } => Some((agent_id.clone(), image.clone(), error.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_image_only_a_registry_has_is_pulled_once_for_two_agents_on_one_engine() {
    let name = "an_image_only_a_registry_has_is_pulled_once_for_two_agents_on_one_engine";
    if !docker_or_skip(name) || !registry_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), &dir.path().join("storage"), None);
    let repo = format!("team/{}", unique("fixture-server"));
    let image = registry.push(&fixture_server_image(), &repo, "1");
    assert!(!engine_has(&image), "only the registry has {image}");
    let manifest = services_from(dir.path(), &image, "");

    let (_coordinator, url) = coordinator(dir.path());
    let (a_id, b_id) = (unique("pull-a"), unique("pull-b"));
    let mut a = agent(dir.path(), &url, &a_id, 2);
    let mut b = agent(dir.path(), &url, &b_id, 2);
    wait_for_agents(&url, 2);
    let run_with = |manifest: &Path| {
        let out = RunLine::on(&url)
            .json()
            .manifest(&fixture::services_manifest())
            .suite_manifest(manifest)
            .output();
        all_passed(&out)
    };
    let run = || run_with(&manifest);
    let first = run();
    assert_eq!(final_outcomes(&first).len(), 12);
    let agents_used = summary(&first).attempts_per_agent;
    assert_eq!(
        agents_used.len(),
        2,
        "both agents ran tests: {agents_used:?}"
    );

    // Both agents wanted the image at once (each pulls a run's images on its first lease): the
    // registry served one pull, and one agent reported it.
    assert_eq!(
        registry.pulls_of(&repo, "1"),
        1,
        "pulls the registry served"
    );
    let pulled = pulls(&first);
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    assert_eq!((&pulled[0].1, &pulled[0].2), (&image, &None));
    // Timed apart from the starts, in the summary and in `testfleet agents`.
    let s = summary(&first);
    assert_eq!(s.image_pulls.get(&image).map(|t| t.count), Some(1), "{s:?}");
    assert!(!s.service_starts.is_empty());
    let listed = testfleet()
        .args(["agents", "--json", "--coordinator", &url])
        .output()
        .unwrap();
    let agents: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total: u64 = agents.iter().map(|a| a["pulls"].as_u64().unwrap()).sum();
    assert_eq!(total, 1, "{agents:?}");
    assert!(
        agents.iter().all(|a| a["images"].as_u64().unwrap() >= 1),
        "each agent's engine holds the image now: {agents:?}"
    );

    // The image is there now: `missing` does not pull it again.
    let second = run();
    assert!(pulls(&second).is_empty());
    assert_eq!(registry.pulls_of(&repo, "1"), 1);
    // `always` pulls once per run, still once for both agents on this engine.
    let always = run_with(&services_from(dir.path(), &image, "pull = \"always\"\n"));
    assert_eq!(pulls(&always).len(), 1, "{:?}", pulls(&always));
    assert_eq!(registry.pulls_of(&repo, "1"), 2);

    a.stop();
    b.stop();
    for id in [&a_id, &b_id] {
        assert_eq!(leftovers(id), Vec::<String>::new(), "{id} left something");
    }
    remove_image(&image);
}

/// A local run of the basic fixture's `adds` tests with `manifest`'s services and `env`.
fn local_run(dir: &Path, manifest: &Path, env: &[(&str, &str)]) -> (Vec<RunEvent>, Duration) {
    let mut line = RunLine::local(1)
        .json()
        .filters(&["adds"])
        .suite_manifest(manifest)
        .data_dir(&dir.join("data"))
        .manifest(&fixture::manifest());
    for (k, v) in env {
        line = line.env(k, v);
    }
    let began = Instant::now();
    let out = line.output();
    let took = began.elapsed();
    assert_eq!(
        out.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&out)
    );
    (events(&out), took)
}

fn one_service(dir: &Path, image: &str, extra: &str) -> PathBuf {
    let path = dir.join("one-service.toml");
    std::fs::write(
        &path,
        format!(
            "[[service]]\nname = \"svc\"\nimage = \"{image}\"\nports = [7000]\n\
             wait = {{ log = \"fixture-server ready\" }}\n{extra}\
             exports = {{ SVC = \"{{host}}:{{port:7000}}\" }}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn failed_pulls_are_infrastructure_errors_that_name_the_image_the_registry_and_the_cause() {
    let name =
        "failed_pulls_are_infrastructure_errors_that_name_the_image_the_registry_and_the_cause";
    if !docker_or_skip(name) || !registry_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (open, closed) = Registry::pair(dir.path());
    let repo = format!("team/{}", unique("pull-errors"));
    let image = open.push(&fixture_server_image(), &repo, "1");
    let protected = format!("{}/{repo}:1", closed.host);

    // A registry that takes connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let no_config = dir.path().join("no-docker-config");
    std::fs::create_dir_all(&no_config).unwrap();
    let no_config = no_config.to_str().unwrap().to_owned();
    let wrong = format!(
        r#"{{"auths": {{"{}": {{"username": "{USER}", "password": "not-{PASSWORD}"}}}}}}"#,
        closed.host
    );
    let down = format!("127.0.0.1:{}", free_port());

    struct Case<'a> {
        what: &'a str,
        image: String,
        extra: &'a str,
        env: Vec<(&'a str, &'a str)>,
        says: String,
        pulled: bool,
    }
    let cases = [
        Case {
            what: "unknown tag",
            image: format!("{}/{repo}:no-such-tag", open.host),
            extra: "",
            env: vec![],
            says: "the registry has no image".into(),
            pulled: true,
        },
        Case {
            what: "registry down",
            image: format!("{down}/{repo}:1"),
            extra: "",
            env: vec![],
            says: "the registry cannot be reached".into(),
            pulled: true,
        },
        Case {
            what: "no credentials",
            image: protected.clone(),
            extra: "",
            env: vec![("DOCKER_CONFIG", &no_config)],
            says: format!("there are none for {}", closed.host),
            pulled: true,
        },
        Case {
            what: "wrong credentials",
            image: protected.clone(),
            extra: "",
            env: vec![("DOCKER_AUTH_CONFIG", &wrong)],
            says: format!(
                "refused the credentials for {} from DOCKER_AUTH_CONFIG",
                closed.host
            ),
            pulled: true,
        },
        Case {
            what: "pull timeout",
            image: format!("{silent_host}/{repo}:1"),
            extra: "pull_timeout = 2\n",
            env: vec![],
            says: "did not finish within 2 s (pull_timeout)".into(),
            pulled: true,
        },
        Case {
            what: "pull = never",
            image: image.clone(),
            extra: "pull = \"never\"\n",
            env: vec![],
            says: "its pull policy is `never`".into(),
            pulled: false,
        },
    ];
    for case in &cases {
        let case_dir = dir.path().join(case.what.replace(' ', "-"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let manifest = one_service(&case_dir, &case.image, case.extra);
        let (events, took) = local_run(&case_dir, &manifest, &case.env);
        assert!(took < WITHIN, "{}: the run took {took:?}", case.what);
        let messages = infra_messages(&events);
        assert_eq!(messages.len(), 2, "{}: {messages:?}", case.what);
        let named = if case.pulled {
            let registry = case.image.split('/').next().unwrap();
            format!(
                "cannot pull image `{}` from registry {registry}: ",
                case.image
            )
        } else {
            format!(
                "image `{}` is not on this agent's Docker engine",
                case.image
            )
        };
        for m in &messages {
            assert!(m.contains(&named), "{}: {m}", case.what);
            assert!(m.contains(&case.says), "{}: {m}", case.what);
        }
        let s = summary(&events);
        assert_eq!((s.failed, s.infra_errors), (0, 2), "{}", case.what);
        // One pull was tried, whatever the number of tests and attempts that needed it.
        let tried = pulls(&events);
        assert_eq!(
            tried.len(),
            usize::from(case.pulled),
            "{}: {tried:?}",
            case.what
        );
        assert!(tried.iter().all(|(_, _, e)| e.is_some()), "{}", case.what);
        assert!(
            s.image_pulls.is_empty(),
            "failed pulls are not timed as pulls"
        );
        assert!(!engine_has(&case.image), "{}", case.what);
    }
}

/// Two tests, each talking to one of the fixture servers the services run.
const SERVICE_TESTS: &str = r#"import os
import socket


def ping(var):
    host, port = os.environ[var].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"PING\n")
        return s.makefile().readline().strip()


def test_pulled():
    assert ping("PULLED") == "PONG"


def test_built():
    assert ping("BUILT") == "PONG"
"#;

#[test]
fn credentials_from_a_helper_pull_images_and_the_base_images_of_builds() {
    let name = "credentials_from_a_helper_pull_images_and_the_base_images_of_builds";
    if !docker_or_skip(name) || !registry_or_skip(name) || !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (open, closed) = Registry::pair(dir.path());
    let (server, base) = (unique("team/helper-server"), unique("team/helper-base"));
    open.push(&fixture_server_image(), &server, "1");
    open.push(&fixture_server_image(), &base, "1");
    let (server_image, base_image) = (
        format!("{}/{server}:1", closed.host),
        format!("{}/{base}:1", closed.host),
    );

    // A credential helper, as `docker login` with a credential store leaves it: a
    // `docker-credential-NAME` program on PATH, named in config.json for this registry.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-fleettest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n\
             [ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            closed.host
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(r#"{{"credHelpers": {{"{}": "fleettest"}}}}"#, closed.host),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // A pytest suite with two services from the protected registry: one its image, one built
    // from a Dockerfile whose FROM is there.
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(suite.join("tests")).unwrap();
    std::fs::create_dir_all(suite.join("built")).unwrap();
    std::fs::write(
        suite.join("built/Dockerfile"),
        format!("FROM {base_image}\nLABEL testfleet.test=built\n"),
    )
    .unwrap();
    let service = |name: &str, source: &str, var: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\n{source}\nports = [7000]\n\
             wait = {{ log = \"fixture-server ready\" }}\nstartup_timeout = 30\n\
             exports = {{ {var} = \"{{host}}:{{port:7000}}\" }}\n\n"
        )
    };
    std::fs::write(
        suite.join("testfleet.toml"),
        format!(
            "[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\n\n{}{}",
            service("pulled", &format!("image = \"{server_image}\""), "PULLED"),
            service("built", "build = \"built\"", "BUILT"),
        ),
    )
    .unwrap();
    std::fs::write(suite.join("tests/test_services.py"), SERVICE_TESTS).unwrap();

    let out = RunLine::local(1)
        .json()
        .in_dir(&suite)
        .data_dir(&dir.path().join("data"))
        .env("DOCKER_CONFIG", &config)
        .env("PATH", &path)
        .output();
    let events = all_passed(&out);
    assert_eq!(final_outcomes(&events).len(), 2);
    let mut pulled: Vec<String> = pulls(&events)
        .into_iter()
        .map(|(_, image, error)| {
            assert_eq!(error, None);
            image
        })
        .collect();
    pulled.sort();
    let mut wanted = vec![server_image.clone(), base_image.clone()];
    wanted.sort();
    assert_eq!(pulled, wanted);
    assert_eq!(closed.pulls_of(&server, "1"), 1);
    assert_eq!(closed.pulls_of(&base, "1"), 1);
    for image in [&server_image, &base_image] {
        remove_image(image);
    }
    // What the build made is the run's; removing it keeps the engine as the test found it.
    let built = std::process::Command::new("docker")
        .args(["images", "-q", "--filter", "label=testfleet.test=built"])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&built.stdout).lines() {
        docker(&["rmi", "-f", id]);
    }
}
