//! Inbox sessions: a reviewer signs in once with their token; the browser then holds a signed,
//! HttpOnly, `SameSite=Lax` cookie naming the token's digest (never the token), the tenant,
//! an expiry and the session's CSRF token. Every request looks the digest up again, so a token
//! removed from the config ends its sessions at the next request.
//!
//! Decision forms carry the CSRF token and are also refused when the browser says they come
//! from another site (`Origin`, `Sec-Fetch-Site`): the cookie's `SameSite` (which keeps it off
//! cross-site posts, not off a link followed from elsewhere) is the first defence, these the
//! second and third. Sign-out needs only the last two: a token renewed by a sign-in in
//! another tab must not leave a shared machine signed in.

use std::time::Duration;

use approvals_core::{TenantId, Timestamp};
use axum::http::HeaderMap;
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::auth::{Authenticator, Permission, Principal, Role, TenantScope};

/// The session cookie's name.
pub const COOKIE: &str = "approvals_session";

/// What the signed cookie holds.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Hex SHA-256 of the token the reviewer signed in with.
    digest: String,
    tenant: String,
    /// Milliseconds since the epoch.
    expires: i64,
    csrf: String,
}

/// A signed-in reviewer or admin, acting in one tenant.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub tenant: TenantId,
    /// The token every form of this session must send back.
    pub csrf: String,
    /// When the session ends: a page then leads to sign-in and the live stream closes.
    pub expires: Timestamp,
}

/// Why a sign-in was refused, in words for the sign-in page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInRefused {
    UnknownToken,
    AgentToken,
    TenantNeeded,
    BadTenant(String),
}

impl SignInRefused {
    pub fn sentence(&self) -> String {
        match self {
            Self::UnknownToken => "That token is not known here. Check it and try again.".into(),
            Self::AgentToken => {
                "That is an agent's token: the inbox is for reviewers and admins.".into()
            }
            Self::TenantNeeded => {
                "You signed in as a platform admin: name the tenant whose inbox to open.".into()
            }
            Self::BadTenant(why) => format!("That tenant name is not valid: {why}."),
        }
    }
}

/// The key that signs session cookies: from `ui.session_secret` (every instance must share
/// it), else random for this process.
pub fn signing_key(secret: Option<&str>) -> Key {
    match secret {
        // `Key` wants 64 bytes; SHA-512 stretches any configured secret to them.
        Some(secret) => Key::from(Sha512::digest(secret.as_bytes()).as_slice()),
        None => Key::generate(),
    }
}

/// Checks a presented token and the tenant asked for; the session's principal and tenant.
pub fn authenticate(
    auth: &Authenticator,
    token: &str,
    tenant: Option<&str>,
) -> Result<(Principal, TenantId), SignInRefused> {
    let principal = auth
        .authenticate(Some(&format!("Bearer {}", token.trim())))
        .ok_or(SignInRefused::UnknownToken)?;
    if principal.role == Role::Agent {
        return Err(SignInRefused::AgentToken);
    }
    let tenant = match (
        &principal.scope,
        tenant.map(str::trim).filter(|t| !t.is_empty()),
    ) {
        (TenantScope::One(own), _) => own.clone(),
        (TenantScope::All, None) => return Err(SignInRefused::TenantNeeded),
        (TenantScope::All, Some(asked)) => {
            TenantId::parse(asked).map_err(|e| SignInRefused::BadTenant(e.to_string()))?
        }
    };
    Ok((principal, tenant))
}

/// How far ahead of ours another instance's clock may be (as far as sign-outs allow for).
pub(super) const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// `jar` with a new session cookie for `token`'s digest in `tenant`.
pub fn start(
    jar: SignedCookieJar,
    token: &str,
    tenant: &TenantId,
    ttl: Duration,
    secure: bool,
) -> SignedCookieJar {
    let mut csrf = [0u8; 24];
    rand::rng().fill_bytes(&mut csrf);
    let claims = Claims {
        digest: crate::auth::digest_hex(token.trim()),
        tenant: tenant.to_string(),
        expires: Timestamp::now().plus(ttl).as_millis(),
        csrf: hex::encode(csrf),
    };
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let cookie = Cookie::build((COOKIE, value))
        .path("/ui")
        .http_only(true)
        // Lax, not Strict: a reviewer follows a link from a chat or mail in a browser (a
        // cross-site navigation), and a Strict cookie stays behind, so the link landed on the
        // sign-in page. Lax still keeps the cookie off cross-site POSTs and fetches; forms
        // also need the session's CSRF token and a same-site `Origin`.
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    jar.add(cookie)
}

