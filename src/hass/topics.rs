//! Topic naming: the one module that knows where everything is published.

/// Topic layout shared by discovery and the bridge.
#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    /// `base` with '/' replaced, used as the discovery node id.
    pub node: String,
}

impl Topics {
    pub fn new(base: &str, discovery_prefix: &str) -> Topics {
        Topics {
            base: base.to_string(),
            discovery_prefix: discovery_prefix.to_string(),
            node: base.replace('/', "_"),
        }
    }
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }
    /// A cluster instance's own retained state (its last will: `offline`).
    pub fn instance_state(&self, instance: &str) -> String {
        format!("{}/bridge/{instance}/state", self.base)
    }
    /// A cluster instance's `bridge/info`.
    pub fn instance_info(&self, instance: &str) -> String {
        format!("{}/bridge/{instance}/info", self.base)
    }
    /// Where a cluster instance's heartbeats go (not retained).
    pub fn instance_beat(&self, instance: &str) -> String {
        format!("{}/bridge/{instance}/beat", self.base)
    }
    /// What every cluster instance listens to: the others' states and heartbeats, the
    /// vehicles' owners and results, the cluster-wide state.
    pub fn cluster_filters(&self) -> [String; 5] {
        let base = &self.base;
        [
            format!("{base}/bridge/+/state"),
            format!("{base}/bridge/+/beat"),
            format!("{base}/+/owner"),
            format!("{base}/+/command/result"),
            format!("{base}/bridge/state"),
        ]
    }
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
    pub fn command_filter(&self) -> String {
        format!("{}/+/+/set", self.base)
    }
    pub fn vehicle(&self, vehicle: &str, leaf: &str) -> String {
        format!("{}/{vehicle}/{leaf}", self.base)
    }
    /// Every retained discovery config of ours: `<prefix>/+/<node>/+/config`.
    pub fn our_configs_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.discovery_prefix, self.node)
    }

    /// The object id of one of our discovery topics.
    pub fn config_object_id<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(&self.discovery_prefix)?
            .strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (_component, node, object, leaf) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (node == self.node && leaf == "config" && parts.next().is_none()).then_some(object)
    }

    pub fn discovery(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.discovery_prefix, self.node
        )
    }
    pub(crate) fn bridge_device_id(&self) -> String {
        format!("v2m_bridge_{}", self.node)
    }
}
