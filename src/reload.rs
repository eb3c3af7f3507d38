//! What a configuration reload (SIGHUP) may change. Keys (the signed-mode
//! key included, for rotation), limits, pool
//! size, readiness and metrics settings apply at once; the addresses, the
//! upstream connection settings, the tenant setting and the tenant mode need a restart,
//! because live connections and the SQL inspector were built from them.

use crate::config::Config;

/// Keys that differ between `old` and `new` but apply only after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (old, new);
    let checks = [
        ("listen.addr", o.listen.addr != n.listen.addr),
        ("listen.tls_cert / listen.tls_key", o.listen.tls != n.listen.tls),
        ("listen.tls_reload_seconds", o.listen.tls_reload_interval != n.listen.tls_reload_interval),
        ("http.addr", o.http.addr != n.http.addr),
        ("http.ready_check_seconds", o.http.ready_check_interval != n.http.ready_check_interval),
        ("upstream.host / port / database / user", {
            let (a, b) = (&o.upstream, &n.upstream);
            (&a.host, a.port, &a.database, &a.user) != (&b.host, b.port, &b.database, &b.user)
        }),
        ("upstream.password", o.upstream.password != n.upstream.password),
        ("upstream.tls / tls_ca_file / channel_binding", {
            let (a, b) = (&o.upstream, &n.upstream);
            (a.tls, &a.tls_ca_file, a.channel_binding) != (b.tls, &b.tls_ca_file, b.channel_binding)
        }),
        ("upstream.connect_timeout_seconds", o.upstream.connect_timeout != n.upstream.connect_timeout),
        (
            "upstream.allow_rls_bypassing_role",
            o.upstream.allow_rls_bypassing_role != n.upstream.allow_rls_bypassing_role,
        ),
        ("tenant.setting", o.tenant.setting != n.tenant.setting),
        ("tenant.mode", o.tenant.mode.signing_key().is_some() != n.tenant.mode.signing_key().is_some()),
    ];
    checks.into_iter().filter(|(_, differs)| *differs).map(|(name, _)| name).collect()
}

/// The reloadable sections that changed, for the log line.
pub fn reloadable_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let checks = [
        ("auth", old.auth != new.auth),
        ("listen limits", old.listen != new.listen),
        ("upstream pool", old.upstream != new.upstream),
        ("http", old.http != new.http),
        ("tenant signing key", old.tenant.mode != new.tenant.mode),
    ];
    checks.into_iter().filter(|(_, differs)| *differs).map(|(name, _)| name).collect()
}
