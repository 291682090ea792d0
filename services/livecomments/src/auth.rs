//! Bearer-token authentication (CONTRACT §3). Exactly one algorithm is accepted: HS256 with a
//! shared secret, or the algorithm of the configured public key (RS256, ES256 or EdDSA). So
//! `alg: none` and algorithm confusion (an HS256 token "signed" with the RSA public key) are
//! refused by construction.
//!
//! A token may be limited to some posts (`posts` claim, [`scope`]); verified tokens are
//! remembered until their `exp` ([`cache`]), so a client posting often pays one check.

pub mod cache;
pub mod scope;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use livecomments_shared::{Rejection, validate};
use serde::{Deserialize, Deserializer, Serialize};

pub use cache::VerifiedCache;
pub use scope::{Pattern, Scope};

use crate::config::AuthArgs;

/// Longest `Authorization` value looked at; anything longer is refused unparsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// CONTRACT §12. `Some(Value::Null)` for `"posts": null` (refused), `None` when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub posts: Option<serde_json::Value>,
}

/// A claim that is present, even as `null`, is `Some`: only an absent one means "none".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub moderator: bool,
    /// The token's `exp` (Unix seconds): a stream opened with it is closed then (§12).
    pub expires_at: u64,
    /// The posts the token is valid for.
    pub scope: Scope,
}

impl Caller {
    /// 403 `forbidden` unless the token is valid for `post_id` (CONTRACT §12). Every route
    /// that acts on one post calls this after authenticating: POST and DELETE /comment,
    /// reactions, moderation of a post, and reads when they require a token.
    pub fn require_post(&self, post_id: &str) -> Result<(), Rejection> {
        self.scope.require(post_id)
    }

    /// 403 `forbidden` for a token limited to some posts: for acts on every post at once (a
    /// global ban, lifting one, listing every ban).
    pub fn require_every_post(&self) -> Result<(), Rejection> {
        self.scope.require_every()
    }
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Only for standalone without a configured key: signs `/dev/token` answers.
    dev_signer: Option<EncodingKey>,
    cache: VerifiedCache,
}

