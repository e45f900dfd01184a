//! Recording routes: the index and the decrypted audio, each tenant seeing only its own.
//!
//! | route | answer |
//! |---|---|
//! | `GET /recordings[?tenant=T][&limit=N]` | index rows ([`RecordingRow`]), newest first |
//! | `GET /recordings/{id}` | one row |
//! | `GET /recordings/{id}/audio` | the decrypted stereo WAV (`audio/wav`) of a complete recording |
//!
//! Every route needs `Authorization: Bearer <token>` (see [`super::auth`]): the node's token
//! sees every tenant, a tenant's token (its `api_token` or one made through the API) only its
//! own. A recording of another tenant is a 404, exactly as one that does not exist, so ids do
//! not leak across tenants.
//!
//! Reads use a read-only SQLite connection per request (on the blocking pool), never the
//! writer's. Audio is decrypted on the blocking pool chunk by chunk, each chunk authenticated
//! before it is sent.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::problem::respond;
use super::{route, ApiState, Caller, Params, Problem};
use crate::media::recording::{self, KeyRing, RecordingError, RecordingReader};
use crate::store::recordings::{RecordingIndex, RecordingRow, STATE_COMPLETE};

/// Counter, label `result` (`ok`, `not_found`, `conflict`, `error`): requests for a
/// recording's audio (those refused for their token are counted in
/// [`super::AUTH_REFUSED_TOTAL`]).
pub const RECORDING_DOWNLOADS_TOTAL: &str = "switchyard_api_recording_downloads_total";

/// `limit` of `GET /recordings` when none is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` of `GET /recordings`.
pub const MAX_LIMIT: usize = 1000;

/// Decrypted chunks buffered between the decrypting thread and the response.
const CHANNEL_CHUNKS: usize = 2;

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        RECORDING_DOWNLOADS_TOTAL,
        "Requests for a recording's decrypted audio, by result"
    );
}

/// What the recording handlers need: where the index is and the keys.
#[derive(Debug)]
pub struct Recordings {
    db: PathBuf,
    keys: Arc<KeyRing>,
}

impl Recordings {
    /// Serve the index in the SQLite file `db` (the store writer's database) and decrypt
    /// with `keys`.
    pub fn new(db: impl Into<PathBuf>, keys: Arc<KeyRing>) -> Recordings {
        Recordings {
            db: db.into(),
            keys,
        }
    }
}

/// Whether `caller` may see `row`: the node every row, a tenant its own (a row without a
/// tenant is the node's only).
fn sees(caller: &Caller, row: &RecordingRow) -> bool {
    match caller.tenant() {
        None => true,
        Some(own) => row.tenant.as_deref() == Some(own),
    }
}

/// Register the recording routes (each with its `path` label).
pub(super) fn routes(router: Router<ApiState>) -> Router<ApiState> {
    let router = route(router, "/recordings", get(list_recordings));
    let router = route(router, "/recordings/{id}", get(get_recording));
    route(router, "/recordings/{id}/audio", get(get_audio))
}

async fn list_recordings(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Response {
    respond(list_inner(&state, &caller, &uri).await)
}

async fn list_inner(
    state: &ApiState,
    caller: &Caller,
    uri: &Uri,
) -> Result<Vec<RecordingRow>, Problem> {
    let recs = recordings(state)?;
    let (tenant, limit) = parse_query(uri)?;
    // Another tenant's listing is a 404, as if it did not exist.
    let tenant: Option<String> = caller.listing(tenant.as_deref())?.map(str::to_string);
    let db = recs.db.clone();
    blocking(move || {
        RecordingIndex::open(&db)
            .and_then(|index| index.list(tenant.as_deref(), limit))
            .map_err(|e| internal(format!("recording index: {e}")))
    })
    .await
}

async fn get_recording(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    respond(async { find(recordings(&state)?, &caller, id).await }.await)
}

async fn get_audio(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = audio_inner(&state, &caller, id).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(p) => match p.status {
            404 => "not_found",
            409 => "conflict",
            _ => "error",
        },
    };
    metrics::counter!(RECORDING_DOWNLOADS_TOTAL, "result" => label).increment(1);
    match result {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn audio_inner(state: &ApiState, caller: &Caller, id: String) -> Result<Response, Problem> {
    let recs = recordings(state)?;
    let row = find(recs, caller, id).await?;
    if row.state != STATE_COMPLETE {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("recording {:?} is {}, not complete", row.id, row.state),
        ));
    }
    let path = row
        .path
        .clone()
        .map(PathBuf::from)
        .ok_or_else(|| internal(format!("recording {:?} has no file", row.id)))?;
    let keys = Arc::clone(&recs.keys);
    let id = row.id.clone();
    let reader = blocking(move || {
        recording::open(&path, &keys).map_err(|e| {
            tracing::error!(recording = %id, error = %e, "recording does not open");
            internal(format!("recording {id:?} cannot be read"))
        })
    })
    .await?;
    let body = audio_body(row.id.clone(), reader).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.wav\"", row.id),
            ),
        ],
        body,
    )
        .into_response())
}

