//! The gRPC health prober and log streamer: dials a service's Envoy inbound listener over mutual
//! TLS (tonic + rustls/aws-lc) with the control-plane client certificate, trusting only the
//! project CA and verifying the server certificate names `<svc>`, then calls the agent's
//! `HealthCheck` / `StreamLogs` through it.
//!
//! [`GrpcProber::check`] retries with exponential backoff (plus jitter) until the target's
//! deadline: SERVING returns at once, NOT_SERVING (a definitive answer from the agent: the entry
//! exited non-zero or failed to start) returns at once with the exit code and detail, anything
//! else (refused connection, TLS failure, Envoy 503 while the agent starts, UNKNOWN) is retried
//! and reported as UNREACHABLE (or UNKNOWN) with the last reason when the deadline passes.

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use iac_core::{
    CertPaths, HealthProber, HealthReport, HealthState, LogLine, LogQuery, LogStreamer, ProbeError,
    ProbeTarget,
};
use iac_proto::{ControlPlaneClient, HealthStatusCode, LogRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// `[probe]` configuration: timing of one attempt and of the backoff between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeConfig {
    /// First pause between attempts (`"100ms"`), and the pause while the agent answers that the
    /// app is still starting (asked again over the same connection).
    #[serde(with = "iac_core::duration")]
    pub initial_backoff: Duration,
    /// Longest pause between attempts (the pause doubles up to this).
    #[serde(with = "iac_core::duration")]
    pub max_backoff: Duration,
    /// TCP connect + TLS handshake limit per attempt.
    #[serde(with = "iac_core::duration")]
    pub connect_timeout: Duration,
    /// Whole-RPC limit per attempt (HealthCheck).
    #[serde(with = "iac_core::duration")]
    pub rpc_timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(3),
        }
    }
}

/// Probes agents through their Envoy. Holds the client identity in memory (never printed).
#[derive(Clone)]
pub struct GrpcProber {
    ca: Certificate,
    identity: Identity,
    config: ProbeConfig,
}

impl std::fmt::Debug for GrpcProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcProber")
            .field("identity", &crate::secret::REDACTED)
            .field("config", &self.config)
            .finish()
    }
}

/// Installs the aws-lc rustls crypto provider as the process default, once. Needed because some
/// crate in the tree may enable rustls' `ring` feature, and then rustls cannot pick one itself.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that one is used then.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

impl GrpcProber {
    /// A prober using the control-plane identity at `client` (from [`iac_core::Pki::client_identity`]):
    /// `client.ca` is the only trust root, `client.cert`/`client.key` the client certificate.
    pub fn new(client: &CertPaths, config: ProbeConfig) -> Result<GrpcProber, ProbeError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| ProbeError::Tls(format!("cannot read {}: {e}", p.display())))
        };
        GrpcProber::from_pem(
            &read(&client.ca)?,
            &read(&client.cert)?,
            &read(&client.key)?,
            config,
        )
    }

    /// A prober from PEM bytes (CA bundle, client certificate chain, client key).
    pub fn from_pem(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
        config: ProbeConfig,
    ) -> Result<GrpcProber, ProbeError> {
        install_crypto_provider();
        for (what, bytes) in [("CA", ca), ("client certificate", cert)] {
            if !String::from_utf8_lossy(bytes).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ProbeError::Tls(format!(
                    "the {what} is not a PEM certificate"
                )));
            }
        }
        if !String::from_utf8_lossy(key).contains("PRIVATE KEY-----") {
            return Err(ProbeError::Tls(
                "the client key is not a PEM private key".into(),
            ));
        }
        Ok(GrpcProber {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            config,
        })
    }

    /// The `[probe]` settings it was made with.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// One connection to `target` (TLS verified for the service's name).
    pub async fn connect(
        &self,
        target: &ProbeTarget,
        connect_timeout: Duration,
    ) -> Result<ControlPlaneClient<Channel>, ProbeError> {
        let addr = target.addr.to_string();
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(target.service.as_str())
            .timeout(connect_timeout);
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| ProbeError::Connect {
                addr: addr.clone(),
                message: format!("invalid endpoint: {e}"),
            })?
            .tls_config(tls)
            .map_err(|e| ProbeError::Tls(chain(&e)))?
            .connect_timeout(connect_timeout);
        let channel = endpoint.connect().await.map_err(|e| classify(&addr, &e))?;
        Ok(ControlPlaneClient::new(channel))
    }

    /// One attempt: HealthCheck over `conn` (connecting first when there is none). Ok = the
    /// agent answered. A failed attempt drops the connection, so the next one dials afresh;
    /// a good one leaves it for the next attempt (no new TLS handshake per poll).
    async fn attempt(
        &self,
        target: &ProbeTarget,
        budget: Duration,
        conn: &mut Option<ControlPlaneClient<Channel>>,
    ) -> Result<iac_proto::HealthStatus, ProbeError> {
        let r = self.attempt_on(target, budget, conn).await;
        if r.is_err() {
            *conn = None;
        }
        r
    }

    async fn attempt_on(
        &self,
        target: &ProbeTarget,
        budget: Duration,
        conn: &mut Option<ControlPlaneClient<Channel>>,
    ) -> Result<iac_proto::HealthStatus, ProbeError> {
        let connect_timeout = budget.min(self.config.connect_timeout);
        let rpc_timeout = budget.min(self.config.rpc_timeout);
        let client = match conn {
            Some(c) => c,
            None => conn.insert(self.connect(target, connect_timeout).await?),
        };
        let mut req = tonic::Request::new(());
        req.set_timeout(rpc_timeout);
        match tokio::time::timeout(rpc_timeout, client.health_check(req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(rpc_error(&status)),
            Err(_) => Err(ProbeError::Rpc {
                code: "DeadlineExceeded".into(),
                message: format!("no answer within {rpc_timeout:?}"),
            }),
        }
    }
}