impl Authenticator {
    /// Builds the verifier from configuration. `allow_dev` (standalone) generates a random
    /// HS256 secret when no key is configured.
    pub fn from_args(args: &AuthArgs, allow_dev: bool) -> anyhow::Result<Option<Self>> {
        let (key, alg, dev_signer) = if let Some(secret) = &args.jwt_secret {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
                None,
            )
        } else if let Some(path) = &args.jwt_public_key_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --jwt-public-key-file {}", path.display()))?;
            let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, Algorithm::ES256)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, Algorithm::EdDSA)
            } else {
                anyhow::bail!(
                    "--jwt-public-key-file {}: not an RSA, EC P-256 or Ed25519 public key in PEM",
                    path.display()
                );
            };
            (key, alg, None)
        } else if allow_dev {
            let secret: [u8; 32] = rand::random();
            (
                DecodingKey::from_secret(&secret),
                Algorithm::HS256,
                Some(EncodingKey::from_secret(&secret)),
            )
        } else {
            return Ok(None);
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        required.extend(args.jwt_issuer.as_ref().map(|_| "iss"));
        required.extend(args.jwt_audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &args.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &args.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Authenticator {
            key,
            validation,
            dev_signer,
            cache: VerifiedCache::default(),
        }))
    }

    /// Verifies an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, &'static str> {
        let value = header.ok_or("missing bearer token")?;
        if value.len() > MAX_TOKEN_LEN {
            return Err("token too large");
        }
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or("expected 'Authorization: Bearer <token>'")?;
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Caller, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("token too large");
        }
        let now = now_secs();
        if let Some(c) = self.cache.get(token, now) {
            return Ok(Caller::clone(&c));
        }
        let caller = self.verify_uncached(token)?;
        // A token whose `exp` already passed is accepted within the leeway, but not kept.
        if now < caller.expires_at {
            self.cache.insert(token, Arc::new(caller.clone()));
        }
        Ok(caller)
    }

    /// The signature check and the claims, every time.
    pub fn verify_uncached(&self, token: &str) -> Result<Caller, &'static str> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind::*;
                match e.kind() {
                    ExpiredSignature => "token expired",
                    ImmatureSignature => "token not valid yet",
                    InvalidIssuer => "wrong issuer",
                    InvalidAudience => "wrong audience",
                    InvalidAlgorithm => "algorithm not accepted",
                    InvalidSignature => "bad signature",
                    MissingRequiredClaim(_) => "missing required claim",
                    _ => "malformed token",
                }
            })?;
        let claims = data.claims;
        if !validate::user_id(&claims.sub) {
            return Err("unusable sub claim");
        }
        let scope = Scope::from_claim(claims.posts.as_ref())?;
        Ok(Caller {
            moderator: claims.role.as_deref() == Some("moderator"),
            user_id: claims.sub,
            expires_at: claims.exp,
            scope,
        })
    }

    pub fn dev_tokens_enabled(&self) -> bool {
        self.dev_signer.is_some()
    }

    /// A token for `/dev/token` and the start-up log; `None` when a real key is configured.
    pub fn dev_token(&self, user_id: &str, ttl_secs: u64) -> Option<(String, u64)> {
        self.dev_token_as(user_id, ttl_secs, false)
    }

    /// A dev token, with the claim `"role": "moderator"` when `moderator` (the demo page's
    /// moderator view and the README's ban walk-through; dev tokens only).
    pub fn dev_token_as(
        &self,
        user_id: &str,
        ttl_secs: u64,
        moderator: bool,
    ) -> Option<(String, u64)> {
        let key = self.dev_signer.as_ref()?;
        let exp = now_secs() + ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            role: moderator.then(|| "moderator".to_string()),
            posts: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .ok()
            .map(|t| (t, exp))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789abcdef";

    fn authenticator() -> Authenticator {
        let args = AuthArgs {
            jwt_secret: Some(SECRET.into()),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            read_requires_token: false,
        };
        Authenticator::from_args(&args, false).unwrap().unwrap()
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn the_posts_claim_becomes_the_callers_scope() {
        let a = authenticator();
        let exp = now_secs() + 600;
        let c = a
            .verify(&sign(
                json!({"sub": "al", "exp": exp, "posts": ["m-1", "cup-*"]}),
            ))
            .unwrap();
        assert_eq!(c.expires_at, exp);
        assert!(c.require_post("m-1").is_ok() && c.require_post("cup-9").is_ok());
        assert!(c.require_post("m-2").is_err());
        assert!(c.require_every_post().is_err());
        let every = a.verify(&sign(json!({"sub": "al", "exp": exp}))).unwrap();
        assert_eq!(every.scope, Scope::Every);
        for bad in [json!(null), json!([]), json!(["a*b"]), json!("m-1")] {
            let t = sign(json!({"sub": "al", "exp": exp, "posts": bad}));
            assert!(a.verify(&t).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_verified_token_is_cached_and_a_refused_one_is_not() {
        let a = authenticator();
        let good = sign(json!({"sub": "al", "exp": now_secs() + 600}));
        assert!(a.cache.is_empty());
        a.verify(&good).unwrap();
        assert_eq!(a.cache.len(), 1);
        assert_eq!(a.verify(&good).unwrap().user_id, "al");
        assert_eq!(a.cache.len(), 1);
        // A tampered copy is not a hit: the bytes differ, and its signature fails.
        assert!(a.verify(&format!("{good}x")).is_err());
        let expired = sign(json!({"sub": "al", "exp": now_secs() - 2}));
        assert!(a.verify(&expired).is_ok(), "within the leeway");
        assert_eq!(a.cache.len(), 1, "a token past its exp is not kept");
    }
}
