//! Access control: who a request acts as.
//!
//! In mode `token` every request that reads or writes chat data carries an HS256 JWT (`sub` =
//! user id) in `Authorization: Bearer`, or in `?token=` on the WebSocket, since browsers cannot
//! set headers there. In mode `off` (the original's open behaviour) anyone acts as anyone.
//! Handlers ask a [`Caller`] whether it may act as a user; this file is the only place that
//! decides. Signature checks are constant-time (jsonwebtoken verifies with `hmac`).

use crate::error::ApiError;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use minichat_core::UserId;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a token minted by `POST /users/` lives.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every request acts as the user of its token.
    Token,
    /// No access control at all, as the original: for trusted networks only.
    Off,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    /// Not valid before (seconds since the epoch); this server does not set it, but checks it
    /// when present, with the same leeway as `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// An operator's token: may create users when signup is `admin`; acts as no user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

/// The `sub` of admin tokens.
const ADMIN_SUBJECT: &str = "admin";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// Mints and checks tokens.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys.
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// With `secret` unset, a random secret is made: tokens then die with the process.
    pub fn new(mode: AuthMode, secret: Option<&str>) -> Authenticator {
        let random;
        let secret = match secret {
            Some(s) => s.as_bytes(),
            None => {
                random = rand::random::<[u8; 32]>();
                &random[..]
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            mode,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// A token acting as `user` for `ttl`.
    pub fn issue(&self, user: UserId, ttl: Duration) -> String {
        self.sign(user.to_string(), ttl, false)
    }

    /// An admin token (creates users under `MINICHAT_SIGNUP=admin`) for `ttl`.
    pub fn issue_admin(&self, ttl: Duration) -> String {
        self.sign(ADMIN_SUBJECT.to_owned(), ttl, true)
    }

    fn sign(&self, sub: String, ttl: Duration, admin: bool) -> String {
        let iat = unix_now();
        let claims = Claims {
            sub,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            nbf: None,
            admin,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// A token that expired `ago` (for tests of expiry).
    #[doc(hidden)]
    pub fn issue_expired(&self, user: UserId, ago: Duration) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            iat: now.saturating_sub(ago.as_secs() * 2),
            exp: now.saturating_sub(ago.as_secs()),
            nbf: None,
            admin: false,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Who a request acts as, from its bearer token (or `query_token` for WebSockets).
    pub fn caller(&self, bearer: Option<&str>, query_token: Option<&str>) -> Caller {
        if self.mode == AuthMode::Off {
            return Caller::Anyone;
        }
        let Some(token) = bearer.or(query_token) else {
            return Caller::Unauthenticated("Not authenticated");
        };
        match decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if data.claims.admin && data.claims.sub == ADMIN_SUBJECT => Caller::Admin,
            Ok(data) => match data.claims.sub.parse::<UserId>() {
                Ok(id) => Caller::User(id),
                Err(_) => Caller::Unauthenticated("Invalid token"),
            },
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Caller::Unauthenticated("Token expired")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    Caller::Unauthenticated("Token not yet valid")
                }
                _ => Caller::Unauthenticated("Invalid token"),
            },
        }
    }
}

/// Reads the token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who a request acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off: may act as anyone.
    Anyone,
    /// A valid token's user.
    User(UserId),
    /// A valid admin token.
    Admin,
    /// No valid token, and why.
    Unauthenticated(&'static str),
}

impl Caller {
    /// Any valid token (or auth off): for reading the user directory.
    pub fn require_any(&self) -> Result<(), ApiError> {
        match self {
            Caller::Unauthenticated(why) => Err(ApiError::Unauthorized(why)),
            _ => Ok(()),
        }
    }

    /// Acting as `user`: 401 without a valid token, 403 with another user's.
    pub fn require_user(&self, user: UserId) -> Result<(), ApiError> {
        match *self {
            Caller::Anyone => Ok(()),
            Caller::User(id) if id == user => Ok(()),
            Caller::User(_) | Caller::Admin => Err(ApiError::Forbidden),
            Caller::Unauthenticated(why) => Err(ApiError::Unauthorized(why)),
        }
    }

    /// An admin token (or auth off): for creating users under `MINICHAT_SIGNUP=admin`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anyone | Caller::Admin => Ok(()),
            Caller::User(_) => Err(ApiError::ForbiddenBecause(
                "Creating users needs an admin token",
            )),
            Caller::Unauthenticated(why) => Err(ApiError::Unauthorized(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let auth = Authenticator::new(AuthMode::Token, Some("secret"));
        let token = auth.issue(42, Duration::from_secs(60));
        assert_eq!(auth.caller(Some(&token), None), Caller::User(42));
        assert_eq!(auth.caller(None, Some(&token)), Caller::User(42));
        assert_eq!(
            auth.caller(None, None),
            Caller::Unauthenticated("Not authenticated")
        );
        let other = Authenticator::new(AuthMode::Token, Some("other secret"));
        assert_eq!(
            other.caller(Some(&token), None),
            Caller::Unauthenticated("Invalid token")
        );
        let expired = auth.issue_expired(42, Duration::from_secs(3600));
        assert_eq!(
            auth.caller(Some(&expired), None),
            Caller::Unauthenticated("Token expired")
        );
        assert_eq!(
            auth.caller(Some("garbage"), None),
            Caller::Unauthenticated("Invalid token")
        );
    }

    fn with_nbf(auth: &Authenticator, user: UserId, nbf: u64) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + 3600,
            nbf: Some(nbf),
            admin: false,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap()
    }

    #[test]
    fn not_before_is_checked_with_the_leeway_of_expiry() {
        let auth = Authenticator::new(AuthMode::Token, Some("secret"));
        let future = with_nbf(&auth, 42, unix_now() + 3600);
        let caller = auth.caller(Some(&future), None);
        assert_eq!(caller, Caller::Unauthenticated("Token not yet valid"));
        let refused = caller.require_user(42).unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        // Within the leeway (a client clock slightly ahead), and in the past: accepted.
        let skewed = with_nbf(&auth, 42, unix_now() + LEEWAY_SECS - 2);
        assert_eq!(auth.caller(Some(&skewed), None), Caller::User(42));
        let past = with_nbf(&auth, 42, unix_now() - 60);
        assert_eq!(auth.caller(Some(&past), None), Caller::User(42));
    }

    #[test]
    fn admin_tokens_create_users_but_act_as_no_one() {
        let auth = Authenticator::new(AuthMode::Token, Some("secret"));
        let admin = auth.caller(Some(&auth.issue_admin(Duration::from_secs(60))), None);
        assert_eq!(admin, Caller::Admin);
        assert!(admin.require_admin().is_ok());
        assert!(admin.require_any().is_ok());
        assert!(matches!(admin.require_user(1), Err(ApiError::Forbidden)));
        let user = auth.caller(Some(&auth.issue(1, Duration::from_secs(60))), None);
        assert!(matches!(
            user.require_admin(),
            Err(ApiError::ForbiddenBecause(_))
        ));
    }

    #[test]
    fn off_lets_anyone_act_as_anyone() {
        let auth = Authenticator::new(AuthMode::Off, None);
        let caller = auth.caller(None, None);
        assert!(caller.require_user(7).is_ok());
        assert!(caller.require_any().is_ok());
    }

    #[test]
    fn acting_as_another_user_is_forbidden() {
        let caller = Caller::User(1);
        assert!(caller.require_user(1).is_ok());
        assert!(matches!(caller.require_user(2), Err(ApiError::Forbidden)));
        assert!(matches!(
            Caller::Unauthenticated("x").require_user(1),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn bearer_header_parsing() {
        let h = http::HeaderValue::from_static("Bearer abc.def");
        assert_eq!(bearer_token(Some(&h)), Some("abc.def"));
        let h = http::HeaderValue::from_static("bearer   xyz");
        assert_eq!(bearer_token(Some(&h)), Some("xyz"));
        let h = http::HeaderValue::from_static("Basic abc");
        assert_eq!(bearer_token(Some(&h)), None);
        assert_eq!(bearer_token(None), None);
    }
}
