//! Who is asking, and what they may reach: every route but `/health` and `/metrics` needs a
//! bearer token.
//!
//! Two steps, both failing closed:
//! 1. [`authenticate`] (a layer over the whole router, the fallbacks included) turns the
//!    `Authorization: Bearer` credential into a [`Caller`] in the request's extensions: the
//!    node's token ([`Caller::Node`]) or a tenant's ([`Caller::Tenant`], see
//!    [`crate::store::tokens`]). No credential is a 401 with `WWW-Authenticate: Bearer`; a
//!    credential the node does not know (wrong, revoked, replaced by a rotation) is a 403.
//! 2. [`guard`] (a layer on each route, added by [`super::route`]) lets a tenant's token reach
//!    only the routes of [`TENANT_ROUTES`], and only its own tenant's objects there: a path's
//!    `{tenant}` that is another tenant's is a 404, exactly as a tenant that does not exist,
//!    so a tenant learns nothing of the others. Every other route is the node's (403 for a
//!    tenant's token): trunks, routes, numbers' assignment, the cluster, tenants and their
//!    tokens, configuration changes. Listings and routes whose tenant is not in the path
//!    (`GET /queues`, `GET /agents`, `GET /numbers`, `POST /calls`, recordings, the calls
//!    of [`super::calls`]) filter by the [`Caller`] in their handlers.
//!
//! A signed request ([`super::keys`]) resolves to [`Caller::Key`] with a role; [`guard`] lets
//! it reach the routes its role does ([`super::keys::least_role`]: [`TENANT_ROUTES`] plus an
//! admin's key management), its own tenant's objects only.
//!
//! Every refusal is counted in [`AUTH_REFUSED_TOTAL`] by reason.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiState, Denied, Problem};

/// Counter, label `reason`: API requests refused before their handler ran —
/// `missing` (no bearer credential: 401), `invalid` (a token the node does not know: 403),
/// `node_only` (a tenant's token or key on a node-wide route: 403), `role` (an access key
/// whose role does not reach the route: 403), `other_tenant` (a tenant's token or key on
/// another tenant's object: 404).
pub const AUTH_REFUSED_TOTAL: &str = "switchyard_api_auth_refused_total";

/// The routes a tenant's token may use, by method and template; everything else needs the
/// node's token. Routes with a `{tenant}` are limited to the token's tenant by [`guard`];
/// the others filter in their handlers.
pub const TENANT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/queues"),
    ("GET", "/queues/{tenant}/{queue}"),
    ("GET", "/queues/{tenant}/{queue}/waiting"),
    ("GET", "/queues/{tenant}/{queue}/decisions"),
    ("GET", "/agents"),
    ("GET", "/agents/{tenant}/{agent}"),
    ("POST", "/agents/{tenant}/{agent}/{command}"),
    ("POST", "/calls"),
    ("GET", "/calls"),
    ("GET", "/calls/{call_id}"),
    ("POST", "/calls/{call_id}/hold"),
    ("POST", "/calls/{call_id}/unhold"),
    ("POST", "/calls/{call_id}/transfer"),
    ("POST", "/calls/{call_id}/consult"),
    ("POST", "/calls/{call_id}/consult/complete"),
    ("POST", "/calls/{call_id}/consult/cancel"),
    ("POST", "/calls/{call_id}/consult/conference"),
    ("POST", "/calls/{call_id}/conference"),
    ("PUT", "/calls/{call_id}/conference"),
    ("DELETE", "/calls/{call_id}/conference"),
    ("POST", "/calls/{call_id}/monitor"),
    ("PUT", "/calls/{call_id}/monitor"),
    ("DELETE", "/calls/{call_id}/monitor"),
    ("DELETE", "/calls/{call_id}"),
    ("GET", "/conferences"),
    ("POST", "/conferences/{tenant}"),
    ("GET", "/conferences/{tenant}/{id}"),
    ("DELETE", "/conferences/{tenant}/{id}"),
    ("POST", "/conferences/{tenant}/{id}/participants"),
    (
        "PUT",
        "/conferences/{tenant}/{id}/participants/{participant}",
    ),
    (
        "DELETE",
        "/conferences/{tenant}/{id}/participants/{participant}",
    ),
    ("GET", "/recordings"),
    ("GET", "/recordings/{id}"),
    ("GET", "/recordings/{id}/audio"),
    ("GET", "/numbers"),
    ("GET", "/tenants/{tenant}/users"),
    ("GET", "/tenants/{tenant}/tokens"),
    ("GET", "/cdrs"),
    ("GET", "/cdrs/export"),
    ("GET", "/reports/queues"),
    ("GET", "/reports/agents"),
    ("GET", "/audit"),
    ("GET", "/tenants/{tenant}/keys"),
    ("GET", "/openapi.json"),
    ("GET", "/risk/check"),
    ("GET", "/risk/decisions"),
    ("GET", "/risk/tenants/{tenant}/{kind}"),
    ("POST", "/risk/tenants/{tenant}/{kind}"),
    ("POST", "/risk/tenants/{tenant}/{kind}/remove"),
];

