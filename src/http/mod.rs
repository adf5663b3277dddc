//! The SOC surface over HTTP (axum): the JSON API, the live stream (SSE), Prometheus
//! metrics, and the dashboard page.
//!
//! Every route but `/healthz` and the page itself needs `Authorization: Bearer <token>`
//! (compared in constant time); the page asks for the token and keeps it in the
//! browser's session storage, so it never travels in a URL. The server binds
//! 127.0.0.1 unless configured otherwise.

pub mod board;
pub mod bounded;
pub mod tls;

use crate::correlate::exceptions::Exceptions;
use crate::model::{Disposition, Role};
use crate::sink::store::{self, Acked, AlertQuery, Shared, MAX_ACKS};
use crate::time::TimeFormat;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use board::Board;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token (or `token_file`).
    pub token: Option<String>,
    /// File holding the bearer token (first line).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Connections served at once (SSE clients included); the next gets a 503. Default
    /// 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of those, at most this many from one IP address (TLS handshakes included), so
    /// one host cannot take every slot. Default 64; behind a reverse proxy every client
    /// has the proxy's address: raise it to `max_connections` there.
    #[serde(default = "default_max_per_address")]
    pub max_connections_per_address: usize,
    /// Event streams (`/api/v1/stream`) open at once; the next gets a 503. Default 32.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// A connection that moves no byte either way for this long is closed (a
    /// half-sent request, an idle keep-alive, a dead peer). Default `"30s"`; the event
    /// stream sends a keep-alive every 15 s.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "crate::time::serde_duration::deserialize"
    )]
    pub idle_timeout: i64,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_connections() -> usize {
    256
}

fn default_max_streams() -> usize {
    32
}

fn default_max_per_address() -> usize {
    64
}

fn default_idle_timeout() -> i64 {
    30_000
}

/// What the HTTP handlers share with the live loop.
pub struct AppState {
    /// The durable store.
    pub store: Shared,
    /// The bearer token.
    pub token: String,
    /// Live events for SSE: `(event name, JSON data)`.
    pub events: broadcast::Sender<(&'static str, String)>,
    /// Latest device state.
    pub board: Mutex<Board>,
    /// Prometheus metrics.
    pub metrics: Mutex<prometheus_client::registry::Registry>,
    /// One permit per event stream open at once (`http.max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The exceptions in force, shared with the pipeline: teaching one applies live.
    pub exceptions: Exceptions,
    /// Turns true when the service stops: event streams end, so a graceful shutdown
    /// does not wait on a dashboard left open.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// Publishes a live event to every stream client (none listening is fine).
    pub fn publish(&self, event: &'static str, data: String) {
        let _ = self.events.send((event, data));
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}/ack", post(ack))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/exceptions", get(exceptions))
        .route("/api/v1/exceptions/{id}/revoke", post(revoke))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/webhooks/dead", get(dead_letters))
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        // The largest body the API takes is an acknowledgement: {"by": 128 characters}.
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .with_state(state)
}

/// Constant-time comparison of the presented bearer token.
fn authorised(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

async fn auth(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorised(req.headers(), &state.token) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response()
    }
}

/// The error is logged; the client learns nothing of the store (its path, its SQL).
fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (logged)\n",
    )
        .into_response()
}

/// Deepest page a listing serves (SQLite takes offsets as i64; nobody pages further).
const MAX_OFFSET: usize = 1_000_000_000;

fn offset(o: Option<usize>) -> Result<usize, String> {
    match o.unwrap_or(0) {
        o if o <= MAX_OFFSET => Ok(o),
        _ => Err(format!("offset: at most {MAX_OFFSET}")),
    }
}

/// Longest acknowledger name kept (characters).
const MAX_BY_CHARS: usize = 128;

/// Who acknowledges: 1 to 128 printable characters (`analyst` when not given).
fn acknowledger(by: Option<String>) -> Result<String, String> {
    let by = by.unwrap_or_else(|| "analyst".into());
    let n = by.chars().count();
    if n == 0 || n > MAX_BY_CHARS || by.chars().any(char::is_control) {
        return Err(format!("by: 1 to {MAX_BY_CHARS} printable characters"));
    }
    Ok(by)
}

/// Longest acknowledgement note kept (characters).
const MAX_NOTE_CHARS: usize = 500;

/// A note on an acknowledgement: at most 500 characters, no control characters but
/// line breaks.
fn ack_note(note: Option<String>) -> Result<String, String> {
    let note = note.unwrap_or_default();
    if note.chars().count() > MAX_NOTE_CHARS || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!(
            "note: at most {MAX_NOTE_CHARS} characters, no control characters but line breaks"
        ));
    }
    Ok(note)
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

