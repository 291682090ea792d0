//! Query-string parsing that answers 400 with the contract's error body (axum's `Query`
//! extractor would answer in plain text).

use livecomments_shared::{ErrorCode, PostId};

use super::{ApiError, ApiResult};

/// Longest query string looked at.
const MAX_QUERY: usize = 4096;

pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> ApiResult<Query> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "query string too long",
            ));
        }
        Ok(Query(
            form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    /// A parameter given at most once.
    pub fn get(&self, name: &str) -> ApiResult<Option<&str>> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("{name} given more than once"),
            ));
        }
        Ok(first)
    }

    pub fn post_id(&self) -> ApiResult<PostId> {
        let p = self
            .get("post_id")?
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidPostId, "post_id is required"))?;
        Ok(PostId::parse(p)?)
    }

    /// An integer parameter within `range`, or `default` when absent.
    pub fn int(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> ApiResult<u64> {
        match self.get(name)? {
            None => Ok(default),
            Some(s) => match s.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "{name} must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        }
    }
}
