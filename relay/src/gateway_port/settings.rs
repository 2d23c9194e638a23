//! A LAN's network settings beyond the config file: what a teacher set through the admin
//! API (`PUT /admin/lans/NAME/settings`, any key of `[lans.NAME]`: subnet, MTU, DNS domain,
//! static leases with their DNS names), and the MTU the join that creates a LAN asked for
//! (`ws://HOST/lan/NAME?mtu=65520`, for virtio guests). Both apply when the LAN's gateway
//! starts, i.e. for the joins after it (a live LAN keeps its settings until it is closed or
//! goes idle). Precedence, last wins: `[network]`, `[lans.NAME]`, the first join's MTU
//! (only when the config names no MTU for the LAN), the teacher's settings.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{Config, NetworkConfig, NetworkTables};
use crate::shared::LanName;

/// LANs remembered with settings, and pending first-join MTUs: both grow only by calls
/// that are authorised (settings) or cheap and replaced per LAN (MTUs), but stay bounded.
const MAX_LANS: usize = 4096;
/// The MTU range a LAN may have: the IPv4 minimum to virtio's largest useful MTU.
pub(crate) const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=65520;
/// Keys a teacher may not set at runtime: bandwidth is the operator's (config file).
const OPERATOR_KEYS: [&str; 3] = ["port_rate", "lan_rate", "gateway_enabled"];

#[derive(Debug, Default)]
pub(crate) struct LanSettings {
    teacher: Mutex<BTreeMap<LanName, toml::Table>>,
    join_mtu: Mutex<BTreeMap<LanName, u16>>,
    /// The settings each live gateway started with, for `/admin/lans`.
    running: Mutex<BTreeMap<LanName, serde_json::Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The frames a LAN's MTU needs must pass `limits.max_frame_size`.
fn check_mtu(config: &Config, mtu: u16) -> Result<(), String> {
    if !MTU_RANGE.contains(&mtu) {
        return Err(format!(
            "mtu {mtu} is outside {}..={}; use 1500 (any NIC) or 65520 (virtio)",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        ));
    }
    let frame = usize::from(mtu) + 14;
    if frame > config.limits.max_frame_size {
        return Err(format!(
            "mtu {mtu} needs {frame}-byte frames but limits.max_frame_size is {}; raise it or use a smaller MTU",
            config.limits.max_frame_size
        ));
    }
    Ok(())
}

impl LanSettings {
    /// The tables as they apply to `lan` now (without consuming a pending join MTU).
    fn tables(&self, config: &Config, lan: &LanName, join_mtu: Option<u16>) -> NetworkTables {
        let mut tables = config.network_tables();
        let mut overrides = tables.lans.remove(lan.as_str()).unwrap_or_default();
        if let Some(mtu) = join_mtu
            && !overrides.contains_key("mtu")
            && !tables.defaults.contains_key("mtu")
        {
            overrides.insert("mtu".into(), toml::Value::Integer(i64::from(mtu)));
        }
        if let Some(teacher) = lock(&self.teacher).get(lan) {
            overrides.extend(teacher.clone());
        }
        tables.lans.insert(lan.as_str().to_owned(), overrides);
        tables
    }

    /// The settings LAN `lan`'s gateway starts with; takes the pending join MTU.
    pub(crate) fn for_new_lan(
        &self,
        config: &Config,
        lan: &LanName,
    ) -> Result<NetworkConfig, String> {
        let join_mtu = lock(&self.join_mtu).remove(lan);
        let network = self.tables(config, lan, join_mtu).for_lan(lan.as_str())?;
        if let Err(problem) = check_mtu(config, network.mtu) {
            // A teacher's or a join's MTU was checked when given; this is the config's.
            tracing::warn!(%lan, "{problem}");
        }
        Ok(network)
    }

    /// The settings LAN `lan` would start with now (a pending join MTU aside).
    pub(crate) fn next_start(
        &self,
        config: &Config,
        lan: &LanName,
    ) -> Result<NetworkConfig, String> {
        self.tables(config, lan, None).for_lan(lan.as_str())
    }

    /// Records what a started gateway runs with.
    pub(crate) fn started(&self, lan: &LanName, network: &NetworkConfig) {
        let shown = serde_json::json!({
            "subnet": network.subnet,
            "gateway": network.gateway.to_string(),
            "dns": network.dns.to_string(),
            "mtu": network.mtu,
            "domain": format!("{}.{}", lan.as_str().to_ascii_lowercase(), network.domain_suffix),
        });
        let mut running = lock(&self.running);
        if running.len() < MAX_LANS || running.contains_key(lan) {
            running.insert(lan.clone(), shown);
        }
    }

    pub(crate) fn stopped(&self, lan: &LanName) {
        lock(&self.running).remove(lan);
    }

