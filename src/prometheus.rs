//! A Prometheus HTTP API client: one instant query (`/api/v1/query`), its answer read
//! as numbers. An empty result, NaN and an unreachable server are distinct outcomes
//! ("no data"), never a number: a caller can never mistake them for a pass or a trigger.
//! A NaN series among numbers is left out; only a result that is all NaN is no data.

use std::time::Duration;

use serde::Serialize;

use crate::http::HttpClient;

/// What one query gave.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueryResult {
    /// One value per series (a scalar is one unnamed series).
    Values { values: Vec<(String, f64)> },
    /// No data, and why: `empty result`, `NaN`, `unreachable: ...`, `error: ...`.
    NoData { why: String },
}

/// Percent-encodes a query for a URL's query string (everything but unreserved bytes).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs an instant query against the server at `base` (e.g. `http://127.0.0.1:9090`).
pub async fn query(
    client: &HttpClient,
    base: &str,
    promql: &str,
    timeout: Duration,
) -> QueryResult {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(promql)
    );
    let resp = match client.get(&url, timeout).await {
        Ok(r) => r,
        Err(e) => {
            return QueryResult::NoData {
                why: format!("unreachable: {e}"),
            };
        }
    };
    read_answer(resp.status, &resp.body)
}

/// Reads an answer of the query API: its HTTP status and body, as the server sent them.
/// Any bytes give a result; one that is not a number says why.
pub fn read_answer(status: u16, body: &[u8]) -> QueryResult {
    let body: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return QueryResult::NoData {
                why: format!("error: the answer (status {status}) is not JSON: {e}"),
            };
        }
    };
    if body["status"] != "success" {
        return QueryResult::NoData {
            why: format!(
                "error: {}",
                body["error"].as_str().unwrap_or("the query failed")
            ),
        };
    }
    parse_data(&body["data"])
}

/// Reads `data` of a successful answer.
pub fn parse_data(data: &serde_json::Value) -> QueryResult {
    let number = |v: &serde_json::Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok());
    let values: Vec<(String, Option<f64>)> = match data["resultType"].as_str() {
        Some("scalar") => vec![(String::new(), number(&data["result"]))],
        Some("vector") => data["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .map(|s| (labels(&s["metric"]), number(&s["value"])))
                    .collect()
            })
            .unwrap_or_default(),
        other => {
            return QueryResult::NoData {
                why: format!(
                    "error: a {} result; use an instant vector or scalar query",
                    other.unwrap_or("missing")
                ),
            };
        }
    };
    if values.is_empty() {
        return QueryResult::NoData {
            why: "empty result".to_string(),
        };
    }
    let mut out = Vec::new();
    for (name, v) in values {
        match v {
            // A NaN series (an idle instance's 0/0) says nothing; dropping it keeps it from
            // hiding the others, one of which may be breaching.
            Some(v) if v.is_nan() => {}
            Some(v) => out.push((name, v)),
            None => {
                let series = if name.is_empty() {
                    "the result".to_string()
                } else {
                    format!("series {name}")
                };
                return QueryResult::NoData {
                    why: format!("error: {series} has a value that is not a number"),
                };
            }
        }
    }
    if out.is_empty() {
        return QueryResult::NoData {
            why: "NaN".to_string(),
        };
    }
    QueryResult::Values { values: out }
}

fn labels(metric: &serde_json::Value) -> String {
    metric
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|m| {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("{{{}}}", parts.join(", "))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"sum(rate(x{s=~"5.."}[1m]))"#),
            "sum%28rate%28x%7Bs%3D~%225..%22%7D%5B1m%5D%29%29"
        );
    }

    /// Regression: one idle instance's 0/0 made the whole vector "no data", hiding a
    /// breaching series beside it.
    #[test]
    fn a_nan_series_does_not_hide_the_others() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"instance": "idle"}, "value": [1.0, "NaN"]},
            {"metric": {"instance": "busy"}, "value": [1.0, "0.4"]},
        ]});
        assert_eq!(
            parse_data(&vector),
            QueryResult::Values {
                values: vec![("{instance=\"busy\"}".into(), 0.4)]
            }
        );
    }

    #[test]
    fn an_answer_that_is_not_json_says_where() {
        let QueryResult::NoData { why } = read_answer(502, b"<html>bad gateway") else {
            panic!("a number from HTML");
        };
        assert_eq!(
            why,
            "error: the answer (status 502) is not JSON: expected value at line 1 column 1"
        );
    }

    #[test]
    fn reads_answers() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"job": "a"}, "value": [1.0, "0.5"]},
            {"metric": {}, "value": [1.0, "2"]},
        ]});
        assert_eq!(
            parse_data(&vector),
            QueryResult::Values {
                values: vec![("{job=\"a\"}".into(), 0.5), (String::new(), 2.0)]
            }
        );
        let scalar = json!({"resultType": "scalar", "result": [1.0, "3"]});
        assert_eq!(
            parse_data(&scalar),
            QueryResult::Values {
                values: vec![(String::new(), 3.0)]
            }
        );
        let empty = json!({"resultType": "vector", "result": []});
        assert_eq!(
            parse_data(&empty),
            QueryResult::NoData {
                why: "empty result".into()
            }
        );
        let nan = json!({"resultType": "scalar", "result": [1.0, "NaN"]});
        assert_eq!(parse_data(&nan), QueryResult::NoData { why: "NaN".into() });
        let all_nan = json!({"resultType": "vector", "result": [
            {"metric": {"instance": "a"}, "value": [1.0, "NaN"]},
            {"metric": {"instance": "b"}, "value": [1.0, "NaN"]},
        ]});
        assert_eq!(
            parse_data(&all_nan),
            QueryResult::NoData { why: "NaN".into() }
        );
        let not_a_number = json!({"resultType": "vector", "result": [
            {"metric": {"job": "a"}, "value": [1.0, "x"]},
        ]});
        assert_eq!(
            parse_data(&not_a_number),
            QueryResult::NoData {
                why: "error: series {job=\"a\"} has a value that is not a number".into()
            }
        );
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(
            matches!(parse_data(&matrix), QueryResult::NoData { why } if why.contains("matrix"))
        );
    }
}