/// Decrypt `reader` on the blocking pool, chunk by chunk, into a channel of authenticated
/// chunks; a chunk that fails authentication ends the channel with the error.
fn decrypt_chunks(
    id: String,
    reader: RecordingReader,
) -> mpsc::Receiver<Result<Vec<u8>, RecordingError>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        for chunk in reader {
            let failed = chunk.is_err();
            if let Err(e) = &chunk {
                tracing::error!(recording = %id, error = %e, "recording fails verification");
            }
            // The receiver is gone when the client hung up: stop decrypting.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The response body of a recording's audio, streamed as the chunks are decrypted.
///
/// The first chunk is awaited before the response starts, so a recording whose start does not
/// verify is a clean 500; a later chunk that fails ends the body with an error, which aborts
/// the connection short of the announced `Content-Length`, so the client cannot take a cut
/// recording for a whole one.
async fn audio_body(id: String, reader: RecordingReader) -> Result<Body, Problem> {
    let remaining = reader.plaintext_len();
    let mut rx = decrypt_chunks(id.clone(), reader);
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(_)) | None => {
            return Err(internal(format!("recording {id:?} fails verification")))
        }
    };
    Ok(Body::new(AudioBody {
        first: Some(first),
        rx,
        remaining,
    }))
}

/// A recording's decrypted chunks as an HTTP body of known length.
struct AudioBody {
    first: Option<Vec<u8>>,
    rx: mpsc::Receiver<Result<Vec<u8>, RecordingError>>,
    /// Bytes still to send: the exact size hint gives the response its `Content-Length`.
    remaining: u64,
}

impl AudioBody {
    fn frame(&mut self, chunk: Vec<u8>) -> Frame<Bytes> {
        self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
        Frame::data(Bytes::from(chunk))
    }
}

impl http_body::Body for AudioBody {
    type Data = Bytes;
    type Error = RecordingError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecordingError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(self.frame(first))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(self.frame(chunk)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(
                RecordingError::Corrupt("decryption stopped early".into()),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The row of `id` if `caller` may see it; otherwise, as when it does not exist, a 404.
async fn find(recs: &Recordings, caller: &Caller, id: String) -> Result<RecordingRow, Problem> {
    let db = recs.db.clone();
    let lookup = id.clone();
    let row = blocking(move || {
        RecordingIndex::open(&db)
            .and_then(|index| index.get(&lookup))
            .map_err(|e| internal(format!("recording index: {e}")))
    })
    .await?;
    row.filter(|r| sees(caller, r))
        .ok_or_else(|| Problem::not_found(format!("no recording {id:?}")))
}

/// The recordings state, or a 404 when the node keeps none.
fn recordings(state: &ApiState) -> Result<&Recordings, Problem> {
    state
        .recordings
        .as_deref()
        .ok_or_else(|| Problem::not_found("this node keeps no recordings"))
}

fn internal(detail: String) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
}

/// `tenant` and `limit` of the query; other or repeated names are a 400.
fn parse_query(uri: &Uri) -> Result<(Option<String>, usize), Problem> {
    let params = Params::parse(uri, &["tenant", "limit"])?;
    let limit = params.number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
    Ok((params.get("tenant").map(str::to_string), limit))
}

/// Run blocking SQLite or file work off the runtime's worker threads.
async fn blocking<T, F>(f: F) -> Result<T, Problem>
where
    F: FnOnce() -> Result<T, Problem> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let uri = |q: &str| q.parse::<Uri>().unwrap();
        assert_eq!(
            parse_query(&uri("/recordings")).unwrap(),
            (None, DEFAULT_LIMIT)
        );
        assert_eq!(
            parse_query(&uri("/recordings?tenant=t1&limit=5")).unwrap(),
            (Some("t1".to_string()), 5)
        );
        assert_eq!(
            parse_query(&uri("/recordings?limit=999999")).unwrap().1,
            MAX_LIMIT
        );
        for bad in ["?limit=x", "?tenant=a&tenant=b", "?other=1"] {
            let err = parse_query(&uri(&format!("/recordings{bad}"))).unwrap_err();
            assert_eq!(err.status, 400, "{bad}");
        }
    }
}
