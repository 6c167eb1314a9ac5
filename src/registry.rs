//! Every upstream the bridge knows: one line each, `section: SimulateVariant => marker`.
//! Config, `main`, `demo` and `simulate` iterate this list (see [`crate::upstream`]);
//! adding an upstream is its own folders plus a line here (docs/adding-an-upstream.md).

crate::upstream::registry! {
    xchanger: Xchanger => crate::connectors::xchanger::Xchanger,
    iauto360: Iauto360 => crate::connectors::iauto360::Iauto360,
    kingxun: Kingxun => crate::connectors::kingxun::Kingxun,
    exlive: Exlive => crate::connectors::exlive::Exlive,
    #[cfg(test)]
    echo: Echo => crate::connectors::echo::Echo,
}