/// Paths open without a token: what load balancers and Prometheus scrape.
const OPEN_PATHS: [&str; 2] = ["/health", "/metrics"];

/// Describe this module's metrics (called from [`super::describe`]).
pub fn describe() {
    metrics::describe_counter!(
        AUTH_REFUSED_TOTAL,
        "API requests refused before their handler: missing (401), invalid token (403), node_only (tenant token on a node route, 403), other_tenant (404)"
    );
}

/// Who a request speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The node's token: every route and every tenant.
    Node,
    /// A tenant's token: the routes of [`TENANT_ROUTES`], that tenant's objects only.
    Tenant {
        tenant: Arc<str>,
        /// The token's id (`file` for the config file's `api_token`).
        token: Arc<str>,
    },
    /// A tenant's access key (a signed request, see [`super::keys`]): the routes its role
    /// reaches ([`super::keys::least_role`]), that tenant's objects only.
    Key {
        tenant: Arc<str>,
        key: Arc<str>,
        role: super::keys::Role,
    },
}

impl Caller {
    /// The tenant a tenant's token is limited to; None for the node.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Node => None,
            Caller::Tenant { tenant, .. } | Caller::Key { tenant, .. } => Some(tenant),
        }
    }

    /// Whether the caller may see `tenant`'s objects.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|own| own == tenant)
    }

    /// The tenant a listing covers, from its `tenant=` parameter: the node's token lists what
    /// it asks for (None: all); a tenant's token lists its own, and asking for another tenant
    /// is a 404 as for one that does not exist.
    pub fn listing<'a>(&'a self, asked: Option<&'a str>) -> Result<Option<&'a str>, Problem> {
        match (self.tenant(), asked) {
            (None, asked) => Ok(asked),
            (Some(own), None) => Ok(Some(own)),
            (Some(own), Some(asked)) if own == asked => Ok(Some(own)),
            (Some(_), Some(other)) => Err(other_tenant(other)),
        }
    }

    /// `Ok` if the caller may see `tenant`'s objects; a counted 404 otherwise.
    pub fn check(&self, tenant: &str) -> Result<(), Problem> {
        match self.sees(tenant) {
            true => Ok(()),
            false => Err(other_tenant(tenant)),
        }
    }
}

/// The 404 of another tenant's object (the same as for a tenant that does not exist),
/// counted as `other_tenant`.
pub fn other_tenant(tenant: &str) -> Problem {
    metrics::counter!(AUTH_REFUSED_TOTAL, "reason" => "other_tenant").increment(1);
    Problem::not_found(format!("no tenant {tenant:?}"))
}

/// Whether a tenant's token may use `method` on the route `template`.
pub fn tenant_may(method: &Method, template: &str) -> bool {
    // HEAD is answered by the GET handler.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    TENANT_ROUTES
        .iter()
        .any(|(m, t)| *m == method && *t == template)
}

/// The layer over the whole router: resolves the bearer token into a [`Caller`] (inserted
/// into the request's extensions), or refuses the request. `/health` and `/metrics` pass
/// without one.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    if super::keys::is_signed(request.headers()) {
        return match super::keys::verify(&state, request).await {
            Ok((caller, mut request)) => {
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(state.audit_sink());
                next.run(request).await
            }
            Err(refused) => refused,
        };
    }
    match state.identify(request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            request.extensions_mut().insert(state.audit_sink());
            next.run(request).await
        }
        Err(denied) => refuse(denied),
    }
}

