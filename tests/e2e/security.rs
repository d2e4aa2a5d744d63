//! Who may talk to a coordinator, and over what: tokens with roles, TLS and mutual TLS, with real
//! processes on real sockets and certificates made fresh for each test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use testfleet_model::exit_code;

use crate::fixture;
use crate::support::*;

pub(crate) const CLIENT: &str = "client-token-for-the-e2e-tests-0001";
pub(crate) const READER: &str = "reader-token-for-the-e2e-tests-0002";
pub(crate) const AGENT: &str = "agent-token-for-the-e2e-tests-00003";

/// A tokens file with one token per role, readable by its owner only.
pub(crate) fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# role name token\nclient ci {CLIENT}\nreader dash {READER}\nagent fleet {AGENT}\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_token(mut cmd: Command, token: Option<&str>) -> Command {
    if let Some(t) = token {
        cmd.env("TESTFLEET_TOKEN", t);
    }
    cmd
}

fn agents(url: &str, token: Option<&str>, extra: &[&str]) -> Output {
    let mut cmd = with_token(testfleet(), token);
    cmd.args(["agents", "--json", "--coordinator", url])
        .args(extra);
    run_output(&mut cmd)
}

pub(crate) fn assert_refused(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

fn agent_with(dir: &Path, url: &str, id: &str, token: &str, extra: &[&str]) -> Proc {
    let mut cmd = with_token(agent_command(dir, url, id, 2), Some(token));
    cmd.arg("--no-docker").args(extra);
    Proc::spawn(cmd, dir.join(format!("{id}.log")))
}

/// A coordinator started with `args` that must refuse to start.
pub(crate) fn coordinator_refusing(dir: &Path, args: &[&str]) -> Output {
    run_output(
        testfleet()
            .args(["coordinator", "--data-dir"])
            .arg(dir.join("refused"))
            .args(args),
    )
}

/// The fixture suite run on `url` with the client token; its outcomes must be the known ones.
fn assert_fixture_runs(url: &str, extra: &[&str]) {
    let events = fixture_run_on(with_token(testfleet(), Some(CLIENT)), url, extra);
    assert_eq!(final_outcomes(&events), fixture::expected(true));
}

#[test]
fn tokens_decide_who_may_do_what_and_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let (_coord, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "coordinator.log",
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let url = format!("http://{addr}");

    assert_refused(
        &agents(&url, None, &[]),
        exit_code::REQUEST_REJECTED,
        "access refused: this coordinator requires a token",
    );
    assert_refused(
        &agents(&url, Some("not-a-token-of-this-coordinator"), &[]),
        exit_code::REQUEST_REJECTED,
        "not one this coordinator accepts",
    );
    assert_refused(
        &agents(&url, Some(AGENT), &[]),
        exit_code::REQUEST_REJECTED,
        "token `fleet` has role agent; ListAgents needs role reader",
    );
    // A reader reads, but changes nothing.
    let read = agents(&url, Some(READER), &[]);
    assert_eq!(read.status.code(), Some(0), "{}", stderr(&read));
    let mut quarantine = with_token(testfleet(), Some(READER));
    quarantine.args(["quarantine", "add", "some_test", "--coordinator", &url]);
    assert_refused(
        &run_output(&mut quarantine),
        exit_code::REQUEST_REJECTED,
        "token `dash` has role reader; Quarantine needs role client",
    );
    // A client token cannot open an agent session: the agent stops, saying why.
    let mut impostor = agent_with(dir.path(), &url, "impostor", CLIENT, &[]);
    let status = impostor.wait_guarded();
    assert_eq!(status.code(), Some(exit_code::SERVER_ERROR));
    assert!(
        impostor
            .log()
            .contains("token `ci` has role client; Session needs role agent"),
        "{}",
        impostor.log()
    );
    // An agent token cannot submit: the CLI is refused at the bundle upload, before any run.
    let submit = RunLine::on(&url)
        .token(AGENT)
        .manifest(&fixture::manifest());
    assert_refused(
        &submit.output(),
        exit_code::REQUEST_REJECTED,
        "token `fleet` has role agent; HasBundle needs role client",
    );
    // The right tokens: an agent connects and a run goes through.
    let _agent = agent_with(dir.path(), &url, "agent-1", AGENT, &[]);
    wait_for_agents_with(&url, 1, Some(READER), &[]);
    assert_fixture_runs(&url, &[]);

    let coordinator_log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(
        coordinator_log.contains("refused a request"),
        "{coordinator_log}"
    );
    for secret in [CLIENT, READER, AGENT] {
        assert!(!coordinator_log.contains(secret), "a token was logged");
        assert!(!impostor.log().contains(secret), "a token was logged");
    }
}

#[test]
fn a_coordinator_on_a_network_address_needs_tokens_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator_refusing(dir.path(), &["--listen", "0.0.0.0:0"]);
    assert_refused(
        &out,
        exit_code::USAGE,
        "refusing to serve 0.0.0.0:0 without tokens",
    );
    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "client ci short\n").unwrap();
    let out = coordinator_refusing(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tokens-file",
            bad.to_str().unwrap(),
        ],
    );
    assert_refused(
        &out,
        exit_code::USAGE,
        "line 1: the token is 5 characters long",
    );
}

