//! The AWS Lambda adapter: the one router behind `lambda_http`, for API
//! Gateway v2 HTTP APIs (payload format 2.0).
//!
//! [`LambdaService`] is what the `bootstrap` binary hands to
//! [`lambda_http::run`]. Per event it does two things before the router
//! sees the request, neither of which is routing:
//!
//! - at most every `refresh_every`, it looks at the store for model changes
//!   ([`Host::refresh_if_due`]): a frozen Lambda instance runs no background
//!   task, so the look happens on the request that finds it due (one
//!   conditional read per model, a 304 when nothing changed);
//! - when API Gateway authorised the caller with IAM (the repository
//!   routes), it marks the request with [`GatewayAuthorized`] so that the
//!   repository API does not ask for a bearer token as well.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use tower::ServiceExt as _;

use crate::Host;
use crate::http::GatewayAuthorized;

/// The Lambda request handler over a host's router.
#[derive(Clone)]
pub struct LambdaService {
    /// Shared, not cloned, per event: cloning a `Host` copies its
    /// configuration.
    host: Arc<Host>,
    router: axum::Router,
    refresh_every: Option<Duration>,
}

impl LambdaService {
    /// A handler over `host`, looking for model changes in its store at
    /// most every `refresh_every` (never when `None`).
    pub fn new(host: Host, refresh_every: Option<Duration>) -> Self {
        let router = host.router();
        Self {
            host: Arc::new(host),
            router,
            refresh_every,
        }
    }
}

impl tower::Service<lambda_http::Request> for LambdaService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: lambda_http::Request) -> Self::Future {
        let host = Arc::clone(&self.host);
        let router = self.router.clone();
        let refresh_every = self.refresh_every;
        Box::pin(async move {
            if let Some(every) = refresh_every {
                // Off the executor: the look blocks on the store.
                let _ = crate::http::run_blocking(move || host.refresh_if_due(every)).await;
            }
            if let Some(caller) = iam_caller(&request) {
                request
                    .extensions_mut()
                    .insert(GatewayAuthorized { caller });
            }
            router.oneshot(request.map(axum::body::Body::new)).await
        })
    }
}

/// The caller API Gateway authorised with IAM for this route, if it did.
fn iam_caller(request: &lambda_http::Request) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
        return None;
    };
    let iam = context.authorizer.as_ref()?.iam.as_ref()?;
    Some(
        iam.user_arn
            .clone()
            .or_else(|| iam.caller_id.clone())
            .unwrap_or_else(|| "an IAM principal".to_owned()),
    )
}
