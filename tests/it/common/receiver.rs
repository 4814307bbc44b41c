//! A webhook receiver on 127.0.0.1 that records every delivery and answers as told.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the receiver answers the n-th request (0-based).
pub type Behaviour = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// 302 to another path on this receiver.
    Redirect(&'static str),
    /// Hold the connection this long, then 200.
    Hang(Duration),
}

#[derive(Clone)]
struct RecvState {
    got: Arc<Mutex<Vec<Delivery>>>,
    behaviour: Behaviour,
}

pub struct Receiver {
    pub url: String,
    pub base: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub async fn start(behaviour: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, behaviour)
    }

    pub fn start_on(
        listener: tokio::net::TcpListener,
        behaviour: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let state = RecvState {
            got: Arc::default(),
            behaviour: Arc::new(behaviour),
        };
        let got = state.got.clone();
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/elsewhere", post(receive))
            .with_state(state);
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("{base}/hook"),
            base,
            got,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let start = std::time::Instant::now();
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                start.elapsed() < timeout,
                "got {} deliveries, wanted {n}",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(s): State<RecvState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut got = s.got.lock().unwrap();
        got.push(Delivery {
            path: uri.path().to_string(),
            headers,
            body,
        });
        got.len() - 1
    };
    match (s.behaviour)(n) {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}
