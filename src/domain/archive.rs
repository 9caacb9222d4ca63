//! The output archive's vocabulary (SPEC §10): which of a job's files are copied, where each
//! one stands, and the `archive` block of the job JSON.

use crate::pictory::JobOutput;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outputs a job can have, by the names the archive gives them.
pub const FILE_NAMES: [&str; 4] = ["video", "thumbnail", "last_frame", "preview"];

/// How many downloads of one file are tried before it is recorded as `failed`.
pub const MAX_ATTEMPTS: i64 = 8;

/// Where one file's copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Not copied yet (or being copied, or waiting for its next attempt).
    Pending,
    Done,
    /// Pictory's URL answered 404 or 410: the file no longer exists there.
    Gone,
    /// Larger than `archive.max_size`.
    TooLarge,
    /// Gave up after [`MAX_ATTEMPTS`], or Pictory refused the download for good.
    Failed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Pending => "pending",
            FileStatus::Done => "done",
            FileStatus::Gone => "gone",
            FileStatus::TooLarge => "too_large",
            FileStatus::Failed => "failed",
        }
    }
}

/// Where a job's archive stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveStatus {
    /// Some file is still to be copied.
    Pending,
    /// Every file is kept.
    Done,
    /// Some are kept, others could not be.
    Partial,
    /// None could be kept.
    Failed,
}

/// One file's record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ArchivedFile {
    pub name: String,
    pub status: FileStatus,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    /// The object's key in the store (never shown).
    pub key: Option<String>,
    pub error: Option<String>,
}

/// A job's archive: its files, in [`FILE_NAMES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub files: Vec<ArchivedFile>,
}

impl Archive {
    /// A fresh archive of these files, none copied yet.
    pub fn pending(files: &[(String, String)]) -> Archive {
        Archive {
            files: files
                .iter()
                .map(|(name, _)| ArchivedFile {
                    name: name.clone(),
                    status: FileStatus::Pending,
                    size: None,
                    sha256: None,
                    content_type: None,
                    key: None,
                    error: None,
                })
                .collect(),
        }
    }

    /// Read from the stores' JSON array of file records (None for no records).
    pub fn from_records(mut files: Vec<ArchivedFile>) -> Option<Archive> {
        if files.is_empty() {
            return None;
        }
        files.sort_by_key(|f| FILE_NAMES.iter().position(|n| *n == f.name));
        Some(Archive { files })
    }

    pub fn status(&self) -> ArchiveStatus {
        let done = self.count(FileStatus::Done);
        if self.count(FileStatus::Pending) > 0 {
            ArchiveStatus::Pending
        } else if done == self.files.len() {
            ArchiveStatus::Done
        } else if done > 0 {
            ArchiveStatus::Partial
        } else {
            ArchiveStatus::Failed
        }
    }

    /// True once no file is waiting to be copied.
    pub fn settled(&self) -> bool {
        self.count(FileStatus::Pending) == 0
    }

    pub fn file(&self, name: &str) -> Option<&ArchivedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    fn count(&self, status: FileStatus) -> usize {
        self.files.iter().filter(|f| f.status == status).count()
    }

    /// The `archive` block of the job JSON; `job_ref` is the id its file URLs use.
    pub fn view(&self, job_ref: &str) -> ArchiveView {
        let files = self
            .files
            .iter()
            .map(|f| {
                let done = f.status == FileStatus::Done;
                let view = ArchivedFileView {
                    status: f.status,
                    size: f.size.filter(|_| done),
                    sha256: f.sha256.clone().filter(|_| done),
                    content_type: f.content_type.clone().filter(|_| done),
                    url: done
                        .then(|| format!("/v1/jobs/{}/files/{}", path_segment(job_ref), f.name)),
                    error: f.error.clone().filter(|_| !done),
                };
                (f.name.clone(), view)
            })
            .collect();
        ArchiveView {
            status: self.status(),
            files,
        }
    }
}

