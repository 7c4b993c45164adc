//! A loopback fake of Azure Resource Manager's agent-pool API and of the Entra / IMDS token
//! endpoints. It is the ONLY fake in fleetscore's test suite: everything else runs against real
//! servers (kube-apiserver, kwok, Azurite), but ARM has no emulator. It follows the documented
//! contract: GET/PUT `.../managedClusters/{c}/agentPools/{p}?api-version=…`, PUT answering 200
//! with `Azure-AsyncOperation` (or 202 with `Location`), the operation resource's `status`
//! InProgress → Succeeded/Failed/Canceled, `Retry-After`, 401/403/404/409/429 error bodies
//! `{"error": {"code", "message"}}`. Behaviour is scripted per test.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Authorization header, if any.
    pub authorization: Option<String>,
    /// The `Metadata` header, if any (IMDS).
    pub metadata: Option<String>,
    /// The `If-Match` header, if any.
    pub if_match: Option<String>,
    /// Body as text.
    pub body: String,
}

/// A scripted answer that replaces the normal handling of the next matching request.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// An ARM error with this status, code and optional Retry-After seconds.
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
}

/// How the next PUT's long-running operation behaves.
#[derive(Debug, Clone)]
pub enum Operation {
    /// 200 + Azure-AsyncOperation; `in_progress` polls answer InProgress, then `end`.
    Async { in_progress: u32, end: &'static str },
    /// 202 + Location; `in_progress` polls answer 202, then 200.
    Location { in_progress: u32 },
}

#[derive(Debug)]
struct Inner {
    pool: Value,
    seen: Vec<Seen>,
    put_script: VecDeque<Scripted>,
    get_script: VecDeque<Scripted>,
    operation: Operation,
    op_polls_left: u32,
    pending_count: Option<u64>,
    tokens_issued: u32,
    valid_token: Option<String>,
    reject_all_tokens: bool,
    base: String,
}

/// The fake server's handle.
#[derive(Clone)]
pub struct FakeArm {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// Path of the test pool.
pub const POOL_PATH: &str = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.ContainerService/managedClusters/aks-1/agentPools/scoring";

impl FakeArm {
    /// Starts the fake on a free loopback port with a pool of `count` nodes.
    pub async fn start(count: u32, autoscaling: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            pool: json!({
                "id": POOL_PATH,
                "name": "scoring",
                "type": "Microsoft.ContainerService/managedClusters/agentPools",
                "etag": "etag-1",
                "properties": {
                    "count": count,
                    "vmSize": "Standard_D4s_v5",
                    "mode": "User",
                    "osType": "Linux",
                    "enableAutoScaling": autoscaling,
                    "provisioningState": "Succeeded",
                    "powerState": {"code": "Running"},
                    "nodeImageVersion": "AKSUbuntu-2204gen2containerd-202511.01.0",
                    "orchestratorVersion": "1.33.0",
                    "currentOrchestratorVersion": "1.33.0",
                    "nodeLabels": {"fleetscore.dev/pool": "scoring"}
                }
            }),
            seen: vec![],
            put_script: VecDeque::new(),
            get_script: VecDeque::new(),
            operation: Operation::Async {
                in_progress: 0,
                end: "Succeeded",
            },
            op_polls_left: 0,
            pending_count: None,
            tokens_issued: 0,
            valid_token: None,
            reject_all_tokens: false,
            base: base.clone(),
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        // Ends with the test's runtime.
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, base }
    }

    /// Scripts the next PUT answers.
    pub fn script_put(&self, s: Scripted) {
        self.inner.lock().unwrap().put_script.push_back(s);
    }

    /// Scripts the next GET (pool) answers.
    pub fn script_get(&self, s: Scripted) {
        self.inner.lock().unwrap().get_script.push_back(s);
    }

    /// Sets how the next PUT's operation behaves.
    pub fn operation(&self, op: Operation) {
        self.inner.lock().unwrap().operation = op;
    }

    /// Makes every token issued so far invalid (the next ARM call answers 401).
    pub fn revoke_tokens(&self) {
        self.inner.lock().unwrap().valid_token = Some("none-yet".into());
    }

    /// Rejects every token, even fresh ones.
    pub fn reject_all_tokens(&self) {
        self.inner.lock().unwrap().reject_all_tokens = true;
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Requests to paths starting with `prefix`, with `method`.
    pub fn seen_to(&self, method: &str, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path.starts_with(prefix))
            .collect()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u32 {
        self.inner.lock().unwrap().tokens_issued
    }

    /// The pool's count now.
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap().pool["properties"]["count"]
            .as_u64()
            .unwrap()
    }
}

fn arm_error(status: u16, code: &str, retry_after: Option<u64>) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(s) = retry_after {
        headers.insert("retry-after", s.to_string().parse().unwrap());
    }
    let body = json!({"error": {"code": code, "message": format!("fake ARM says {code}")}});
    (
        StatusCode::from_u16(status).unwrap(),
        headers,
        axum::Json(body),
    )
        .into_response()
}

