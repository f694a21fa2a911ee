//! The HTTP listener (`--http-listen`, default 127.0.0.1:7690): `/metrics`
//! in the Prometheus/OpenMetrics text format, the status page at `/`, its
//! data at `/status.json`, its style and script. Read-only: only GET and
//! HEAD are answered. On a non-loopback address every request must carry
//! the token (`Authorization: Bearer …` or `?token=…`). An address already
//! taken (several krgd on one host) is logged and the node runs without
//! HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{page, status};
use crate::node::Node;

/// At most this many HTTP connections at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A connection is closed after this long, whatever it does (the page polls
/// with short requests; a stalled client cannot hold a slot).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Bind the HTTP listener, or log why not and return None.
pub async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, "serving /metrics and the status page");
            Some(l)
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve HTTP (/metrics, status page) on this address; running without it");
            None
        }
    }
}

/// Serve HTTP requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(answer(&node, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'",
        ),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

/// The `token` parameter of a query string.
fn query_token(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Whether `given` equals `expected`, in time independent of where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    diff == 0
}

fn authorised(node: &Node, req: &Request<Incoming>) -> bool {
    let Some(expected) = &node.ctx.config.http_token else {
        return true;
    };
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or_else(|| req.uri().query().and_then(query_token));
    given.is_some_and(|g| same_token(g, expected))
}

async fn answer(node: &Node, req: Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n");
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if !authorised(node, &req) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "a token is required (--http-token-file)\n",
        );
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    // The token, carried into the page's own links and requests.
    let query = match &node.ctx.config.http_token {
        Some(t) => format!("?token={t}"),
        None => String::new(),
    };
    match req.uri().path() {
        "/metrics" => {
            let figures = status::figures(node).await;
            match node.ctx.metrics.encode(&figures) {
                Ok(body) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        "/" => {
            let s = status::gather(node).await;
            reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&s, &query),
            )
        }
        "/status.json" => {
            let s = status::gather(node).await;
            match serde_json::to_vec(&s) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        "/status.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", page::JS),
        "/status.css" => reply(StatusCode::OK, "text/css; charset=utf-8", page::CSS),
        _ => text(StatusCode::NOT_FOUND, "not found: try / or /metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_token("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same_token("0123456789abcde", "0123456789abcdef"));
        assert!(!same_token("", "0123456789abcdef"));
        assert_eq!(query_token("a=1&token=xyz"), Some("xyz"));
        assert_eq!(query_token("tokens=xyz"), None);
    }
}