/// `jar` without the session cookie.
pub fn end(jar: SignedCookieJar) -> SignedCookieJar {
    jar.remove(Cookie::build(COOKIE).path("/ui"))
}

/// The session `jar` holds, if it is signed by us, unexpired, ends within `ttl` (the
/// configured `ui.session_ttl`), and its token is still configured with access to the inbox
/// of its tenant.
pub fn current(auth: &Authenticator, jar: &SignedCookieJar, ttl: Duration) -> Option<Session> {
    let claims = claims(jar)?;
    let now = Timestamp::now();
    // A session ending past `ttl` from now was started under a longer one: lowering
    // `ui.session_ttl` (an incident) ends it, rather than leaving it for the old length. The
    // margin is for another instance's clock, ahead of ours, that started it (five minutes,
    // as long as a sign-out is kept past its session's end for the same reason).
    let longest = now.plus(ttl + CLOCK_MARGIN).as_millis();
    if claims.expires <= now.as_millis() || claims.expires > longest {
        return None;
    }
    let digest: [u8; 32] = hex::decode(&claims.digest).ok()?.try_into().ok()?;
    let principal = auth.by_digest(&digest)?;
    let tenant = TenantId::parse(claims.tenant).ok()?;
    principal.may(Permission::List, &tenant).then_some(Session {
        principal,
        tenant,
        csrf: claims.csrf,
        expires: Timestamp::from_millis(claims.expires),
    })
}

/// The digest of the token a (validly signed) session cookie names, without looking it up:
/// what the inbox's requests are counted against, before any handler runs.
pub fn token_digest(jar: &SignedCookieJar) -> Option<[u8; 32]> {
    hex::decode(claims(jar)?.digest).ok()?.try_into().ok()
}

/// What a validly signed session cookie holds, unchecked otherwise.
fn claims(jar: &SignedCookieJar) -> Option<Claims> {
    let cookie = jar.get(COOKIE)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cookie.value())
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Whether a form post may act: it carries this session's CSRF token and does not come from
/// another site.
pub fn form_allowed(
    session: &Session,
    sent: &str,
    headers: &HeaderMap,
    public_authority: Option<&str>,
) -> bool {
    same_site(headers, public_authority)
        && bool::from(session.csrf.as_bytes().ct_eq(sent.as_bytes()))
}

/// False when the browser says the request comes from another origin (browsers send `Origin`
/// on every POST and `Sec-Fetch-Site` on every request; tools that send neither pass). The
/// origin is ours when it names the `Host` the request came with, or where `ui.public_url`
/// says reviewers reach us (`public_authority`): a proxy that sends its own upstream name as
/// `Host` had every sign-in and decision refused.
pub fn same_site(headers: &HeaderMap, public_authority: Option<&str>) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    let Some(origin) = header("origin") else {
        return true;
    };
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    header("host")
        .into_iter()
        .chain(public_authority)
        .any(|ours| authority.eq_ignore_ascii_case(ours))
}

