//! The fake's output files: real (small) MP4, JPG and PNG bytes at the URLs a completed job
//! reports, gone once the job is cleaned, with faults tests can queue (an error status, a
//! download cut half-way, one that stalls) and a size knob for large videos.

use super::{MockPictory, MockState};
use crate::sync::lock;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The files of a completed job: the name in its URL, its content type, and its bytes.
pub const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "video.mp4",
        "video/mp4",
        include_bytes!("../../assets/mock/video.mp4"),
    ),
    (
        "thumbnail.jpg",
        "image/jpeg",
        include_bytes!("../../assets/mock/thumbnail.jpg"),
    ),
    (
        "last-frame.png",
        "image/png",
        include_bytes!("../../assets/mock/last-frame.png"),
    ),
    (
        "preview.jpg",
        "image/jpeg",
        include_bytes!("../../assets/mock/preview.jpg"),
    ),
];

/// Bytes sent per chunk of a synthetic (sized) video.
const CHUNK: usize = 64 * 1024;

/// A misbehaviour for the next file download, queued by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFault {
    /// Answer this status with no file.
    Status(u16),
    /// Promise the whole file (`Content-Length`), send this many bytes, then cut the connection.
    CutAfter(usize),
    /// Send this many bytes, then nothing more until the client gives up.
    StallAfter(usize),
}

/// One download the fake served (or refused).
#[derive(Debug, Clone)]
pub struct FileRequest {
    pub job_id: String,
    pub file: String,
    pub status: u16,
}

impl MockPictory {
    /// Queues a fault for the next file download.
    pub fn force_next_file(&self, fault: FileFault) {
        lock(&self.inner.forced_files).push_back(fault);
    }

    /// Every file download asked for, in order.
    pub fn file_requests(&self) -> Vec<FileRequest> {
        lock(&self.inner.file_requests).clone()
    }

    /// The bytes the fake serves for a job's file (`video.mp4`...): the sample, or with
    /// `video_size` set, that many synthetic bytes for the video.
    pub fn file_bytes(&self, file: &str) -> Option<Vec<u8>> {
        let (_, _, sample) = FILES.iter().find(|(name, _, _)| *name == file)?;
        match (file, self.options().video_size) {
            ("video.mp4", Some(size)) => {
                Some(synthetic(0, usize::try_from(size).unwrap_or(usize::MAX)))
            }
            _ => Some(sample.to_vec()),
        }
    }

    /// The base of the fake's own file URLs, once it serves them.
    pub(super) fn files_base(&self) -> Option<String> {
        lock(&self.inner.files_base).clone()
    }

    /// `(job id, file)` when `url` is one of the fake's own output files.
    pub(super) fn own_file(&self, url: &str) -> Option<(String, String)> {
        let rest = match self.files_base() {
            Some(base) if url.starts_with(&base) => &url[base.len()..],
            _ => url.strip_prefix(&format!("https://{}", super::CDN_HOST))?,
        };
        let rest = rest
            .strip_prefix("/files/")
            .unwrap_or(rest.trim_start_matches('/'));
        let (id, file) = rest.split_once('/')?;
        Some((id.to_owned(), file.to_owned()))
    }
}

/// `GET /files/{id}/{file}`.
pub(super) async fn serve_file(
    State(mock): State<MockPictory>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let exists = {
        let mut jobs = lock(&mock.inner.jobs);
        jobs.get_mut(&id).is_some_and(|job| {
            mock.clean_if_due(job);
            job.state == MockState::Completed
        })
    };
    let found = FILES.iter().find(|(name, _, _)| *name == file);
    let fault = lock(&mock.inner.forced_files).pop_front();
    let status = match (&fault, exists && found.is_some()) {
        (Some(FileFault::Status(status)), _) => *status,
        (_, false) => 404,
        _ => 200,
    };
    lock(&mock.inner.file_requests).push(FileRequest {
        job_id: id.clone(),
        file: file.clone(),
        status,
    });
    let (Some((_, content_type, _)), 200) = (found, status) else {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
        return (status, "no such file").into_response();
    };
    let size = match mock.options().video_size {
        Some(size) if file == "video.mp4" => size,
        _ => mock.file_bytes(&file).map_or(0, |b| b.len() as u64),
    };
    let limit = match fault {
        Some(FileFault::CutAfter(n) | FileFault::StallAfter(n)) => n as u64,
        _ => size,
    };
    let stall = matches!(fault, Some(FileFault::StallAfter(_)));
    let cut = matches!(fault, Some(FileFault::CutAfter(_)));
    let sample = mock.file_bytes_if_small(&file);
    let chunks = futures::stream::unfold(0u64, move |sent| {
        let sample = sample.clone();
        async move {
            if sent == u64::MAX {
                return None;
            }
            if sent >= limit.min(size) {
                if stall {
                    std::future::pending::<()>().await;
                }
                if cut && limit < size {
                    // Long enough for the head and the bytes before the cut to be on the wire.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    return Some((Err(std::io::Error::other("cut by the fake")), u64::MAX));
                }
                return None;
            }
            let len = (size - sent).min(limit - sent).min(CHUNK as u64) as usize;
            let offset = sent as usize;
            let bytes = match &sample {
                Some(sample) => Bytes::copy_from_slice(&sample[offset..offset + len]),
                None => Bytes::from(synthetic(sent, len)),
            };
            Some((Ok(bytes), sent + len as u64))
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    response
}

impl MockPictory {
    /// The sample bytes of a file, or None for a synthetic video (made chunk by chunk).
    fn file_bytes_if_small(&self, file: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        match (file, self.options().video_size) {
            ("video.mp4", Some(_)) => None,
            _ => self.file_bytes(file).map(std::sync::Arc::new),
        }
    }
}

/// Deterministic bytes of a synthetic video at `offset`: a counter mixed by xorshift, cheap
/// enough that serving 500 MB is not what a benchmark measures.
pub fn synthetic(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut word = offset / 8;
    let skip = (offset % 8) as usize;
    while out.len() < len + skip {
        let mut x = word.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0005_DEEC_E66D;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
        word += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_bytes_are_the_same_whatever_the_chunking() {
        let whole = synthetic(0, 1000);
        let mut pieces = synthetic(0, 333);
        pieces.extend(synthetic(333, 500));
        pieces.extend(synthetic(833, 167));
        assert_eq!(whole, pieces);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
