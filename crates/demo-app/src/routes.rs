//! What each request gets: the endpoints, the state they share and the bodies they send.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use super::args::DemoAppArgs;
use super::faults::Faults;

/// The most lines one `/api/stream` response may have, so one request cannot stream forever.
const MAX_STREAM_CHUNKS: u64 = 10_000;

/// The longest pause between two streamed lines, for the same reason.
const MAX_STREAM_DELAY_MS: u64 = 60_000;

/// The header every response carries, so a client can tell which version answered it.
static DEMO_VERSION_HEADER: HeaderName = HeaderName::from_static("x-demo-version");

/// The body type of every response: boxed, because responses mix fixed, streamed and echoed bodies.
type ResponseBody = BoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

/// What every request handler shares.
pub(super) struct State {
    version: String,
    version_header: HeaderValue,
    /// When the misbehaviours begin: the serve start plus `--after-secs`.
    pub(super) misbehave_at: Instant,
    /// Which requests fail, are slow or get how much jitter, by their index.
    faults: Faults,
    latency: Duration,
    fail_health: bool,
    /// Every request answered, for the `request` field of `/api` responses, and the index of
    /// the background error and jitter draws.
    requests: AtomicU64,
    /// `/api` requests seen while misbehaving: the index of the error and slowness draws.
    /// A counter rather than a shared generator, so connections never wait on each other.
    faulty_api_requests: AtomicU64,
    /// `/api` answers by outcome, for `/metrics`.
    api_ok: AtomicU64,
    api_failed: AtomicU64,
}

impl State {
    pub(super) fn new(args: &DemoAppArgs) -> Self {
        Self {
            version: args.app_version.clone(),
            version_header: HeaderValue::from_str(&args.app_version)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            misbehave_at: Instant::now() + Duration::from_secs(args.after_secs),
            faults: Faults::new(args),
            latency: Duration::from_millis(args.latency_ms),
            fail_health: args.fail_health,
            requests: AtomicU64::new(0),
            faulty_api_requests: AtomicU64::new(0),
            api_ok: AtomicU64::new(0),
            api_failed: AtomicU64::new(0),
        }
    }

    fn misbehaving(&self) -> bool {
        Instant::now() >= self.misbehave_at
    }
}

/// Routes one request.
pub(super) async fn handle(state: &State, req: Request<Incoming>) -> Response<ResponseBody> {
    let request_number = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();

    if path == "/health" && (method == Method::GET || method == Method::HEAD) {
        let (status, word) = if state.fail_health && state.misbehaving() {
            (StatusCode::SERVICE_UNAVAILABLE, "failing")
        } else {
            (StatusCode::OK, "ok")
        };
        return json_response(
            state,
            status,
            &[
                ("status", word.into()),
                ("version", state.version.as_str().into()),
            ],
        );
    }

    if path == "/metrics" && method == Method::GET {
        // Prometheus text format: the app's own request counts, labelled with its
        // version, as an instrumented app would expose them.
        let ok = state.api_ok.load(Ordering::Relaxed);
        let failed = state.api_failed.load(Ordering::Relaxed);
        let v = &state.version;
        let text = format!(
            "# HELP demo_requests_total API requests answered, by status code.\n\
             # TYPE demo_requests_total counter\n\
             demo_requests_total{{version=\"{v}\",code=\"200\"}} {ok}\n\
             demo_requests_total{{version=\"{v}\",code=\"500\"}} {failed}\n"
        );
        return response(
            state,
            StatusCode::OK,
            "text/plain; version=0.0.4",
            full_body(text),
        );
    }

    if path != "/api" && !path.starts_with("/api/") {
        return response(
            state,
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            full_body(format!("not found: {path}\n")),
        );
    }

    // The decisions are taken on arrival, each request taking its index from a counter, so
    // concurrent requests neither wait on each other nor disturb the pattern by index.
    let (injected, slow) = if state.misbehaving() {
        let n = state.faulty_api_requests.fetch_add(1, Ordering::Relaxed);
        (state.faults.should_fail(n), state.faults.is_slow(n))
    } else {
        (false, false)
    };
    let fail = injected || state.faults.background_fails(request_number);
    let jitter = state.faults.jitter(request_number);
    if !jitter.is_zero() {
        tokio::time::sleep(jitter).await;
    }
    if slow && !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if fail {
        state.api_failed.fetch_add(1, Ordering::Relaxed);
        return json_response(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            &[
                ("error", "injected failure".into()),
                ("version", state.version.as_str().into()),
            ],
        );
    }

    if path == "/api/stream" && method == Method::GET {
        return stream_response(state, req.uri().query().unwrap_or(""));
    }
    if path == "/api/echo" && method == Method::POST {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        let body = req.into_body().map_err(Into::into).boxed();
        let mut resp = response(state, StatusCode::OK, "application/octet-stream", body);
        resp.headers_mut().insert(CONTENT_TYPE, content_type);
        return resp;
    }
    state.api_ok.fetch_add(1, Ordering::Relaxed);
    json_response(
        state,
        StatusCode::OK,
        &[
            ("version", state.version.as_str().into()),
            ("path", path.into()),
            ("method", method.as_str().into()),
            ("request", request_number.into()),
        ],
    )
}

