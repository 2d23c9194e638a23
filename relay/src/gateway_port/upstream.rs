//! Upstream DNS for the VMs' non-local names, with hickory-resolver: the system's
//! resolv.conf, or the servers given with `--dns-upstream`.

use std::net::SocketAddr;

use dns::{UpstreamQuery, UpstreamResult};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

#[derive(Clone)]
pub(crate) struct Upstream {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

impl Upstream {
    pub(crate) fn new(servers: &[SocketAddr]) -> anyhow::Result<Upstream> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                anyhow::anyhow!("cannot read the system DNS configuration ({e}); give servers with --dns-upstream IP:PORT")
            })?
        } else {
            TokioResolver::builder_with_config(
                crate::shared::dns_servers::resolver_config(servers),
                TokioRuntimeProvider::default(),
            )
        };
        // The dns core caches by TTL itself; a second cache would only hide upstream.
        builder.options_mut().cache_size = 0;
        // Names arrive absolute from the dns core: no search list, no hosts file.
        builder.options_mut().ndots = 0;
        builder.options_mut().use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        Ok(Upstream {
            resolver: builder
                .build()
                .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?,
        })
    }

    pub(crate) async fn resolve(&self, query: &UpstreamQuery) -> UpstreamResult {
        self.lookup(query.name.clone(), query.record_type).await
    }

    /// One question, as the dns core or DNS over HTTPS (`http/doh.rs`) asks it.
    pub(crate) async fn lookup(
        &self,
        name: hickory_proto::rr::Name,
        record_type: hickory_proto::rr::RecordType,
    ) -> UpstreamResult {
        match self.resolver.lookup(name.clone(), record_type).await {
            Ok(lookup) => UpstreamResult::Answer {
                records: lookup.answers().to_vec(),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => UpstreamResult::NoRecords {
                response_code: no_records.response_code,
                negative_ttl: no_records.negative_ttl,
            },
            Err(error) => {
                tracing::debug!("upstream DNS for {name} failed: {error}");
                UpstreamResult::Failed
            }
        }
    }
}