#[async_trait]
impl HealthProber for GrpcProber {
    async fn check(&self, target: &ProbeTarget) -> HealthReport {
        let start = Instant::now();
        let deadline = start + target.deadline;
        let mut backoff = self.config.initial_backoff.max(Duration::from_millis(1));
        let max_backoff = self.config.max_backoff.max(backoff);
        let mut attempts = 0u32;
        let mut conn = None;
        // The agent's last answer (uptime, ports) travels with every verdict, also a timeout's.
        let mut last_status: Option<iac_proto::HealthStatus> = None;
        let report = |state,
                      exit_code,
                      detail: String,
                      attempts,
                      status: &Option<iac_proto::HealthStatus>| {
            let mut r =
                HealthReport::new(target.service.clone(), state, exit_code, detail, attempts);
            if let Some(st) = status {
                agent_facts(&mut r, st);
            }
            r
        };
        loop {
            attempts += 1;
            // Every attempt gets at least a short budget so a zero deadline still tries once.
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(200));
            let mut answered = false;
            let last = match self.attempt(target, budget, &mut conn).await {
                Ok(status) => {
                    let code = HealthStatusCode::try_from(status.status);
                    let (exit_code, detail) = (status.exit_code, status.detail.clone());
                    last_status = Some(status);
                    match code {
                        Ok(HealthStatusCode::Serving) => {
                            return report(
                                HealthState::Serving,
                                exit_code,
                                detail,
                                attempts,
                                &last_status,
                            );
                        }
                        Ok(HealthStatusCode::NotServing) => {
                            return report(
                                HealthState::NotServing,
                                exit_code,
                                detail,
                                attempts,
                                &last_status,
                            );
                        }
                        _ => {
                            answered = true;
                            (
                                HealthState::Unknown,
                                exit_code,
                                format!("agent reports UNKNOWN: {detail}"),
                            )
                        }
                    }
                }
                Err(e) => (HealthState::Unreachable, None, e.to_string()),
            };
            let now = Instant::now();
            if now >= deadline {
                let (state, code, why) = last;
                let detail = format!(
                    "{why} (after {attempts} attempts in {:.1?})",
                    start.elapsed()
                );
                return report(state, code, detail, attempts, &last_status);
            }
            tracing::debug!(service = %target.service, attempt = attempts, reason = %last.2, "health probe retrying");
            // An agent that answers "starting" is asked again at the short interval (over the
            // same connection, so a poll costs one RPC): the app's port is checked on every ask,
            // and a longer pause would only add to the deploy. Anything else backs off.
            let pause = if answered {
                backoff = self.config.initial_backoff.max(Duration::from_millis(1));
                jitter(backoff)
            } else {
                let p = jitter(backoff);
                backoff = (backoff * 2).min(max_backoff);
                p
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }
}

#[async_trait]
impl LogStreamer for GrpcProber {
    async fn stream(
        &self,
        target: &ProbeTarget,
        query: LogQuery,
    ) -> Result<BoxStream<'static, Result<LogLine, ProbeError>>, ProbeError> {
        let connect_timeout = self.config.connect_timeout;
        let mut client = self.connect(target, connect_timeout).await?;
        let req = LogRequest {
            service: target.service.to_string(),
            follow: query.follow,
            tail: query.tail,
        };
        let stream = client
            .stream_logs(req)
            .await
            .map_err(|s| rpc_error(&s))?
            .into_inner();
        let service = target.service.clone();
        Ok(stream
            .map(move |item| {
                item.map(|l| LogLine {
                    service: service.clone(),
                    ts: l.ts,
                    stream: l.stream,
                    msg: l.msg,
                })
                .map_err(|s| rpc_error(&s))
            })
            .boxed())
    }
}