/// The `archive` block of the job JSON (SPEC §10).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchiveView {
    pub status: ArchiveStatus,
    /// By file name: `video`, `thumbnail`, `last_frame`, `preview`.
    pub files: BTreeMap<String, ArchivedFileView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchivedFileView {
    pub status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Hex SHA-256 of the bytes kept (also the file's `ETag`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Where the kept copy is served, once it is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why it is not kept (yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which of a completed job's outputs to copy: `(name, url)` for each wanted file Pictory gave
/// a URL for, in [`FILE_NAMES`] order.
pub fn files_to_copy(output: Option<&JobOutput>, wanted: &[String]) -> Vec<(String, String)> {
    let Some(output) = output else {
        return Vec::new();
    };
    let urls = [
        &output.url,
        &output.thumbnail_image_url,
        &output.last_frame_image_url,
        &output.preview_image_url,
    ];
    FILE_NAMES
        .iter()
        .zip(urls)
        .filter(|(name, _)| wanted.iter().any(|w| w == *name))
        .filter_map(|(name, url)| {
            let url = url.as_deref()?.trim();
            (!url.is_empty()).then(|| ((*name).to_owned(), url.to_owned()))
        })
        .collect()
}

/// What to do with the files of jobs that complete (stored, so every replica follows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePolicy {
    /// The names of the files to copy.
    pub files: Vec<String>,
    /// Hold `job.completed` notifications until the files are settled.
    pub hold_completed: bool,
}

/// A job id as one URL path segment (Pictory's ids are UUIDs; anything else is escaped).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, status: FileStatus) -> ArchivedFile {
        ArchivedFile {
            name: name.into(),
            status,
            size: Some(3),
            sha256: Some("abc".into()),
            content_type: Some("video/mp4".into()),
            key: Some("k".into()),
            error: (status != FileStatus::Done).then(|| "why".into()),
        }
    }

    #[test]
    fn the_whole_status_follows_its_files() {
        use FileStatus::*;
        let status = |files: &[FileStatus]| {
            Archive::from_records(files.iter().map(|s| file("video", *s)).collect())
                .map(|a| a.status())
        };
        assert_eq!(status(&[]), None);
        assert_eq!(status(&[Done, Done]), Some(ArchiveStatus::Done));
        assert_eq!(status(&[Done, Pending]), Some(ArchiveStatus::Pending));
        assert_eq!(status(&[Done, Gone]), Some(ArchiveStatus::Partial));
        assert_eq!(status(&[TooLarge, Gone]), Some(ArchiveStatus::Failed));
        assert_eq!(status(&[Failed]), Some(ArchiveStatus::Failed));
    }

    #[test]
    fn a_view_shows_urls_of_kept_files_and_reasons_of_the_others() {
        let archive = Archive::from_records(vec![
            file("thumbnail", FileStatus::Gone),
            file("video", FileStatus::Done),
        ])
        .unwrap();
        let view = serde_json::to_value(archive.view("a b/c")).unwrap();
        assert_eq!(view["status"], "partial");
        assert_eq!(
            view["files"]["video"]["url"],
            "/v1/jobs/a%20b%2Fc/files/video"
        );
        assert_eq!(view["files"]["video"]["sha256"], "abc");
        assert!(view["files"]["video"].get("error").is_none());
        assert_eq!(view["files"]["thumbnail"]["status"], "gone");
        assert_eq!(view["files"]["thumbnail"]["error"], "why");
        assert!(view["files"]["thumbnail"].get("url").is_none());
        // Files keep the order of FILE_NAMES whatever order the store gave.
        assert_eq!(archive.files[0].name, "video");
    }

    #[test]
    fn only_wanted_files_with_a_url_are_copied() {
        let output = JobOutput {
            url: Some("https://cdn/v.mp4".into()),
            thumbnail_image_url: Some(" ".into()),
            last_frame_image_url: Some("https://cdn/l.png".into()),
            preview_image_url: Some("https://cdn/p.jpg".into()),
            ..JobOutput::default()
        };
        let wanted = vec![
            "preview".to_owned(),
            "video".to_owned(),
            "thumbnail".to_owned(),
        ];
        assert_eq!(
            files_to_copy(Some(&output), &wanted),
            vec![
                ("video".to_owned(), "https://cdn/v.mp4".to_owned()),
                ("preview".to_owned(), "https://cdn/p.jpg".to_owned()),
            ]
        );
        assert!(files_to_copy(None, &wanted).is_empty());
    }
}
