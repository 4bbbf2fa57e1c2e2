//! `APPROVALS_<SECTION>__<KEY>` environment variables as configuration overrides.
//!
//! Which keys exist is decided by the settings types themselves (every section denies unknown
//! fields): a variable that names no key fails extraction, and [`Overrides::name_of`] turns
//! that failure back into the variable's name. Nothing here lists the keys by hand.
//!
//! Kubernetes injects service-link variables for every Service in a namespace; a Service
//! named `approvals` yields `APPROVALS_SERVICE_HOST`, `APPROVALS_PORT_8080_TCP_ADDR`, … in
//! every pod, and one named `approvals-worker` `APPROVALS_WORKER_SERVICE_HOST`, …. They are
//! never configuration (every key's variable has a `__`), so they are skipped rather than
//! refused: refusing them stopped every pod once someone added such a Service.

/// The variable that names the config file; not a key.
pub const CONFIG_VAR: &str = "APPROVALS_CONFIG";
/// What `approvals policy push` reads (the service to call, an admin token): an operator who
/// exported them must still be able to start `serve`, `worker` or `migrate` in that shell.
/// Also what the compose file and the README have operators export in their shell
/// (`APPROVALS_RUNBOOK_BASE` for alert links, `APPROVALS_FEATURES` for image builds).
const CLIENT_VARS: [&str; 4] = [
    "APPROVALS_URL",
    "APPROVALS_TOKEN",
    "APPROVALS_RUNBOOK_BASE",
    "APPROVALS_FEATURES",
];
pub(super) const PREFIX: &str = "APPROVALS_";

/// One variable and the dotted key it sets (`APPROVALS_REDIS__URL` → `redis.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub var: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Default)]
pub struct Overrides(pub Vec<Override>);

impl Overrides {
    /// The configuration variables among `env`.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let overrides = env
            .into_iter()
            .filter(|(var, _)| var.starts_with(PREFIX) && var != CONFIG_VAR)
            .filter(|(var, _)| !CLIENT_VARS.contains(&var.as_str()))
            .filter(|(var, value)| !is_service_link(var, value))
            .map(|(var, value)| {
                let key = var[PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
                Override { var, key, value }
            })
            .collect();
        Self(overrides)
    }

    /// The variable that set `key` or a key under it, if one did.
    pub fn name_of(&self, key: &str) -> Option<&Override> {
        self.0.iter().find(|o| {
            o.key == key
                || o.key
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// Kubernetes service links of a Service named `approvals` or `approvals-<name>`:
/// `APPROVALS_[<NAME>_]SERVICE_HOST`, `…SERVICE_PORT[_<PORT NAME>]`, `…PORT` and
/// `…PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`. A variable with a `__` names a key, never a link.
/// A bare `…_PORT` is a link only holding one (`tcp://10.0.0.1:8080`): `APPROVALS_SERVER_PORT=9090`
/// is a mistyped key, and skipping it silently left the default in place.
pub fn is_service_link(var: &str, value: &str) -> bool {
    let Some(rest) = var.strip_prefix(PREFIX) else {
        return false;
    };
    if rest.contains("__") {
        return false;
    }
    // The link's own part starts at the beginning or after any `_` (the Service's name).
    std::iter::once(rest)
        .chain(rest.match_indices('_').map(|(at, _)| &rest[at + 1..]))
        .any(|suffix| is_link_suffix(suffix, value))
}

/// What follows the Service's name in a link variable.
fn is_link_suffix(rest: &str, value: &str) -> bool {
    if rest == "PORT" {
        return ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|scheme| value.starts_with(scheme));
    }
    if rest == "SERVICE_HOST" || rest == "SERVICE_PORT" {
        return true;
    }
    if let Some(name) = rest.strip_prefix("SERVICE_PORT_") {
        return !name.is_empty();
    }
    let Some(port_spec) = rest.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = port_spec.split('_');
    let port_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let proto_ok = parts
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let suffix_ok = match parts.next() {
        None => true,
        Some(s) => matches!(s, "PROTO" | "PORT" | "ADDR") && parts.next().is_none(),
    };
    port_ok && proto_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_links_are_recognised() {
        for var in [
            "APPROVALS_SERVICE_HOST",
            "APPROVALS_SERVICE_PORT",
            "APPROVALS_SERVICE_PORT_HTTP",
            "APPROVALS_PORT",
            "APPROVALS_PORT_8080_TCP",
            "APPROVALS_PORT_8080_TCP_PROTO",
            "APPROVALS_PORT_8080_TCP_PORT",
            "APPROVALS_PORT_8080_TCP_ADDR",
            "APPROVALS_PORT_53_UDP_ADDR",
            // Services named approvals-worker, approvals-redis-main.
            "APPROVALS_WORKER_SERVICE_HOST",
            "APPROVALS_WORKER_SERVICE_PORT_METRICS",
            "APPROVALS_WORKER_PORT",
            "APPROVALS_WORKER_PORT_8081_TCP_ADDR",
            "APPROVALS_REDIS_MAIN_PORT_6379_TCP",
        ] {
            let value = if var.ends_with("_PORT") || var.ends_with("_TCP") {
                "tcp://10.0.0.1:8080"
            } else {
                "10.0.0.1"
            };
            assert!(is_service_link(var, value), "{var}");
        }
        for var in [
            "APPROVALS_REDIS__URL",
            "APPROVALS_REDIS_URL",
            "APPROVALS_PORT_8080",
            "APPROVALS_PORT_X_TCP",
            "APPROVALS_PORT_8080_TCP_HOST",
            "APPROVALS_SERVER__PORT",
            "APPROVALS_WORKER__LISTEN",
            "APPROVALS_REDIS_URL_PORT_X",
        ] {
            assert!(!is_service_link(var, "tcp://10.0.0.1:8080"), "{var}");
        }
        // Mistyped keys that read like a bare `_PORT` link, but hold no link.
        for var in [
            "APPROVALS_SERVER_PORT",
            "APPROVALS_REDIS_PORT",
            "APPROVALS_PORT",
        ] {
            assert!(!is_service_link(var, "9090"), "{var}");
        }
    }
}