/// Copies what the agent saw (uptime, listening ports, the declared app port, forwarding) into `r`. Ports
/// outside 1-65535 (a broken agent) are dropped.
fn agent_facts(r: &mut HealthReport, st: &iac_proto::HealthStatus) {
    // 0 is what an agent that predates the field sends (proto3 default): not reported.
    r.uptime_ms = Some(st.uptime_ms).filter(|&ms| ms > 0);
    r.listening_ports = st
        .listening_ports
        .iter()
        .filter_map(|&p| u16::try_from(p).ok().filter(|&p| p != 0))
        .collect();
    r.app_port = u16::try_from(st.app_port).ok().filter(|&p| p != 0);
    r.forwarded_to = u16::try_from(st.forwarded_to).ok().filter(|&p| p != 0);
    r.restarts = st.restarts.as_ref().map(restarts_from_proto);
}

/// The agent's restart record as the control plane reports it (empty strings and zeros: absent).
fn restarts_from_proto(r: &iac_proto::Restarts) -> iac_core::Restarts {
    let waiting = r.backoff_ms > 0;
    iac_core::Restarts {
        count: r.count,
        last_exit: Some(r.last_exit.clone()).filter(|s| !s.is_empty()),
        last_exit_code: r.last_exit_code,
        last_exit_at: Some(r.last_exit_at.clone()).filter(|s| !s.is_empty()),
        backoff_ms: waiting.then_some(r.backoff_ms),
        restart_in_ms: waiting.then_some(r.restart_in_ms),
    }
}

/// ±25 % so many probes started together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

fn rpc_error(status: &tonic::Status) -> ProbeError {
    let mut message = status.message().to_string();
    if let Some(src) = std::error::Error::source(status) {
        let detail = chain(src);
        if !detail.is_empty() && !message.contains(&detail) {
            message = if message.is_empty() {
                detail
            } else {
                format!("{message}: {detail}")
            };
        }
    }
    if tls_in_chain(status) {
        return ProbeError::Tls(message);
    }
    ProbeError::Rpc {
        code: format!("{:?}", status.code()),
        message,
    }
}

/// A transport error as Connect or Tls, with its whole cause chain.
fn classify(addr: &str, e: &(dyn std::error::Error + 'static)) -> ProbeError {
    let message = chain(e);
    if tls_in_chain(e) {
        ProbeError::Tls(format!("{addr}: {message}"))
    } else {
        ProbeError::Connect {
            addr: addr.to_string(),
            message,
        }
    }
}

/// Whether a rustls error is somewhere in the cause chain (directly or inside an io::Error).
fn tls_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// "outer: inner: innermost", skipping repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_facts_carry_uptime_and_ports() {
        let mut r = HealthReport::new(
            iac_core::ServiceName::new("web").unwrap(),
            HealthState::Unknown,
            None,
            "starting".into(),
            2,
        );
        let st = iac_proto::HealthStatus {
            status: HealthStatusCode::Unknown as i32,
            exit_code: None,
            detail: "starting".into(),
            uptime_ms: 1500,
            listening_ports: vec![5000, 0, 70000, 5001],
            app_port: 8080,
            forwarded_to: 0,
            restarts: None,
        };
        agent_facts(&mut r, &st);
        assert_eq!(
            r.restarts, None,
            "an agent that never restarted says nothing"
        );
        assert_eq!(r.uptime_ms, Some(1500));
        assert_eq!(r.listening_ports, [5000, 5001], "0 and >65535 are dropped");
        assert_eq!(r.app_port, Some(8080));
        assert!(r.port_warning().unwrap().contains("5000, 5001"));
        assert_eq!(r.forwarded_to, None, "0 = no forwarding");
        agent_facts(
            &mut r,
            &iac_proto::HealthStatus {
                forwarded_to: 5000,
                ..st.clone()
            },
        );
        assert_eq!(r.forwarded_to, Some(5000));
        agent_facts(
            &mut r,
            &iac_proto::HealthStatus {
                app_port: 0,
                ..st.clone()
            },
        );
        assert_eq!(r.app_port, None, "0 = no declared port");
        let waiting = iac_proto::Restarts {
            count: 2,
            last_exit: "killed by signal 9".into(),
            last_exit_code: Some(137),
            last_exit_at: "2026-12-07T03:00:00.000Z".into(),
            backoff_ms: 20_000,
            restart_in_ms: 7_500,
        };
        agent_facts(
            &mut r,
            &iac_proto::HealthStatus {
                restarts: Some(waiting.clone()),
                ..st.clone()
            },
        );
        let got = r.restarts.clone().unwrap();
        assert_eq!(got.count, 2);
        assert_eq!(got.last_exit.as_deref(), Some("killed by signal 9"));
        assert_eq!(got.last_exit_code, Some(137));
        assert_eq!(
            (got.backoff_ms, got.restart_in_ms),
            (Some(20_000), Some(7_500))
        );
        agent_facts(
            &mut r,
            &iac_proto::HealthStatus {
                restarts: Some(iac_proto::Restarts {
                    backoff_ms: 0,
                    restart_in_ms: 0,
                    ..waiting
                }),
                ..st
            },
        );
        let got = r.restarts.unwrap();
        assert_eq!(
            (got.backoff_ms, got.restart_in_ms),
            (None, None),
            "running again"
        );
    }
}
