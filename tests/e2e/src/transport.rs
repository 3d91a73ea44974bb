//! How a test's Envoy reaches the agent: loopback TCP (the shipped default),
//! a Unix domain socket, or mutual TLS with the shipped
//! `deploy/envoy/mtls/ext-proc-cluster.yaml` and certificates made here with
//! the `openssl` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_yaml::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExtProcTransport {
    #[default]
    Tcp,
    Unix,
    MutualTls,
}

/// PEM files of a throwaway CA, the agent's server certificate (SAN
/// `steer-agent.steer-system.svc`, as the shipped cluster expects) and a
/// client certificate for Envoy, all signed by the CA.
#[derive(Clone, Debug)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub const AGENT_SAN: &str = "steer-agent.steer-system.svc";

impl TestCerts {
    /// Makes a CA and two certificates under `dir` (`prefix` keeps several
    /// sets apart).
    pub fn make(dir: &Path, prefix: &str) -> Result<Self> {
        let p = |name: &str| dir.join(format!("{prefix}{name}"));
        let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let (ca, ca_key) = (p("ca.crt"), p("ca.key"));
        openssl(
            &[&["req", "-x509", "-nodes", "-days", "2"][..], &curve[..]].concat(),
            &[
                ("-keyout", &ca_key),
                ("-out", &ca),
                ("-subj", Path::new("/CN=steer-test-ca")),
            ],
        )?;
        let sign = |name: &str, ext: &str| -> Result<(PathBuf, PathBuf)> {
            let (crt, key, csr, extfile) = (
                p(&format!("{name}.crt")),
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext)?;
            let subj = PathBuf::from(format!("/CN=steer-test-{name}"));
            openssl(
                &[&["req", "-nodes"][..], &curve[..]].concat(),
                &[("-keyout", &key), ("-out", &csr), ("-subj", &subj)],
            )?;
            openssl(
                &["x509", "-req", "-days", "2", "-CAcreateserial"],
                &[
                    ("-in", &csr),
                    ("-CA", &ca),
                    ("-CAkey", &ca_key),
                    ("-out", &crt),
                    ("-extfile", &extfile),
                ],
            )?;
            Ok((crt, key))
        };
        let (server_cert, server_key) = sign(
            "server",
            &format!("subjectAltName=DNS:{AGENT_SAN},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        )?;
        let (client_cert, client_key) = sign(
            "client",
            "subjectAltName=DNS:envoy.test\nextendedKeyUsage=clientAuth\n",
        )?;
        Ok(Self {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// The agent flags that serve mutual TLS with these files.
    pub fn agent_args(&self) -> Vec<String> {
        [
            ("--ext-proc-tls-cert", &self.server_cert),
            ("--ext-proc-tls-key", &self.server_key),
            ("--ext-proc-tls-client-ca", &self.ca),
        ]
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

fn openssl(args: &[&str], paths: &[(&str, &Path)]) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Points the `steer_ext_proc` cluster at a Unix socket (`pipe` address).
pub fn use_unix_socket(doc: &mut Value, path: &Path) -> Result<()> {
    let mut pipe = serde_yaml::Mapping::new();
    pipe.insert("path".into(), path.display().to_string().into());
    for address in endpoint_addresses(crate::envoy::cluster_mut(doc, "steer_ext_proc")?)? {
        let mut wrapped = serde_yaml::Mapping::new();
        wrapped.insert("pipe".into(), Value::Mapping(pipe.clone()));
        *address = Value::Mapping(wrapped);
    }
    Ok(())
}

/// Replaces the `steer_ext_proc` cluster with the shipped mutual-TLS one,
/// rendered for this run: the agent's address and these certificate files.
pub fn use_mutual_tls(doc: &mut Value, agent: SocketAddr, certs: &TestCerts) -> Result<()> {
    let path = crate::envoy::workspace_root().join("deploy/envoy/mtls/ext-proc-cluster.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut cluster: Value = serde_yaml::from_str(&text)?;
    for address in endpoint_addresses(&mut cluster)? {
        crate::envoy::set_address(address, agent)?;
    }
    let files: [(&[&str], &PathBuf); 3] = [
        (
            &["tls_certificates", "0", "certificate_chain"],
            &certs.client_cert,
        ),
        (&["tls_certificates", "0", "private_key"], &certs.client_key),
        (&["validation_context", "trusted_ca"], &certs.ca),
    ];
    for (path, file) in files {
        let mut node = &mut cluster["transport_socket"]["typed_config"]["common_tls_context"];
        for key in path {
            node = match key.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*key],
            };
        }
        ensure!(
            node.get("filename").is_some(),
            "shipped mTLS cluster: no {path:?}.filename"
        );
        node["filename"] = file.display().to_string().into();
    }
    *crate::envoy::cluster_mut(doc, "steer_ext_proc")? = cluster;
    Ok(())
}

pub(crate) fn endpoint_addresses(cluster: &mut Value) -> Result<Vec<&mut Value>> {
    let groups = cluster
        .get_mut("load_assignment")
        .and_then(|l| l.get_mut("endpoints"))
        .and_then(Value::as_sequence_mut)
        .context("steer_ext_proc endpoints")?;
    let mut out = Vec::new();
    for group in groups {
        for ep in group
            .get_mut("lb_endpoints")
            .and_then(Value::as_sequence_mut)
            .context("lb_endpoints")?
        {
            out.push(
                ep.get_mut("endpoint")
                    .and_then(|e| e.get_mut("address"))
                    .context("endpoint address")?,
            );
        }
    }
    Ok(out)
}

/// Sets the `steer_ext_proc` cluster's HTTP/2 stream bound (the shipped files
/// match the agent's default `--max-streams-per-connection`).
pub fn set_max_streams_per_connection(doc: &mut Value, n: u32) -> Result<()> {
    let h2 = &mut crate::envoy::cluster_mut(doc, "steer_ext_proc")?["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]["http2_protocol_options"];
    ensure!(
        h2.get("max_concurrent_streams").is_some(),
        "shipped steer_ext_proc cluster has no max_concurrent_streams"
    );
    h2["max_concurrent_streams"] = u64::from(n).into();
    Ok(())
}