/// The layer on each route `template`: a tenant's token reaches only [`TENANT_ROUTES`], an
/// access key the routes of its role ([`super::keys::least_role`]), and both only their own
/// `{tenant}`.
pub async fn guard(template: &'static str, request: Request, next: Next) -> Response {
    let caller = request.extensions().get::<Caller>().cloned();
    match caller {
        Some(Caller::Node) => next.run(request).await,
        Some(Caller::Tenant { tenant, .. }) => {
            if !tenant_may(request.method(), template) {
                return refuse(Denied::NodeOnly);
            }
            own_tenant_only(&tenant, request, next).await
        }
        Some(Caller::Key { tenant, role, .. }) => {
            match super::keys::least_role(request.method(), template) {
                None => refuse(Denied::NodeOnly),
                Some(least) if role < least => refuse(Denied::Role),
                Some(_) => own_tenant_only(&tenant, request, next).await,
            }
        }
        // Only the open paths come without a caller; anything else means the request did
        // not pass `authenticate` (a router built without it): refused.
        None if OPEN_PATHS.contains(&template) => next.run(request).await,
        None => refuse(Denied::NoCredentials),
    }
}

/// Runs the handler unless the path's `{tenant}` is another tenant than `own` (a 404, as
/// for a tenant that does not exist).
async fn own_tenant_only(own: &str, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &()).await {
        if let Some((_, asked)) = params.iter().find(|(name, _)| *name == "tenant") {
            if asked != own {
                return other_tenant(asked).into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

/// A refusal's response, counted by reason.
pub(super) fn refuse(denied: Denied) -> Response {
    metrics::counter!(AUTH_REFUSED_TOTAL, "reason" => denied.reason()).increment(1);
    denied.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_token_reaches_only_the_listed_routes() {
        assert!(tenant_may(&Method::GET, "/queues"));
        assert!(tenant_may(&Method::HEAD, "/queues"));
        assert!(tenant_may(
            &Method::POST,
            "/agents/{tenant}/{agent}/{command}"
        ));
        assert!(tenant_may(&Method::GET, "/tenants/{tenant}/tokens"));
        assert!(tenant_may(&Method::GET, "/calls"));
        assert!(tenant_may(&Method::POST, "/calls/{call_id}/transfer"));
        assert!(tenant_may(&Method::DELETE, "/calls/{call_id}"));
        for (m, t) in [
            (Method::GET, "/trunks"),
            (Method::GET, "/routes"),
            (Method::GET, "/cluster"),
            (Method::GET, "/tenants"),
            (Method::POST, "/tenants/{tenant}/tokens"),
            (Method::DELETE, "/tenants/{tenant}/tokens/{id}"),
            (Method::PUT, "/numbers/{number}"),
            (Method::PUT, "/tenants/{tenant}/users/{name}"),
            (Method::POST, "/calls/{call_id}/recording/{command}"),
            (Method::GET, "/security/bans"),
            (Method::GET, "/a/route/added/later"),
        ] {
            assert!(!tenant_may(&m, t), "{m} {t}");
        }
    }

    #[test]
    fn listings_are_limited_to_the_callers_tenant() {
        let node = Caller::Node;
        let t1 = Caller::Tenant {
            tenant: Arc::from("t1"),
            token: Arc::from("0123456789abcdef"),
        };
        assert_eq!(node.listing(None).unwrap(), None);
        assert_eq!(node.listing(Some("t2")).unwrap(), Some("t2"));
        assert_eq!(t1.listing(None).unwrap(), Some("t1"));
        assert_eq!(t1.listing(Some("t1")).unwrap(), Some("t1"));
        let p = t1.listing(Some("t2")).unwrap_err();
        assert_eq!(p.status, 404);
        assert_eq!(p.detail, r#"no tenant "t2""#);
        assert!(node.sees("t2") && t1.sees("t1") && !t1.sees("t2"));
        assert!(t1.check("t1").is_ok());
        assert_eq!(t1.check("t2").unwrap_err().status, 404);
    }
}
