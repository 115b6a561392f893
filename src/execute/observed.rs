//! What signal sources may read about a service: the router's target and a copy of
//! each slot. `signals/` defines the narrow traits and `execute/` implements them here,
//! so observation never names action. Reading only: nothing here changes a slot, but
//! noting a container's exit the engine reported.

use super::{Router, ServiceExec, SlotProc};
use crate::config::Slot;
use crate::docker::Engine;
use crate::signals::{
    Containers, PodTermination, Pods, Serving, SlotSource, SlotView, Targets, Unit,
};

impl Targets for Router {
    fn serving(&self) -> Option<Serving> {
        self.target().map(|t| Serving {
            release_id: t.release_id,
            slot: t.slot,
            version: t.version.clone(),
        })
    }
}

impl SlotSource for ServiceExec {
    fn service(&self) -> &str {
        &self.cfg.name
    }

    fn slots(&self) -> Vec<SlotView> {
        ServiceExec::slots(self)
            .into_iter()
            .map(|(slot, sp)| view(slot, &sp))
            .collect()
    }
}

impl Containers for ServiceExec {
    async fn engine(&self) -> Result<Engine, String> {
        ServiceExec::engine(self)
            .await
            .cloned()
            .map_err(|e| e.to_string())
    }

    fn mark_exited(&self, container_id: &str, how: String, oom: bool) {
        let slots = ServiceExec::slots(self);
        let handle = slots
            .values()
            .filter_map(|sp| sp.container.as_ref())
            .find(|c| c.id == container_id);
        if let Some(handle) = handle {
            handle.mark_exited(how, oom);
        }
    }
}

impl Pods for ServiceExec {
    async fn terminations(&self) -> Result<Vec<PodTermination>, String> {
        let Some(active) = self.router.target().map(|t| t.release_id) else {
            return Ok(Vec::new());
        };
        self.kube_terminations(active)
            .await
            .map_err(|e| e.to_string())
    }
}

fn view(slot: Slot, sp: &SlotProc) -> SlotView {
    let unit = match (&sp.proc, &sp.container) {
        // Exited is read before stopping: a stop sets `stopping` before it signals, so
        // an exit seen here with `stopping` unset was not asked for.
        (Some(p), _) => {
            let exited = p.exited().map(|s| s.to_string());
            Unit::Process {
                pid: p.pid,
                exited,
                stopping: p.stopping(),
                oom_killed: p.oom_killed(),
            }
        }
        (None, Some(c)) => {
            let exited = c.exited();
            Unit::Container {
                id: c.id.clone(),
                exited,
                stopping: c.stopping(),
            }
        }
        (None, None) => Unit::External,
    };
    SlotView {
        slot,
        release_id: sp.release.id,
        running: sp.running(),
        unit,
    }
}
