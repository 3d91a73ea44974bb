//! Where the ext_proc server listens: a TCP address or a Unix domain socket,
//! optionally with mutual TLS.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// `IP:PORT` or `unix:/path/to.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("unix socket path must be absolute: {path:?}"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        s.parse().map(Self::Tcp).map_err(|_| {
            format!(
                "expected IP:PORT or unix:/absolute/path, got {}",
                crate::excerpt::excerpt(s)
            )
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Reachable from other hosts: any TCP address that is not loopback.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Tcp(addr) if !addr.ip().is_loopback())
    }
}

/// Certificate, key and client CA for mutual TLS, all PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error(
        "mutual TLS needs all of --ext-proc-tls-cert, --ext-proc-tls-key and --ext-proc-tls-client-ca"
    )]
    IncompleteTls,
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: ListenAddr,
        source: std::io::Error,
    },
}

impl TlsFiles {
    /// All three paths, or none (no TLS); anything in between is an error.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, ListenError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            _ => Err(ListenError::IncompleteTls),
        }
    }

    /// A server config that requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, ListenError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ListenError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .client_ca_root(Certificate::from_pem(read(&self.client_ca)?)))
    }
}

/// Binds a Unix socket at `path`: a stale socket from an earlier run is
/// replaced, any other file is left alone. The socket is made connectable by
/// every user: who can reach it is decided by the directory it lives in.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ListenError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bind_error = |source| ListenError::Bind {
        addr: ListenAddr::Unix(path.to_owned()),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(bind_error)?
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bind_error)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix() {
        assert_eq!(
            "127.0.0.1:9002".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:9002".parse().unwrap()))
        );
        let unix: ListenAddr = "unix:/run/steer/ext_proc.sock".parse().unwrap();
        assert_eq!(unix.to_string(), "unix:/run/steer/ext_proc.sock");
        assert!(!unix.is_remote());
        assert!("unix:relative.sock".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!("0.0.0.0:9002".parse::<ListenAddr>().unwrap().is_remote());
        assert!(!"[::1]:9002".parse::<ListenAddr>().unwrap().is_remote());
    }

    #[test]
    fn tls_needs_all_three_files() {
        let p = || Some(PathBuf::from("/x"));
        assert!(TlsFiles::from_parts(None, None, None).unwrap().is_none());
        assert!(TlsFiles::from_parts(p(), p(), p()).unwrap().is_some());
        assert!(matches!(
            TlsFiles::from_parts(p(), p(), None),
            Err(ListenError::IncompleteTls)
        ));
    }

    #[test]
    fn unix_socket_replaces_stale_socket_not_files() {
        let dir = std::env::temp_dir().join(format!("steer-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"keep").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                bind_unix(&file),
                Err(ListenError::NotASocket { .. })
            ));
            let sock = dir.join("s.sock");
            drop(bind_unix(&sock).unwrap());
            // The socket file stays after the listener is gone: rebinding works.
            drop(bind_unix(&sock).unwrap());
        });
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
