//! The CLI's errors: each kind of failure the user can meet, with the exit code it ends with.

use testfleet_model::exit_code;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    NotACargoProject(String),
    #[error("{0}")]
    UnknownPackage(String),
    #[error("building the tests failed{}", .0.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    BuildFailed(Option<String>),
    #[error("{0}")]
    TestListFailed(String),
    #[error("{0}")]
    NoTests(String),
    #[error("{0}")]
    BadManifest(String),
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the coordinator rejected the request: {0}")]
    Rejected(String),
    #[error("{0}")]
    Bundle(String),
    #[error("{0}")]
    Server(String),
    /// A setting (a token file, a certificate, a limit) that cannot be used.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::NotACargoProject(_) => exit_code::NOT_A_CARGO_PROJECT,
            CliError::UnknownPackage(_) => exit_code::UNKNOWN_PACKAGE,
            CliError::BuildFailed(_) => exit_code::BUILD_FAILED,
            CliError::TestListFailed(_) => exit_code::TEST_LIST_FAILED,
            CliError::NoTests(_) => exit_code::NO_TESTS,
            CliError::BadManifest(_) => exit_code::BAD_MANIFEST,
            CliError::Unreachable { .. } => exit_code::COORDINATOR_UNREACHABLE,
            CliError::Rejected(_) => exit_code::REQUEST_REJECTED,
            CliError::Bundle(_) => exit_code::BUNDLE_ERROR,
            CliError::Server(_) => exit_code::SERVER_ERROR,
            CliError::Config(_) => exit_code::USAGE,
            CliError::Internal(_) => exit_code::INTERNAL_ERROR,
        }
    }

    /// Maps a failed gRPC call: transport failures mean the coordinator is unreachable.
    pub fn from_status(url: &str, s: tonic::Status) -> Self {
        // A failure below gRPC (a TLS alert after the handshake, a reset) carries its cause.
        if let Some(cause) = std::error::Error::source(&s) {
            return CliError::Unreachable {
                url: url.to_owned(),
                reason: format!(
                    "{}: {}",
                    s.message(),
                    testfleet_security::explain_connect_error(cause)
                ),
            };
        }
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => CliError::Unreachable {
                url: url.to_owned(),
                reason: s.message().to_owned(),
            },
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                CliError::Rejected(format!("access refused: {}", s.message()))
            }
            // tonic's own message-size check does not name the setting behind it.
            _ if s.message().contains("message length too large") => CliError::Rejected(format!(
                "{} (the coordinator's limit --max-message-bytes)",
                s.message()
            )),
            _ => CliError::Rejected(s.message().to_owned()),
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;