#[derive(Debug, Deserialize)]
struct AlertParams {
    site: Option<String>,
    device: Option<String>,
    severity: Option<String>,
    role: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// The alert list's query string (without `?`), checked: every error is a 400's text.
/// Public for the fuzz target.
pub fn alert_query(raw: &str) -> Result<AlertQuery, String> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e| format!("query: {e}"))?;
    let Query(p) = Query::<AlertParams>::try_from_uri(&uri).map_err(|e| e.body_text())?;
    let time = |s: &Option<String>| {
        s.as_deref()
            .map(|t| TimeFormat::Auto.parse(t).map_err(|e| e.to_string()))
            .transpose()
    };
    let min_severity = match p.severity.as_deref() {
        None => None,
        Some(s) => Some(
            serde_json::from_value(json!(s))
                .map_err(|_| format!("severity {s:?}: use info, low, medium, high or critical"))?,
        ),
    };
    let role = match p.role.as_deref() {
        None => None,
        Some(r) => Some(
            Role::parse(r)
                .ok_or_else(|| format!("role {r:?}: use cause, consequence or recovery"))?,
        ),
    };
    Ok(AlertQuery {
        site: p.site,
        device: p.device,
        min_severity,
        role,
        since: time(&p.since)?,
        until: time(&p.until)?,
        limit: p.limit.unwrap_or(100),
        offset: offset(p.offset)?,
    })
}

