//! Tokens on the HTTP side: the same token set as gRPC, presented as `Authorization: Bearer
//! TOKEN` (Prometheus, scripts) or as the password of HTTP Basic authentication (a browser asks
//! for it; the user name is not checked). Reading needs a reader's or a client's token.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use testfleet_security::Role;

use super::Shared;

pub(crate) async fn require_reader(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &state.tokens else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| presented_token(v.as_bytes()));
    match presented.as_deref().and_then(|t| tokens.authenticate(t)) {
        Some(entry) if entry.role.grants(Role::Reader) => next.run(req).await,
        Some(entry) => {
            tracing::warn!(token = %entry.name, role = %entry.role, path = req.uri().path(), "refused an HTTP request");
            (
                StatusCode::FORBIDDEN,
                format!(
                    "token `{}` has role {}; the dashboard and /metrics need a reader or client token\n",
                    entry.name, entry.role
                ),
            )
                .into_response()
        }
        None => {
            let why = if presented.is_some() {
                "the token is not one this coordinator accepts"
            } else {
                "this coordinator requires a token"
            };
            tracing::warn!(path = req.uri().path(), why, "refused an HTTP request");
            let mut response = (
                StatusCode::UNAUTHORIZED,
                format!(
                    "{why}: send `Authorization: Bearer TOKEN`, or give a reader token as the password when the browser asks\n"
                ),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"testfleet\", charset=\"UTF-8\""),
            );
            response
        }
    }
}

/// The token in an authorization header: a bearer token, or a Basic password.
fn presented_token(header: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = header.split_at(header.iter().position(|b| *b == b' ')?);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::presented_token;

    #[test]
    fn bearer_tokens_and_basic_passwords_are_read_and_anything_else_is_not() {
        assert_eq!(presented_token(b"Bearer abc").as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            presented_token(b"bearer  abc ").as_deref(),
            Some(&b"abc"[..])
        );
        // "anyone:s3cr:et" in base64: the password may hold colons, the user name may not.
        assert_eq!(
            presented_token(b"Basic YW55b25lOnMzY3I6ZXQ=").as_deref(),
            Some(&b"s3cr:et"[..])
        );
        assert_eq!(presented_token(b"Basic !!!"), None);
        assert_eq!(presented_token(b"Digest x"), None);
        assert_eq!(presented_token(b"Bearer"), None);
    }
}