/// Answers `GET /api/stream`, or 400 when its query does not parse.
fn stream_response(state: &State, query: &str) -> Response<ResponseBody> {
    let mut chunks = 5;
    let mut delay_ms = 10;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match key {
            "chunks" => &mut chunks,
            "delay_ms" => &mut delay_ms,
            _ => continue,
        };
        match value.parse::<u64>() {
            Ok(number) => *target = number,
            Err(_) => {
                return response(
                    state,
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    full_body(format!("invalid {key}: {value:?}\n")),
                );
            }
        }
    }
    let body = LineStream {
        next: 0,
        total: chunks.min(MAX_STREAM_CHUNKS),
        delay: Duration::from_millis(delay_ms.min(MAX_STREAM_DELAY_MS)),
        sleep: None,
    };
    response(
        state,
        StatusCode::OK,
        "text/plain; charset=utf-8",
        body.map_err(|never| match never {}).boxed(),
    )
}

/// A body of `total` lines `chunk i\n`, each after `delay` except the first.
///
/// It sleeps inside `poll_frame` rather than in a spawned task, so a client that hangs up
/// stops the stream with nothing left running.
struct LineStream {
    next: u64,
    total: u64,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for LineStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.total {
            return Poll::Ready(None);
        }
        if this.next > 0 && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            std::task::ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let line = format!("chunk {}\n", this.next);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.total
    }
}

fn full_body(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Answers with a JSON object whose keys keep the given order.
///
/// `serde_json::Value` sorts keys, and the documented shapes (`{"version":...,"path":...}`)
/// read better in the order they are written, so the object is assembled by hand while
/// serde_json still does the escaping.
fn json_response(
    state: &State,
    status: StatusCode,
    fields: &[(&str, serde_json::Value)],
) -> Response<ResponseBody> {
    /// The fields as a JSON object in the order given (serde_json's own map sorts).
    struct Ordered<'a>(&'a [(&'a str, serde_json::Value)]);
    impl serde::Serialize for Ordered<'_> {
        fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap as _;
            let mut map = ser.serialize_map(Some(self.0.len()))?;
            for (key, value) in self.0 {
                map.serialize_entry(key, value)?;
            }
            map.end()
        }
    }
    let text = serde_json::to_string(&Ordered(fields)).expect("JSON values serialize");
    response(state, status, "application/json", full_body(text))
}

/// Builds a response with the headers every response must carry.
fn response(
    state: &State,
    status: StatusCode,
    content_type: &'static str,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(DEMO_VERSION_HEADER.clone(), state.version_header.clone());
    resp
}