/// A CA, and leaf certificates it signs, written as PEM files.
struct Pki {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
            issuer,
            name: name.to_owned(),
        };
        std::fs::write(pki.ca(), pki.issuer.pem()).unwrap();
        pki
    }

    fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `localhost` (server) or a client; `expired` dates it in the past.
    fn leaf(&self, file: &str, server: bool, expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// The coordinator with TLS (and mTLS when `client_ca` is given) and the tokens.
fn tls_coordinator(
    dir: &Path,
    log: &str,
    cert: &(String, String),
    client_ca: Option<&Path>,
) -> (Proc, String) {
    let tokens = tokens_file(dir);
    let mut args = vec![
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--tls-cert",
        &cert.0,
        "--tls-key",
        &cert.1,
    ];
    if let Some(ca) = client_ca {
        args.extend(["--tls-client-ca", ca.to_str().unwrap()]);
    }
    let (p, addr) = coordinator_with(dir, "127.0.0.1:0", log, &args);
    (p, format!("https://{addr}"))
}

#[test]
fn tls_and_mutual_tls_runs_go_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "fleet");
    let server = pki.leaf("server", true, false);
    let ca = pki.ca().display().to_string();
    let trust = ["--tls-ca", &ca, "--tls-domain", "localhost"];

    // TLS: the coordinator proves who it is; tokens say who the callers are.
    let (_coord, url) = tls_coordinator(dir.path(), "tls.log", &server, None);
    let _agent = agent_with(dir.path(), &url, "tls-agent", AGENT, &trust);
    wait_for_agents_with(&url, 1, Some(CLIENT), &trust);
    assert_fixture_runs(&url, &trust);

    // Mutual TLS: callers prove who they are with certificates too.
    let mtls_dir = dir.path().join("mtls");
    std::fs::create_dir_all(&mtls_dir).unwrap();
    let (_coord2, url2) = tls_coordinator(&mtls_dir, "mtls.log", &server, Some(&pki.ca()));
    let agent_cert = pki.leaf("agent-client", false, false);
    let cli_cert = pki.leaf("cli-client", false, false);
    let agent_id = [
        "--tls-cert",
        agent_cert.0.as_str(),
        "--tls-key",
        agent_cert.1.as_str(),
    ];
    let cli_id = [
        "--tls-cert",
        cli_cert.0.as_str(),
        "--tls-key",
        cli_cert.1.as_str(),
    ];
    let _agent2 = agent_with(
        &mtls_dir,
        &url2,
        "mtls-agent",
        AGENT,
        &[trust.as_slice(), agent_id.as_slice()].concat(),
    );
    wait_for_agents_with(
        &url2,
        1,
        Some(CLIENT),
        &[trust.as_slice(), cli_id.as_slice()].concat(),
    );
    assert_fixture_runs(&url2, &[trust.as_slice(), cli_id.as_slice()].concat());
}

#[test]
fn tls_mistakes_fail_with_messages_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "fleet");
    let other = Pki::new(dir.path(), "other");
    let server = pki.leaf("server", true, false);
    let expired = pki.leaf("expired", true, true);
    let ca = pki.ca().display().to_string();
    let other_ca = other.ca().display().to_string();

    let (_coord, url) = tls_coordinator(dir.path(), "mtls.log", &server, Some(&pki.ca()));
    let good = pki.leaf("good-client", false, false);
    let stranger = other.leaf("stranger", false, false);
    let base = ["--tls-domain", "localhost"];
    let unreachable = exit_code::COORDINATOR_UNREACHABLE;

    // The coordinator's certificate is from a CA this client does not trust.
    let out = agents(
        &url,
        Some(CLIENT),
        &[
            &base[..],
            &[
                "--tls-ca",
                &other_ca,
                "--tls-cert",
                &good.0,
                "--tls-key",
                &good.1,
            ],
        ]
        .concat(),
    );
    assert_refused(&out, unreachable, "not signed by a CA this client trusts");
    // No client certificate for a coordinator that requires one.
    let out = agents(
        &url,
        Some(CLIENT),
        &[&base[..], &["--tls-ca", &ca]].concat(),
    );
    assert_refused(&out, unreachable, "--tls-cert and --tls-key");
    // A client certificate from another CA.
    let out = agents(
        &url,
        Some(CLIENT),
        &[
            &base[..],
            &[
                "--tls-ca",
                &ca,
                "--tls-cert",
                &stranger.0,
                "--tls-key",
                &stranger.1,
            ],
        ]
        .concat(),
    );
    assert_refused(&out, unreachable, "--tls-client-ca");
    // Plain HTTP to a TLS coordinator, and TLS options with a plain URL.
    let plain = url.replace("https://", "http://");
    let out = agents(&plain, Some(CLIENT), &[]);
    assert_eq!(out.status.code(), Some(unreachable), "{}", stderr(&out));
    let out = agents(&plain, Some(CLIENT), &["--tls-ca", &ca]);
    assert_refused(&out, exit_code::USAGE, "the URL is not https://");
    // After all that, a correct client is served.
    let ok = agents(
        &url,
        Some(CLIENT),
        &[
            &base[..],
            &["--tls-ca", &ca, "--tls-cert", &good.0, "--tls-key", &good.1],
        ]
        .concat(),
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    // An expired coordinator certificate.
    let expired_dir = dir.path().join("expired");
    std::fs::create_dir_all(&expired_dir).unwrap();
    let (_old, old_url) = tls_coordinator(&expired_dir, "expired.log", &expired, None);
    let out = agents(
        &old_url,
        Some(CLIENT),
        &[&base[..], &["--tls-ca", &ca]].concat(),
    );
    assert_refused(&out, unreachable, "a certificate has expired");
    // A certificate file that is not there is named at start.
    let out = coordinator_refusing(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            &server.1,
        ],
    );
    assert_refused(
        &out,
        exit_code::SERVER_ERROR,
        "cannot read TLS certificate `/nonexistent/cert.pem`",
    );
}