fn header(h: &HeaderMap, k: &str) -> Option<String> {
    h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn handle(
    State(state): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    s.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: header(&headers, "authorization"),
        metadata: header(&headers, "metadata"),
        if_match: header(&headers, "if-match"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });

    // Token endpoints: Entra (workload identity) and IMDS (managed identity).
    if path.ends_with("/oauth2/v2.0/token") && method == Method::POST {
        s.tokens_issued += 1;
        let tok = format!("tok-{}", s.tokens_issued);
        s.valid_token = Some(tok.clone());
        return axum::Json(
            json!({"token_type": "Bearer", "expires_in": 3599, "access_token": tok}),
        )
        .into_response();
    }
    if path == "/metadata/identity/oauth2/token" {
        if header(&headers, "metadata").as_deref() != Some("true") {
            return (StatusCode::BAD_REQUEST, "missing Metadata: true").into_response();
        }
        s.tokens_issued += 1;
        let tok = format!("tok-{}", s.tokens_issued);
        s.valid_token = Some(tok.clone());
        return axum::Json(json!({"access_token": tok, "expires_in": "3599",
            "expires_on": "4102444800", "resource": "https://management.azure.com/",
            "token_type": "Bearer"}))
        .into_response();
    }

    // Everything else is ARM: bearer token required.
    let auth = header(&headers, "authorization");
    let ok_token = match (&s.valid_token, &auth) {
        (Some(v), Some(a)) => !s.reject_all_tokens && a == &format!("Bearer {v}"),
        _ => false,
    };
    if !ok_token {
        return arm_error(401, "InvalidAuthenticationToken", None);
    }

    if path.starts_with("/operations/") {
        if s.op_polls_left > 0 {
            s.op_polls_left -= 1;
            let mut h = HeaderMap::new();
            h.insert("retry-after", "0".parse().unwrap());
            return (h, axum::Json(json!({"status": "InProgress"}))).into_response();
        }
        let end = match s.operation {
            Operation::Async { end, .. } => end,
            Operation::Location { .. } => "Succeeded",
        };
        if let Some(c) = s.pending_count.take().filter(|_| end == "Succeeded") {
            s.pool["properties"]["count"] = json!(c);
        }
        s.pool["properties"]["provisioningState"] = json!(end);
        let mut body = json!({"status": end});
        if end != "Succeeded" {
            body["error"] = json!({"code": "ScaleFailed", "message": "fake ARM: quota exceeded"});
        }
        return axum::Json(body).into_response();
    }
    if path.starts_with("/locations/") {
        if s.op_polls_left > 0 {
            s.op_polls_left -= 1;
            let mut h = HeaderMap::new();
            h.insert("retry-after", "0".parse().unwrap());
            h.insert("location", format!("{}{}", s.base, path).parse().unwrap());
            return (StatusCode::ACCEPTED, h).into_response();
        }
        if let Some(c) = s.pending_count.take() {
            s.pool["properties"]["count"] = json!(c);
        }
        s.pool["properties"]["provisioningState"] = json!("Succeeded");
        return axum::Json(s.pool.clone()).into_response();
    }

    if !path.starts_with("/subscriptions/") {
        return arm_error(404, "NotFound", None);
    }
    if !query.split('&').any(|kv| kv == "api-version=2025-08-01") {
        return arm_error(400, "InvalidApiVersionParameter", None);
    }
    if path != POOL_PATH {
        return arm_error(404, "NotFound", None);
    }
    match method {
        Method::GET => {
            if let Some(Scripted::Error {
                status,
                code,
                retry_after,
            }) = s.get_script.pop_front()
            {
                return arm_error(status, code, retry_after);
            }
            axum::Json(s.pool.clone()).into_response()
        }
        Method::PUT => {
            if let Some(Scripted::Error {
                status,
                code,
                retry_after,
            }) = s.put_script.pop_front()
            {
                return arm_error(status, code, retry_after);
            }
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return arm_error(400, "InvalidRequestContent", None);
            };
            let Some(count) = req["properties"]["count"].as_u64() else {
                return arm_error(400, "InvalidRequestContent", None);
            };
            s.pending_count = Some(count);
            s.pool["properties"]["provisioningState"] = json!("Scaling");
            let mut answer = s.pool.clone();
            answer["properties"]["count"] = json!(count);
            match s.operation.clone() {
                Operation::Async { in_progress, .. } => {
                    s.op_polls_left = in_progress;
                    let mut h = HeaderMap::new();
                    h.insert(
                        "azure-asyncoperation",
                        format!("{}/operations/op-1?api-version=2025-08-01", s.base)
                            .parse()
                            .unwrap(),
                    );
                    h.insert("retry-after", "0".parse().unwrap());
                    (StatusCode::OK, h, axum::Json(answer)).into_response()
                }
                Operation::Location { in_progress } => {
                    s.op_polls_left = in_progress;
                    let mut h = HeaderMap::new();
                    h.insert(
                        "location",
                        format!("{}/locations/op-1", s.base).parse().unwrap(),
                    );
                    h.insert("retry-after", "0".parse().unwrap());
                    (StatusCode::ACCEPTED, h).into_response()
                }
            }
        }
        _ => arm_error(405, "MethodNotAllowed", None),
    }
}