async fn alerts(State(state): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    let q = match alert_query(raw.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let (limit, offset) = (q.limit.clamp(1, 1000), q.offset);
    match store::blocking(&state.store, move |s| s.alerts(&q)).await {
        Ok(list) => Json(json!({"alerts": list, "limit": limit, "offset": offset})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn incidents(State(state): State<Arc<AppState>>, Query(p): Query<Page>) -> Response {
    let offset = match offset(p.offset) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let limit = p.limit.unwrap_or(100);
    match store::blocking(&state.store, move |s| s.incidents(limit, offset)).await {
        Ok(list) => Json(json!({"incidents": list})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    by: Option<String>,
    note: Option<String>,
    disposition: Option<Disposition>,
}

async fn ack(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // No body is an anonymous acknowledgement; a body that is not the JSON object is a 400
    // (an `Option<Json>` took it as no body and acknowledged). Past the body limit: 413.
    let body = if body.is_empty() {
        AckBody::default()
    } else {
        match serde_json::from_slice::<AckBody>(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(format!("body: {e}")),
        }
    };
    let (by, note) = match (acknowledger(body.by), ack_note(body.note)) {
        (Ok(by), Ok(note)) => (by, note),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let disposition = body.disposition.unwrap_or_default();
    let result = {
        let (id, by) = (id.clone(), by.clone());
        store::blocking(&state.store, move |s| s.ack(&id, &by, &note, disposition)).await
    };
    let result = result.map(|(acked, taught)| {
        if let Some(x) = taught {
            // Stored with the acknowledgement; from now on the pipeline applies it too.
            if !state.exceptions.add(x.clone()) {
                tracing::warn!(id = %x.id, "exception stored but not applied: the set is full");
            }
            state.publish("exception", json!(x).to_string());
        }
        acked
    });
    match result {
        Ok(Acked::CannotTeach(why)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")).into_response()
        }
        Ok(Acked::Now) => {
            state.publish("ack", json!({"id": id, "by": by}).to_string());
            Json(json!({"id": id, "acked_by": by})).into_response()
        }
        // Kept in the history; the first acknowledgement stays the alert's (who and when
        // are evidence).
        Ok(Acked::Added { at, by: first }) => {
            state.publish(
                "ack",
                json!({"id": id, "by": first, "added_by": by}).to_string(),
            );
            Json(json!({"id": id, "acked_by": first, "acked_at": crate::time::format_ts(at), "added_by": by}))
                .into_response()
        }
        Ok(Acked::Full) => (
            StatusCode::CONFLICT,
            format!("this alert has {MAX_ACKS} acknowledgements: no more are kept\n"),
        )
            .into_response(),
        Ok(Acked::Missing) => (StatusCode::NOT_FOUND, "no such alert\n").into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExceptionParams {
    /// `toml`: the exceptions in force as a file `replay --exceptions` reads.
    format: Option<String>,
    /// Also list revoked ones (JSON only).
    revoked: Option<bool>,
}

async fn exceptions(
    State(state): State<Arc<AppState>>,
    Query(p): Query<ExceptionParams>,
) -> Response {
    match p.format.as_deref() {
        None | Some("json") => {
            let revoked = p.revoked.unwrap_or(false);
            match store::blocking(&state.store, move |s| s.exceptions(revoked)).await {
                Ok(list) => Json(json!({"exceptions": list})).into_response(),
                Err(e) => internal(e),
            }
        }
        Some("toml") => match store::blocking(&state.store, |s| s.active_exceptions()).await {
            Ok(list) => (
                [(header::CONTENT_TYPE, "application/toml")],
                Exceptions::to_toml(&list),
            )
                .into_response(),
            Err(e) => internal(e),
        },
        Some(f) => bad_request(format!("format {f:?}: use json or toml")),
    }
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let by = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<RevokeBody>(&body) {
            Ok(b) => b.by,
            Err(e) => return bad_request(format!("body: {e}")),
        }
    };
    let by = match acknowledger(by) {
        Ok(by) => by,
        Err(e) => return bad_request(e),
    };
    let result = {
        let (id, by) = (id.clone(), by.clone());
        store::blocking(&state.store, move |s| s.revoke_exception(&id, &by)).await
    };
    match result {
        Ok(true) => {
            state.exceptions.revoke(&id);
            state.publish("exception_revoked", json!({"id": id, "by": by}).to_string());
            Json(json!({"id": id, "revoked_by": by})).into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, "no such exception in force\n").into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    by: Option<String>,
}

async fn devices(State(state): State<Arc<AppState>>) -> Response {
    let board = state.board.lock().unwrap_or_else(PoisonError::into_inner);
    Json(json!({"devices": board.snapshot()})).into_response()
}

async fn dead_letters(State(state): State<Arc<AppState>>) -> Response {
    match store::blocking(&state.store, |s| s.dead_letters(100)).await {
        Ok(list) => Json(json!({"dead": list})).into_response(),
        Err(e) => internal(e),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    let registry = state.metrics.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return internal(e);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Server-sent events: `alert`, `incident`, `devices`, `ack`. A client too slow to keep
/// up is told how many events it missed (`lagged`) and should reload the lists.
/// At most `max_streams` at once (each holds a connection and a subscriber): the next is
/// answered 503.
async fn stream(State(state): State<Arc<AppState>>) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many event streams\n",
        )
            .into_response();
    };
    let rx = state.events.subscribe();
    let mut closing = state.closing.clone();
    if *closing.borrow_and_update() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    // The permit lives as long as the stream.
    let events = futures_util::stream::unfold(
        (rx, closing, permit),
        |(mut rx, mut closing, permit)| async move {
            let got = tokio::select! {
                got = rx.recv() => got,
                _ = closing.changed() => return None,
            };
            let ev = match got {
                Ok((name, data)) => Event::default().event(name).data(data),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event::default().event("lagged").data(n.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok::<_, Infallible>(ev), (rx, closing, permit)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgers_are_short_and_printable() {
        assert_eq!(acknowledger(None).unwrap(), "analyst");
        assert_eq!(acknowledger(Some("Åsa (SOC)".into())).unwrap(), "Åsa (SOC)");
        assert!(acknowledger(Some(String::new())).is_err());
        assert!(acknowledger(Some("a\nb".into())).is_err());
        assert!(acknowledger(Some("x".repeat(MAX_BY_CHARS))).is_ok());
        assert!(acknowledger(Some("x".repeat(1_500_000))).is_err());
    }

    #[test]
    fn notes_are_bounded_and_printable() {
        assert_eq!(ack_note(None).unwrap(), "");
        assert!(ack_note(Some("called the grid operator\nticket 42".into())).is_ok());
        assert!(ack_note(Some("x".repeat(MAX_NOTE_CHARS + 1))).is_err());
        assert!(ack_note(Some("bell\u{7}".into())).is_err());
    }

    #[test]
    fn alert_queries_are_checked_whole() {
        let q = alert_query("site=dc-1&severity=high&since=2026-01-01T00:00:00Z&limit=5").unwrap();
        assert_eq!(
            (q.site.as_deref(), q.min_severity, q.limit),
            (Some("dc-1"), Some(crate::model::Severity::High), 5)
        );
        for bad in [
            "severity=extreme",
            "since=yesterday",
            "offset=-1",
            "limit=x",
            "offset=9223372036854775808",
            "role=boss",
            "role=cause&role=recovery",
        ] {
            assert!(alert_query(bad).is_err(), "{bad}");
        }
        assert_eq!(alert_query("role=cause").unwrap().role, Some(Role::Cause));
    }

    proptest::proptest! {
        /// Any query string: a checked query or an error, never a panic; a checked one
        /// runs on a store without an error (what would be a 500).
        #[test]
        fn any_alert_query_is_a_400_or_runs(raw in "[a-z=&%0-9:.TZ+-]{0,80}|\\PC{0,40}") {
            if let Ok(q) = alert_query(&raw) {
                proptest::prop_assert!(q.offset <= MAX_OFFSET);
                let store = crate::sink::store::Store::in_memory().unwrap();
                proptest::prop_assert!(store.alerts(&q).is_ok());
            }
        }
    }

    #[test]
    fn offsets_beyond_any_page_are_refused_not_a_500() {
        assert_eq!(offset(None).ok(), Some(0));
        assert_eq!(offset(Some(MAX_OFFSET)).ok(), Some(MAX_OFFSET));
        assert!(offset(Some(9_223_372_036_854_775_808)).is_err());
    }
}