    /// What `/admin/lans` shows of `lan`: the settings it runs with and a teacher's.
    pub(crate) fn describe(&self, lan: &LanName) -> serde_json::Value {
        let teacher = lock(&self.teacher)
            .get(lan)
            .and_then(|t| serde_json::to_value(t).ok());
        serde_json::json!({
            "network": lock(&self.running).get(lan).cloned(),
            "settings": teacher,
        })
    }

    /// Whether a LAN may have `mtu`, with the fix when not.
    pub(crate) fn check_mtu(&self, config: &Config, mtu: u16) -> Result<(), String> {
        check_mtu(config, mtu)
    }

    /// A join that creates `lan` asks for `mtu` (checked with [`Self::check_mtu`]).
    pub(crate) fn offer_join_mtu(&self, lan: &LanName, mtu: u16) {
        let mut pending = lock(&self.join_mtu);
        if pending.len() >= MAX_LANS && !pending.contains_key(lan) {
            // Offers of joins that never created their LAN: forget them all.
            pending.clear();
        }
        pending.insert(lan.clone(), mtu);
    }

    /// A teacher's settings for `lan` (replacing earlier ones; an empty table forgets
    /// them), checked as the LAN would start with them; the settings that would apply.
    pub(crate) fn set(
        &self,
        config: &Config,
        lan: &LanName,
        settings: toml::Table,
    ) -> Result<NetworkConfig, String> {
        if let Some(key) = OPERATOR_KEYS.iter().find(|k| settings.contains_key(**k)) {
            return Err(format!(
                "{key} is the operator's: set it in [lans.{lan}] of the config file"
            ));
        }
        let mut candidate = self.tables(config, lan, None);
        if let Some(overrides) = candidate.lans.get_mut(lan.as_str()) {
            overrides.extend(settings.clone());
        }
        let network = candidate.for_lan(lan.as_str())?;
        network.services(lan.as_str())?;
        check_mtu(config, network.mtu)?;
        let mut teacher = lock(&self.teacher);
        if settings.is_empty() {
            teacher.remove(lan);
        } else if teacher.len() < MAX_LANS || teacher.contains_key(lan) {
            teacher.insert(lan.clone(), settings);
        } else {
            return Err("too many LANs have settings; clear some with an empty {}".into());
        }
        Ok(network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(name: &str) -> LanName {
        LanName::new(name).unwrap()
    }

    #[test]
    fn a_first_joins_mtu_applies_once_unless_the_config_names_one() {
        let settings = LanSettings::default();
        let mut config = Config::default();
        settings.offer_join_mtu(&lan("v"), 65520);
        assert_eq!(settings.for_new_lan(&config, &lan("v")).unwrap().mtu, 65520);
        assert_eq!(
            settings.for_new_lan(&config, &lan("v")).unwrap().mtu,
            1500,
            "taken once"
        );
        assert!(
            settings
                .check_mtu(&config, 100)
                .unwrap_err()
                .contains("576")
        );
        config.limits.max_frame_size = 1514;
        assert!(
            settings
                .check_mtu(&config, 9000)
                .unwrap_err()
                .contains("max_frame_size")
        );
        let mut config = Config::default();
        config
            .lans
            .insert("fixed".into(), toml::toml! { mtu = 1400 });
        settings.offer_join_mtu(&lan("fixed"), 65520);
        assert_eq!(
            settings.for_new_lan(&config, &lan("fixed")).unwrap().mtu,
            1400
        );
    }

    #[test]
    fn a_teachers_settings_win_and_are_checked() {
        let settings = LanSettings::default();
        let config = Config::default();
        let class = lan("class");
        let set = toml::toml! {
            subnet = "10.0.3.0/24"
            gateway = "10.0.3.2"
            dns = "10.0.3.3"
            pool_start = "10.0.3.15"
            pool_end = "10.0.3.99"
            mtu = 9000
        };
        let network = settings.set(&config, &class, set).unwrap();
        assert_eq!(
            (network.mtu, network.subnet.as_str()),
            (9000, "10.0.3.0/24")
        );
        settings.offer_join_mtu(&class, 65520);
        assert_eq!(settings.for_new_lan(&config, &class).unwrap().mtu, 9000);
        assert!(
            settings
                .set(&config, &class, toml::toml! { subnet = "nope" })
                .unwrap_err()
                .contains("subnet")
        );
        assert!(
            settings
                .set(&config, &class, toml::toml! { port_rate = "1Mbit" })
                .unwrap_err()
                .contains("operator")
        );
        assert!(
            settings
                .set(&config, &class, toml::toml! { mtu = 70000 })
                .is_err()
        );
        settings.set(&config, &class, toml::Table::new()).unwrap();
        assert_eq!(
            settings.for_new_lan(&config, &class).unwrap().subnet,
            "10.0.2.0/24"
        );
    }
}
