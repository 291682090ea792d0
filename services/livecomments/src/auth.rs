//! Bearer-token authentication (CONTRACT §3). Exactly one algorithm is accepted: HS256 with a
//! shared secret, or the algorithm of the configured public key (RS256, ES256 or EdDSA). So
//! `alg: none` and algorithm confusion (an HS256 token "signed" with the RSA public key) are
//! refused by construction.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use livecomments_shared::validate;
use serde::{Deserialize, Serialize};

use crate::config::AuthArgs;

/// Longest `Authorization` value looked at; anything longer is refused unparsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub moderator: bool,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Only for standalone without a configured key: signs `/dev/token` answers.
    dev_signer: Option<EncodingKey>,
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
        if !validate::user_id(&data.claims.sub) {
            return Err("unusable sub claim");
        }
        Ok(Caller {
            moderator: data.claims.role.as_deref() == Some("moderator"),
            user_id: data.claims.sub,
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
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + ttl_secs;
        let claims = Claims {
            sub: user_id.to_string(),
            exp,
            role: moderator.then(|| "moderator".to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .ok()
            .map(|t| (t, exp))
    }
}
