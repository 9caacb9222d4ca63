//! One file, from Pictory's URL into the archive: streamed, never held whole in memory, its
//! size and SHA-256 computed on the way. The object is only complete once the upload is
//! finished, so a download cut half-way leaves nothing that looks kept.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Bytes buffered before a part goes to the store: S3's smallest part size, so the memory a
/// copy holds stays near `PART_SIZE * (PARTS_IN_FLIGHT + 1)` whatever the file's size.
const PART_SIZE: usize = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// A file copied and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

/// Why a copy did not happen, and so whether to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// Worth another attempt: the network, a 5xx, a 429, a cut download, the store.
    Transient(String),
    /// 404 or 410: the file is no longer there.
    Gone(String),
    /// Larger than `archive.max_size`.
    TooLarge(String),
    /// Any other refusal (403, 400...): trying again would get the same answer.
    Refused(String),
}

/// Downloads into the store.
pub struct Copier {
    http: reqwest::Client,
    store: Arc<dyn ObjectStore>,
    max_size: u64,
}

impl Copier {
    /// `read_timeout` bounds each wait for bytes (not the whole download, which may be long).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        max_size: u64,
        read_timeout: Duration,
    ) -> anyhow::Result<Copier> {
        let http = reqwest::Client::builder()
            .connect_timeout(read_timeout)
            .read_timeout(read_timeout)
            .build()?;
        Ok(Copier {
            http,
            store,
            max_size,
        })
    }

    /// Copies `url` to `<job_ref>/<name>.<ext>`. `received` counts the bytes downloaded, also
    /// when it fails (for the metrics).
    pub async fn copy(
        &self,
        job_ref: &str,
        name: &str,
        url: &str,
        received: &mut u64,
    ) -> Result<Copied, CopyError> {
        let mut response =
            self.http.get(url).send().await.map_err(|err| {
                CopyError::Transient(format!("download failed: {}", describe(&err)))
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(CopyError::Gone(format!("{url} answered {status}")));
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            return Err(CopyError::Transient(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(CopyError::Refused(format!("{url} answered {status}")));
        }
        let expected = response.content_length();
        if let Some(length) = expected.filter(|l| *l > self.max_size) {
            return Err(CopyError::TooLarge(too_large(length, self.max_size)));
        }
        let content_type = content_type(&response, url);
        // Each part is escaped on its own: a `/` in an id cannot make another folder.
        let location = Path::from_iter([job_ref, &file_name(name, url, &content_type)]);
        let upload =
            self.store.put_multipart(&location).await.map_err(|err| {
                CopyError::Transient(format!("the archive refused the file: {err}"))
            })?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hash = Sha256::new();
        let streamed = loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break Ok(()),
                Err(err) => {
                    break Err(CopyError::Transient(format!(
                        "download cut after {received} bytes: {}",
                        describe(&err)
                    )))
                }
            };
            *received += chunk.len() as u64;
            if *received > self.max_size {
                break Err(CopyError::TooLarge(too_large(*received, self.max_size)));
            }
            hash.update(&chunk);
            if let Err(err) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Err(CopyError::Transient(format!(
                    "the archive refused the file: {err}"
                )));
            }
            writer.put(chunk);
        };
        let streamed = streamed.and_then(|()| match expected {
            Some(length) if length != *received => Err(CopyError::Transient(format!(
                "download cut after {received} of {length} bytes"
            ))),
            _ => Ok(()),
        });
        if let Err(err) = streamed {
            if let Err(abort) = writer.abort().await {
                tracing::debug!(error = %abort, %location, "could not abort an archive upload");
            }
            return Err(err);
        }
        writer
            .finish()
            .await
            .map_err(|err| CopyError::Transient(format!("the archive refused the file: {err}")))?;
        Ok(Copied {
            key: location.to_string(),
            size: *received,
            sha256: hex(&hash.finalize()),
            content_type,
        })
    }
}

fn too_large(size: u64, max: u64) -> String {
    format!("{size} bytes is more than archive.max_size ({max} bytes)")
}

/// The error and its causes, on one line (reqwest's own message omits the cause).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The response's content type, or one guessed from the URL's extension when the server sent
/// none or only `application/octet-stream`.
fn content_type(response: &reqwest::Response, url: &str) -> String {
    let sent = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty() && v != "application/octet-stream");
    sent.unwrap_or_else(|| {
        let guessed = match extension(url).as_deref() {
            Some("mp4") => "video/mp4",
            Some("webm") => "video/webm",
            Some("mov") => "video/quicktime",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            Some("gif") => "image/gif",
            _ => "application/octet-stream",
        };
        guessed.to_owned()
    })
}

/// The lower-case extension of the URL's last path segment, when it looks like one.
fn extension(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next()?;
    let (_, ext) = last.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 5 && ext.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| ext.to_ascii_lowercase())
}

/// `<name>.<ext>`, the extension from the URL or else the content type.
fn file_name(name: &str, url: &str, content_type: &str) -> String {
    let ext = extension(url).unwrap_or_else(|| {
        match content_type {
            "video/mp4" => "mp4",
            "video/webm" => "webm",
            "image/jpeg" => "jpg",
            "image/png" => "png",
            "image/webp" => "webp",
            _ => "bin",
        }
        .to_owned()
    });
    format!("{name}.{ext}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_extension_of_the_url_or_the_content_type() {
        assert_eq!(
            file_name("video", "https://cdn/x/video.MP4?sig=1", "video/mp4"),
            "video.mp4"
        );
        assert_eq!(
            file_name("thumbnail", "https://cdn/x/thumb", "image/jpeg"),
            "thumbnail.jpg"
        );
        assert_eq!(
            file_name("preview", "https://cdn/a.b/preview", "text/weird"),
            "preview.bin"
        );
        assert_eq!(extension("https://cdn/file.verylongext"), None);
    }
}
