//! `approvals healthcheck`: asks this instance's own `/readyz`, where its configuration says it
//! listens, and exits 0 when ready. For a container's HEALTHCHECK: a probe fixed to port 8080
//! (curl in the image) was wrong for the worker image and for any moved `server.listen`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::CONFIG_VAR;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// TOML configuration file (the one the probed process runs with).
    #[arg(long, env = CONFIG_VAR)]
    config: Option<PathBuf>,
    /// Probe `approvals worker` (on `worker.listen`) instead of `approvals serve`.
    #[arg(long)]
    worker: bool,
    /// How long the probe may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// 0 when `/readyz` answers 200; 1 when it answers otherwise or not at all (the answer's code,
/// or the error, on standard error); 2 for a configuration that cannot be read.
pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let settings = match super::load_settings(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let listen = if args.worker {
        settings.worker.listen
    } else {
        settings.server.listen
    };
    let client = match reqwest::Client::builder()
        .timeout(args.timeout)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("approvals: {error}");
            return ExitCode::FAILURE;
        }
    };
    for address in reachable(listen) {
        let url = format!("http://{address}/readyz");
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => return ExitCode::SUCCESS,
            // An answer is the service's word: no other address is asked.
            Ok(response) => {
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let code = body["code"].as_str().unwrap_or("-");
                eprintln!("approvals: {url}: not ready: {status} {code}");
                return ExitCode::FAILURE;
            }
            Err(error) => eprintln!("approvals: {url}: no answer: {error}"),
        }
    }
    ExitCode::FAILURE
}

/// Where to reach a listener from the same host, in the order to try: an unspecified address
/// (`0.0.0.0`, `::`) listens on loopback too. `::` is asked on 127.0.0.1 first: it takes IPv4
/// too (unless the host binds IPv6 only), and on an IPv4-only network Docker removes `::1`
/// from the container's loopback, where a probe of `::1` alone failed a working service.
fn reachable(listen: SocketAddr) -> Vec<SocketAddr> {
    let port = listen.port();
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)]
        }
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ],
        _ => vec![listen],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_probed_on_loopback() {
        let probe = |listen: &str| {
            reachable(listen.parse().unwrap())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe("[::]:8081"), "127.0.0.1:8081 [::1]:8081");
        assert_eq!(probe("10.1.2.3:9000"), "10.1.2.3:9000");
    }
}
