//! The one place requests are let in: a tower layer in front of every gRPC service that reads the
//! bearer token, finds its role, and checks it against what the method needs. Handlers never see an
//! unauthenticated request; they find the [`Caller`] in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Role, TokenSet};

/// Who made a request, as the token set names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Which role a gRPC method (its path, `/package.Service/Method`) needs.
pub type Policy = fn(&str) -> Role;

/// Checks tokens when `tokens` is set; lets everything through when it is not (authentication off,
/// which the coordinator allows only where nobody else can connect).
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<TokenSet>>,
    policy: Policy,
}

impl AuthLayer {
    pub fn new(tokens: Option<TokenSet>, policy: Policy) -> Self {
        AuthLayer {
            tokens: tokens.map(Arc::new),
            policy,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<TokenSet>>,
    policy: Policy,
}

/// The method's name alone, for messages: `SubmitRun` of `/testfleet.v1.Coordinator/SubmitRun`.
fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl<S> Auth<S> {
    fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let needed = (self.policy)(path);
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(format!(
                "this coordinator requires a token: {} needs {} token (set TESTFLEET_TOKEN or --token-file)",
                method(path),
                needed.with_article()
            )));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer <token>`")
            })?;
        let Some(entry) = tokens.authenticate(presented) else {
            return Err(Status::unauthenticated(
                "the token is not one this coordinator accepts",
            ));
        };
        if !entry.role.grants(needed) {
            return Err(Status::permission_denied(format!(
                "token `{}` has role {}; {} needs role {needed}",
                entry.name,
                entry.role,
                method(path)
            )));
        }
        Ok(Some(Caller {
            name: entry.name.clone(),
            role: entry.role,
        }))
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        match self.check(req.uri().path(), req.headers()) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                // The token is never logged; who was refused, from where and why is.
                let peer = req
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|i| i.remote_addr());
                tracing::warn!(
                    method = method(req.uri().path()),
                    peer = ?peer,
                    code = ?status.code(),
                    reason = status.message(),
                    "refused a request"
                );
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(path: &str) -> Role {
        match path {
            "/s/Agent" => Role::Agent,
            "/s/Read" => Role::Reader,
            _ => Role::Client,
        }
    }

    fn auth() -> Auth<()> {
        AuthLayer::new(
            Some(
                TokenSet::parse(
                    "client ci client-token-0123456789\nreader dash reader-token-0123456789\nagent a agent-token-0123456789",
                    "t",
                )
                .unwrap(),
            ),
            policy,
        )
        .layer(())
    }

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(http::header::AUTHORIZATION, t.parse().unwrap());
        }
        h
    }

    #[test]
    fn each_role_reaches_what_it_may_and_is_refused_the_rest_with_the_right_code() {
        let a = auth();
        let code = |path: &str, token: Option<&str>| match a.check(path, &headers(token)) {
            Result::Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        use tonic::Code::{Ok, PermissionDenied, Unauthenticated};
        let client = Some("Bearer client-token-0123456789");
        let reader = Some("Bearer reader-token-0123456789");
        let agent = Some("Bearer agent-token-0123456789");
        assert_eq!(code("/s/Submit", None), Unauthenticated);
        assert_eq!(
            code("/s/Submit", Some("Bearer wrong-token-0123456789")),
            Unauthenticated
        );
        assert_eq!(
            code("/s/Submit", Some("client-token-0123456789")),
            Unauthenticated
        );
        assert_eq!(code("/s/Submit", client), Ok);
        assert_eq!(code("/s/Read", client), Ok);
        assert_eq!(code("/s/Agent", client), PermissionDenied);
        assert_eq!(code("/s/Read", reader), Ok);
        assert_eq!(code("/s/Submit", reader), PermissionDenied);
        assert_eq!(code("/s/Agent", agent), Ok);
        assert_eq!(code("/s/Submit", agent), PermissionDenied);
        assert_eq!(code("/s/Read", agent), PermissionDenied);
    }

    #[test]
    fn refusals_name_the_method_and_roles_but_never_the_token() {
        let a = auth();
        let err = a
            .check("/s/Submit", &headers(Some("Bearer agent-token-0123456789")))
            .unwrap_err();
        assert_eq!(
            err.message(),
            "token `a` has role agent; Submit needs role client"
        );
        let err = a.check("/s/Agent", &headers(None)).unwrap_err();
        assert!(
            err.message().contains("Agent needs an agent token"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn without_tokens_everything_passes() {
        let open = AuthLayer::new(None, policy).layer(());
        assert_eq!(open.check("/s/Submit", &headers(None)).unwrap(), None);
    }
}
