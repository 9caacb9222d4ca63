//! Where the archive keeps files: `archive.url`, opened as an [`ObjectStore`].

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;

/// A parsed `archive.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// `file:///PATH`: a folder on this machine (created when missing).
    Local(PathBuf),
    /// `s3://BUCKET/PREFIX`: an S3-compatible bucket; endpoint, region and credentials come
    /// from the usual `AWS_*` variables.
    S3 { bucket: String, prefix: String },
}

impl ArchiveLocation {
    /// Reads an `archive.url`, or says why it cannot be one.
    pub fn parse(url: &str) -> Result<ArchiveLocation, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{url}` must name an absolute path, as file:///PATH"
                ));
            }
            return Ok(ArchiveLocation::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "`{url}` names no bucket, expected s3://BUCKET/PREFIX"
                ));
            }
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        Err(format!("`{url}` is not file:///PATH or s3://BUCKET/PREFIX"))
    }

    /// Opens the store. S3 reads every `AWS_*` variable object_store knows
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` ...); an `http://` endpoint (MinIO, a local test
    /// server) is allowed as given.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, String> {
        match self {
            ArchiveLocation::Local(path) => {
                std::fs::create_dir_all(path)
                    .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(|err| format!("cannot use {}: {err}", path.display()))?;
                Ok(Arc::new(store))
            }
            ArchiveLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_default();
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                let store = builder
                    .build()
                    .map_err(|err| format!("cannot use bucket {bucket}: {err}"))?;
                if prefix.is_empty() {
                    Ok(Arc::new(store))
                } else {
                    Ok(Arc::new(PrefixStore::new(store, prefix.as_str())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_or_refused_with_a_reason() {
        assert_eq!(
            ArchiveLocation::parse("file:///var/lib/jobhook/archive"),
            Ok(ArchiveLocation::Local("/var/lib/jobhook/archive".into()))
        );
        assert_eq!(
            ArchiveLocation::parse("s3://videos/jobhook/kept/"),
            Ok(ArchiveLocation::S3 {
                bucket: "videos".into(),
                prefix: "jobhook/kept".into()
            })
        );
        assert_eq!(
            ArchiveLocation::parse("s3://videos"),
            Ok(ArchiveLocation::S3 {
                bucket: "videos".into(),
                prefix: String::new()
            })
        );
        assert!(ArchiveLocation::parse("file://relative/path")
            .unwrap_err()
            .contains("absolute"));
        assert!(ArchiveLocation::parse("s3:///prefix")
            .unwrap_err()
            .contains("bucket"));
        assert!(ArchiveLocation::parse("gs://bucket")
            .unwrap_err()
            .contains("s3://"));
    }
}
