//! A TCP proxy between jobhook and its database, with a switch: `cut` ends every connection
//! through it and then either refuses new ones (each is accepted and closed at once, as a
//! database going away does) or holds them without a word (as a network that drops every
//! packet does); `restore` lets connections through again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy does with a new connection while cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Closes it at once.
    Refuse,
    /// Keeps it open and never answers (until restored, when it is closed).
    Silence,
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    links: Arc<Mutex<Links>>,
    accepting: JoinHandle<()>,
}

/// One lock for the switch and the connections, so none slips past a cut.
#[derive(Default)]
struct Links {
    cut: Option<Cut>,
    through: Vec<AbortHandle>,
    held: Vec<TcpStream>,
    refused: usize,
}

impl TcpProxy {
    /// Proxies `127.0.0.1:<port>` to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Links>> = Arc::default();
        let accepting = tokio::spawn({
            let links = links.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut links = links.lock().unwrap();
                    match links.cut {
                        Some(Cut::Refuse) => {
                            links.refused += 1;
                            drop(client);
                        }
                        Some(Cut::Silence) => {
                            links.refused += 1;
                            links.held.push(client);
                        }
                        None => {
                            let upstream = upstream.clone();
                            let link = tokio::spawn(async move {
                                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                                    return;
                                };
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            });
                            links.through.retain(|link| !link.is_finished());
                            links.through.push(link.abort_handle());
                        }
                    }
                }
            }
        });
        TcpProxy {
            addr,
            links,
            accepting,
        }
    }

    /// Ends every connection; new ones are treated as `how` says.
    pub fn cut(&self, how: Cut) {
        let mut links = self.links.lock().unwrap();
        links.cut = Some(how);
        for link in links.through.drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again (and closes those held while silent).
    pub fn restore(&self) {
        let mut links = self.links.lock().unwrap();
        links.cut = None;
        links.held.clear();
    }

    /// Connections refused or held since the proxy started.
    pub fn refused(&self) -> usize {
        self.links.lock().unwrap().refused
    }

    /// `url` (`postgres://user@host:port/db`) through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"));
        format!(
            "{scheme}://{}{}/{path}",
            user.unwrap_or_default(),
            self.addr
        )
    }
}

/// The `host:port` a `postgres://` URL names.
pub fn upstream_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    authority.rsplit('@').next().unwrap().to_owned()
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut(Cut::Refuse);
        self.links.lock().unwrap().held.clear();
    }
}
