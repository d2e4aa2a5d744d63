//! Who may talk to a coordinator, and over what: role tokens checked by one tower layer in front of
//! every gRPC service ([`AuthLayer`]), and the TLS/mTLS settings the coordinator, agents and the
//! CLI share ([`ServerTls`], [`ClientSecurity`]). See `docs/security.md` for the threat model.

mod client;
mod layer;
mod role;
mod tls;
mod tokens;

pub use client::{AuthChannel, Bearer, ClientSecurity, explain_connect_error};
pub use layer::{AuthLayer, Caller};
pub use role::Role;
pub use tls::{ClientTls, ServerTls};
pub use tokens::{Secret, TokenSet, generate_token};

/// Everything that can go wrong setting security up; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} `{path}`: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}, line {line}: {reason}")]
    TokenLine {
        origin: String,
        line: usize,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
}