/// Whether the browser reached us over HTTPS through a proxy that says so (`X-Forwarded-Proto`
/// or `Forwarded: proto=`): its session cookie is then `Secure` even when `ui.public_url` is
/// not set. Trusting the header cannot weaken anything: a forged one only makes the forger's
/// own cookie stay off plain HTTP.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    let https = |proto: &str| proto.trim().trim_matches('"').eq_ignore_ascii_case("https");
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::to_owned)
    };
    if first("x-forwarded-proto").is_some_and(|p| https(&p)) {
        return true;
    }
    // `Forwarded: for=192.0.2.1;proto=https, for=…`: the element the nearest client sent.
    first("forwarded").is_some_and(|element| {
        element.split(';').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("proto") && https(v))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_cookie_round_trips_and_a_removed_token_ends_it() {
        let (token, entry) = mint("acme", Role::Reviewer, "alice");
        let auth = Authenticator::new(std::slice::from_ref(&entry));
        let key = signing_key(Some("a secret of at least thirty-two bytes!!"));
        let tenant = TenantId::parse("acme").unwrap();
        let jar = start(
            SignedCookieJar::new(key.clone()),
            &token,
            &tenant,
            Duration::from_secs(60),
            false,
        );
        let session = current(&auth, &jar, Duration::from_secs(60)).expect("signed in");
        assert_eq!(session.principal.subject, "alice");
        assert_eq!(session.tenant, tenant);
        assert_eq!(session.csrf.len(), 48);
        assert!(current(&Authenticator::new(&[]), &jar, Duration::from_secs(60)).is_none());
    }

    /// A session started under a longer `ui.session_ttl` ends when it is lowered (it ran on
    /// for its old length: lowering the TTL in an incident shortened no session).
    #[test]
    fn a_session_longer_than_the_configured_ttl_has_ended() {
        let (token, entry) = mint("acme", Role::Reviewer, "alice");
        let auth = Authenticator::new(std::slice::from_ref(&entry));
        let key = signing_key(Some("a secret of at least thirty-two bytes!!"));
        let tenant = TenantId::parse("acme").unwrap();
        let hours = |n: u64| Duration::from_secs(n * 3600);
        let jar = start(SignedCookieJar::new(key), &token, &tenant, hours(8), false);
        assert!(current(&auth, &jar, hours(8)).is_some());
        assert!(current(&auth, &jar, hours(1)).is_none());
    }

    #[test]
    fn agents_cannot_sign_in_and_platform_admins_name_a_tenant() {
        let (agent, agent_entry) = mint("acme", Role::Agent, "bot");
        let (root, root_entry) = mint("*", Role::Admin, "root");
        let auth = Authenticator::new(&[agent_entry, root_entry]);
        assert_eq!(
            authenticate(&auth, &agent, None).unwrap_err(),
            SignInRefused::AgentToken
        );
        assert_eq!(
            authenticate(&auth, "nope", None).unwrap_err(),
            SignInRefused::UnknownToken
        );
        assert_eq!(
            authenticate(&auth, &root, Some(" ")).unwrap_err(),
            SignInRefused::TenantNeeded
        );
        let (_, tenant) = authenticate(&auth, &root, Some("globex")).unwrap();
        assert_eq!(tenant.to_string(), "globex");
    }

    #[test]
    fn a_proxy_saying_https_makes_the_cookie_secure() {
        assert!(!forwarded_https(&headers(&[])));
        assert!(forwarded_https(&headers(&[("x-forwarded-proto", "HTTPS")])));
        assert!(forwarded_https(&headers(&[(
            "x-forwarded-proto",
            "https, http"
        )])));
        assert!(!forwarded_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(forwarded_https(&headers(&[(
            "forwarded",
            "for=192.0.2.1;proto=https, for=10.0.0.1;proto=http"
        )])));
        assert!(forwarded_https(&headers(&[(
            "forwarded",
            "Proto=\"https\""
        )])));
        assert!(!forwarded_https(&headers(&[(
            "forwarded",
            "for=192.0.2.1"
        )])));
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_site(&headers(&[]), None));
        assert!(same_site(
            &headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080")
            ]),
            None
        ));
        assert!(!same_site(
            &headers(&[
                ("origin", "https://evil.example"),
                ("host", "127.0.0.1:8080")
            ]),
            None
        ));
        assert!(!same_site(
            &headers(&[("sec-fetch-site", "cross-site")]),
            None
        ));
        assert!(same_site(
            &headers(&[("sec-fetch-site", "same-origin")]),
            None
        ));
    }

    /// Behind a proxy that sends its upstream's name as `Host`, the browser's `Origin` is
    /// where `ui.public_url` says reviewers reach the inbox.
    #[test]
    fn the_public_url_is_our_origin_too() {
        let behind_a_proxy = headers(&[
            ("origin", "https://approvals.example.com"),
            ("host", "approvals:8080"),
        ]);
        assert!(!same_site(&behind_a_proxy, None));
        assert!(same_site(&behind_a_proxy, Some("approvals.example.com")));
        assert!(!same_site(
            &headers(&[
                ("origin", "https://evil.example"),
                ("host", "approvals:8080")
            ]),
            Some("approvals.example.com")
        ));
    }
}
