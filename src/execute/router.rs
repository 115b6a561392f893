//! Routers: how traffic reaches the active slot. `proxy` is the built-in reverse proxy
//! (an atomic pointer swap); `nginx` rewrites the user's upstream block, tests and
//! reloads nginx (`nginx.rs`). Both remember the current target so the guard and the
//! signal sources know which release serves.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::nginx;
use crate::config::{NginxConfig, Slots};
use crate::proxy::{Proxy, Target};

/// nginx answers from old workers for a moment after `nginx -s reload` returns (its
/// master starts new workers, then retires the old ones; about 100-200 ms on an idle
/// host, longer on a busy one): verification waits this long after a switch so it
/// judges the new slot, not the old one.
pub const NGINX_SETTLE: Duration = Duration::from_millis(1000);

#[derive(Clone)]
pub enum Router {
    Proxy(Proxy),
    Nginx(Arc<NginxRouter>),
    /// Router `none`: users reach the one published container directly; a "switch"
    /// only records which release that is (the container replace is the switch).
    Direct(Arc<ArcSwapOption<Target>>),
}

pub struct NginxRouter {
    pub site: nginx::SiteConfig,
    pub slots: Slots,
    target: ArcSwapOption<Target>,
}

impl NginxRouter {
    pub fn new(cfg: &NginxConfig, slots: Slots, state_file: std::path::PathBuf) -> Self {
        let mut site = nginx::SiteConfig::new(cfg.site.clone(), cfg.upstream.clone(), state_file);
        site.test_command = cfg.test_command.clone();
        site.reload_command = cfg.reload_command.clone();
        NginxRouter {
            site,
            slots,
            target: ArcSwapOption::empty(),
        }
    }
}

impl Router {
    /// The target new requests go to.
    pub fn target(&self) -> Option<Arc<Target>> {
        match self {
            Router::Proxy(p) => p.target(),
            Router::Nginx(n) => n.target.load_full(),
            Router::Direct(t) => t.load_full(),
        }
    }

    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            Router::Proxy(p) => Some(p),
            Router::Nginx(_) | Router::Direct(_) => None,
        }
    }

    /// Sends new requests to `target`; returns the target it replaced. For nginx this
    /// rewrites the site file, runs `nginx -t` and the reload; on failure the previous
    /// file is back and nginx's words are in the error.
    pub async fn switch(&self, target: Target) -> Result<Option<Arc<Target>>, String> {
        match self {
            Router::Proxy(p) => Ok(p.switch(Some(target))),
            Router::Direct(t) => Ok(t.swap(Some(Arc::new(target)))),
            Router::Nginx(n) => {
                let sw = nginx::Switch {
                    active: target.addr.to_string(),
                    standby: Some(n.slots.addr(target.slot.other()).to_string()),
                };
                let n2 = n.clone();
                tokio::task::spawn_blocking(move || nginx::switch(&n2.site, &sw))
                    .await
                    .map_err(|e| format!("the nginx switch task failed: {e}"))?
                    .map_err(|e| format!("{e:#}"))?;
                Ok(n.target.swap(Some(Arc::new(target))))
            }
        }
    }

    /// Sends new requests nowhere (the built-in proxy answers 503 itself) while the
    /// app is down on purpose (a database restore). nginx keeps its upstream block: it
    /// answers 502 until the next switch.
    pub fn clear(&self) {
        match self {
            Router::Proxy(p) => {
                p.switch(None);
            }
            Router::Direct(t) => t.store(None),
            Router::Nginx(_) => {}
        }
    }

    /// Waits until a switch has surely taken effect for new connections.
    pub async fn settle(&self) {
        if let Router::Nginx(_) = self {
            tokio::time::sleep(NGINX_SETTLE).await;
        }
    }
}
