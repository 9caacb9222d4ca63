//! Finding jobs by what a person remembers of them: a job id, a submission id, or a value in
//! the job's metadata (`GET /v1/jobs?q=` and the dashboard's search box).
//!
//! Ids are unique columns, so they are indexed already. Metadata is free-form JSON, which no
//! single index covers, so every value in it is also written, once, to a narrow table of
//! `(value, job)` rows when the job is recorded (metadata never changes afterwards). A search
//! for a value is then one index range, however many jobs there are. The rules here are the
//! one place that says what a value is; the migrations that index jobs recorded before the
//! table existed follow them.

use serde_json::Value;

/// Values longer than this are not indexed: nobody types a paragraph into a search box, and
/// the index stays small.
pub const MAX_VALUE_CHARS: usize = 200;
/// Longest search accepted.
pub const MAX_QUERY_CHARS: usize = 256;
/// A value shared by more jobs than this finds the most recently created of them: the search
/// stays an index read of bounded size even for `"customer": "acme"` on half the jobs.
pub const MAX_VALUE_MATCHES: u32 = 1000;

/// What to look for: a job id or submission id exactly as given, or a metadata value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSearch {
    /// Compared with `job_id` and `submission_id` as it is.
    pub id: String,
    /// Compared with the indexed metadata values ([`normalise`]d).
    pub value: String,
}

impl JobSearch {
    /// None for a blank query; Err when it is too long to be anything stored.
    pub fn parse(query: &str) -> Result<Option<JobSearch>, String> {
        let id = query.trim();
        if id.is_empty() {
            return Ok(None);
        }
        if id.chars().count() > MAX_QUERY_CHARS {
            return Err(format!("must be at most {MAX_QUERY_CHARS} characters"));
        }
        Ok(Some(JobSearch {
            id: id.to_owned(),
            value: normalise(id),
        }))
    }
}

/// Values match whole and without regard to ASCII case (`ACME-12` finds `acme-12`). ASCII only,
/// because that is what SQLite's `lower()` folds, and the SQLite migration indexes older jobs
/// with it; both stores then agree on every value.
pub fn normalise(value: &str) -> String {
    value.trim().to_ascii_lowercase()
}

/// Every value a job's metadata can be found by: each string, number and boolean at any depth
/// (array elements too), as text, [`normalise`]d, without repeats. Keys, nulls, empty strings
/// and values over [`MAX_VALUE_CHARS`] are left out.
pub fn metadata_values(metadata: Option<&Value>) -> Vec<String> {
    let mut values = Vec::new();
    if let Some(metadata) = metadata {
        collect(metadata, &mut values);
    }
    values.sort_unstable();
    values.dedup();
    values
}

fn collect(value: &Value, into: &mut Vec<String>) {
    let text = match value {
        Value::Object(map) => {
            map.values().for_each(|v| collect(v, into));
            return;
        }
        Value::Array(items) => {
            items.iter().for_each(|v| collect(v, into));
            return;
        }
        Value::Null => return,
        Value::String(s) => normalise(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
    };
    if !text.is_empty() && text.chars().count() <= MAX_VALUE_CHARS {
        into.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_scalar_at_any_depth_is_a_value_once() {
        let metadata = json!({
            "order": 1234, "customer": "ACME Corp", "tags": ["red", "Red", {"deep": true}],
            "none": null, "empty": "", "price": 12.5, "long": "x".repeat(MAX_VALUE_CHARS + 1)
        });
        assert_eq!(
            metadata_values(Some(&metadata)),
            ["12.5", "1234", "acme corp", "red", "true"]
        );
        assert!(metadata_values(None).is_empty());
    }

    #[test]
    fn a_query_keeps_the_id_as_given_and_folds_the_value() {
        let search = JobSearch::parse("  Order-7 ").unwrap().unwrap();
        assert_eq!(search.id, "Order-7");
        assert_eq!(search.value, "order-7");
        assert_eq!(JobSearch::parse("   ").unwrap(), None);
        assert!(JobSearch::parse(&"a".repeat(MAX_QUERY_CHARS + 1)).is_err());
    }
}
