//! Pictory's documented rules for a Generate Video request, checked before any call (and by the
//! fake Pictory, which must refuse what the real one refuses).

use serde_json::{Map, Value};

/// One AI Studio model: what it accepts and what it costs.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub name: &'static str,
    pub aspect_ratios: &'static [&'static str],
    pub durations: &'static [&'static str],
    pub credits_per_second: f64,
}

pub const MODELS: [Model; 3] = [
    Model {
        name: "veo3.1",
        aspect_ratios: &["16:9", "9:16"],
        durations: &["4s", "6s", "8s"],
        credits_per_second: 20.0,
    },
    Model {
        name: "veo3.1_fast",
        aspect_ratios: &["16:9", "9:16"],
        durations: &["4s", "6s", "8s"],
        credits_per_second: 10.0,
    },
    Model {
        name: "pixverse5.5",
        aspect_ratios: &["16:9", "9:16", "1:1", "3:4", "4:3"],
        durations: &["5s", "8s", "10s"],
        credits_per_second: 1.6,
    },
];

pub const DEFAULT_MODEL: &str = "pixverse5.5";
pub const PROMPT_MIN: usize = 5;
pub const PROMPT_MAX: usize = 5000;

pub fn model(name: &str) -> Option<&'static Model> {
    MODELS.iter().find(|m| m.name == name)
}

/// Seconds in a duration string like `8s`.
pub fn seconds(duration: &str) -> Option<f64> {
    duration.strip_suffix('s')?.parse().ok()
}

/// A field that breaks a rule, named as Pictory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

fn violation(field: &str, message: impl Into<String>) -> Violation {
    Violation {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// An absolute http(s) URL with a host.
pub(crate) fn is_web_url(text: &str) -> bool {
    reqwest::Url::parse(text)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false)
}

/// The Generate Video fields jobhook knows; anything else is refused rather than silently
/// stripped by Pictory.
pub const FIELDS: [&str; 8] = [
    "prompt",
    "model",
    "aspectRatio",
    "duration",
    "firstFrameImageUrl",
    "extendVideoUrl",
    "referenceImageUrls",
    "webhook",
];

/// Checks a Generate Video body against the documented rules; every broken rule is listed.
pub fn check(body: &Map<String, Value>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for key in body.keys() {
        if !FIELDS.contains(&key.as_str()) {
            violations.push(violation(key, "is not a Generate Video field"));
        }
    }
    match body.get("prompt") {
        Some(Value::String(prompt)) => {
            let length = prompt.chars().count();
            if !(PROMPT_MIN..=PROMPT_MAX).contains(&length) {
                violations.push(violation(
                    "prompt",
                    format!("must be {PROMPT_MIN} to {PROMPT_MAX} characters (got {length})"),
                ));
            }
        }
        Some(_) => violations.push(violation("prompt", "must be a string")),
        None => violations.push(violation("prompt", "is required")),
    }
    let model = match body.get("model") {
        None | Some(Value::Null) => model(DEFAULT_MODEL),
        Some(Value::String(name)) => {
            let found = model(name);
            if found.is_none() {
                let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
                violations.push(violation(
                    "model",
                    format!("must be one of {}", names.join(", ")),
                ));
            }
            found
        }
        Some(_) => {
            violations.push(violation("model", "must be a string"));
            None
        }
    };
    if let Some(model) = model {
        for (field, allowed) in [
            ("aspectRatio", model.aspect_ratios),
            ("duration", model.durations),
        ] {
            match body.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(value)) if allowed.contains(&value.as_str()) => {}
                Some(_) => violations.push(violation(
                    field,
                    format!("must be one of {} for {}", allowed.join(", "), model.name),
                )),
            }
        }
    }
    let mut sources = Vec::new();
    for field in ["firstFrameImageUrl", "extendVideoUrl", "webhook"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(url)) if is_web_url(url) => {
                if field != "webhook" {
                    sources.push(field);
                }
            }
            Some(_) => violations.push(violation(field, "must be an absolute http(s) URL")),
        }
    }
    match body.get("referenceImageUrls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(urls)) => {
            sources.push("referenceImageUrls");
            if urls.is_empty() || urls.len() > 3 {
                violations.push(violation("referenceImageUrls", "must hold 1 to 3 URLs"));
            }
            if urls.iter().any(|u| !u.as_str().is_some_and(is_web_url)) {
                violations.push(violation(
                    "referenceImageUrls",
                    "every entry must be an absolute http(s) URL",
                ));
            }
        }
        Some(_) => violations.push(violation("referenceImageUrls", "must be an array of URLs")),
    }
    if sources.len() > 1 {
        violations.push(violation(
            sources[1],
            format!(
                "cannot be combined with {} (they are mutually exclusive)",
                sources[0]
            ),
        ));
    }
    violations
}

/// The AI credits a request will cost, from its model and duration (defaults applied).
pub fn credits(body: &Map<String, Value>) -> Option<f64> {
    let model = model(
        body.get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL),
    )?;
    let duration = body
        .get("duration")
        .and_then(Value::as_str)
        .unwrap_or(model.durations[0]);
    Some(seconds(duration)? * model.credits_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_json(body: Value) -> Vec<String> {
        check(body.as_object().unwrap())
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_minimal_request_is_valid() {
        assert!(check_json(json!({"prompt": "a cat on a skateboard"})).is_empty());
        assert!(check_json(
            json!({"prompt": "a cat", "model": "veo3.1", "aspectRatio": "9:16", "duration": "6s"})
        )
        .is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(check_json(json!({})), ["prompt"]);
        assert_eq!(check_json(json!({"prompt": "abcd"})), ["prompt"]);
        assert_eq!(check_json(json!({"prompt": "x".repeat(5001)})), ["prompt"]);
        assert_eq!(
            check_json(json!({"prompt": "hello", "model": "sora"})),
            ["model"]
        );
        assert_eq!(
            check_json(json!({"prompt": "hello", "model": "veo3.1", "aspectRatio": "1:1"})),
            ["aspectRatio"]
        );
        assert_eq!(
            check_json(json!({"prompt": "hello", "duration": "8"})),
            ["duration"]
        );
        assert_eq!(
            check_json(json!({"prompt": "hello", "firstFrameImageUrl": "ftp://x/y"})),
            ["firstFrameImageUrl"]
        );
        assert_eq!(
            check_json(json!({"prompt": "hello", "referenceImageUrls": []})),
            ["referenceImageUrls"]
        );
        assert_eq!(
            check_json(
                json!({"prompt": "hello", "referenceImageUrls": ["https://a/1", "https://a/2", "https://a/3", "https://a/4"]})
            ),
            ["referenceImageUrls"]
        );
        assert_eq!(
            check_json(
                json!({"prompt": "hello", "firstFrameImageUrl": "https://a/1.png", "extendVideoUrl": "https://a/v.mp4"})
            ),
            ["extendVideoUrl"]
        );
        assert_eq!(
            check_json(json!({"prompt": "hello", "colour": "red"})),
            ["colour"]
        );
    }

    #[test]
    fn credits_follow_the_price_table() {
        let cost = |body: Value| credits(body.as_object().unwrap()).unwrap();
        assert!((cost(json!({"prompt": "hello"})) - 8.0).abs() < 1e-9);
        assert!((cost(json!({"model": "veo3.1", "duration": "8s"})) - 160.0).abs() < 1e-9);
        assert!((cost(json!({"model": "veo3.1_fast"})) - 40.0).abs() < 1e-9);
    }
}
