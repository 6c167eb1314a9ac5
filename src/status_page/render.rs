//! The page's HTML, built on the server: plain tables that work without JavaScript.
//! Every value goes through [`esc`]; URLs are relative, so the page works under Home
//! Assistant's ingress prefix.

use std::fmt::Write;

use super::feed::{Entry, FleetPage, FleetQuery, FleetRow, SortKey, StateFilter};
use super::problems::Problem;
use crate::observe::Snapshot;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

fn online_text(online: Option<bool>) -> &'static str {
    match online {
        Some(true) => "online",
        Some(false) => "offline",
        None => "unknown",
    }
}

fn position(r: &FleetRow) -> String {
    match (r.latitude, r.longitude) {
        (Some(lat), Some(lon)) => format!("{lat:.5}, {lon:.5}"),
        _ => String::new(),
    }
}

/// The status cells by id: the same text on the page and in the live `status` event.
pub fn status_cells(s: &Snapshot, broker: &str) -> Vec<(String, String)> {
    let mut cells = vec![
        (
            "health".to_string(),
            match s.health() {
                Ok(()) => "healthy".to_string(),
                Err(reason) => format!("unhealthy: {reason}"),
            },
        ),
        ("vehicles".into(), s.vehicles.to_string()),
        ("vehicles_online".into(), s.vehicles_online.to_string()),
        ("broker".into(), broker.to_string()),
        (
            "mqtt_connected".into(),
            if s.mqtt_connected {
                "connected"
            } else {
                "not connected"
            }
            .into(),
        ),
        (
            "mqtt_protocol".into(),
            match s.mqtt_protocol {
                5 => "MQTT 5".to_string(),
                4 => "MQTT 3.1.1".to_string(),
                _ => "not yet connected".to_string(),
            },
        ),
        ("mqtt_published".into(), s.mqtt_published.to_string()),
        ("mqtt_dropped".into(), s.mqtt_dropped.to_string()),
        ("mqtt_reconnects".into(), s.mqtt_reconnects.to_string()),
        ("retry_queue".into(), s.retry_queue.to_string()),
        ("unsent_states".into(), s.unsent_states.to_string()),
        (
            "refused_logins".into(),
            s.embedded_refused_logins.to_string(),
        ),
        ("pin_failures".into(), s.pin_failures.to_string()),
        (
            "commands".into(),
            s.commands
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    for c in &s.connectors {
        let state = match (c.running, &c.error) {
            (false, _) => "stopped",
            (true, Some(_)) => "error",
            (true, None) => "running",
        };
        cells.push((format!("c-{}-state", c.name), state.into()));
        cells.push((format!("c-{}-links", c.name), c.links.to_string()));
        cells.push((
            format!("c-{}-error", c.name),
            c.error.clone().unwrap_or_default(),
        ));
        cells.push((
            format!("c-{}-counters", c.name),
            c.counters
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    cells
}

/// What the page needs besides the data.
pub struct View<'a> {
    /// The asker's CSRF token when it may act.
    pub csrf: Option<&'a str>,
    /// Whether actions can be enabled at all, and how (for the read-only notice).
    pub has_token: bool,
    pub ingress: bool,
    pub logged_in: bool,
    pub map_tiles: &'a str,
    pub notice: Option<&'a str>,
}

/// Events and results, and problems, on a page (without `full`; the caller takes them):
/// the page stays small
/// (under 200 KB with 100 fleet rows), the rest is one click away.
pub const ENTRIES_SHOWN: usize = 100;
pub const PROBLEMS_SHOWN: usize = 50;

/// At most `max` characters of `text`, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// "Showing the newest n of m" with a link to all, when not all are shown.
fn more(shown: usize, kept: usize, anchor: &str) -> String {
    if shown >= kept {
        String::new()
    } else {
        format!(
            " Showing the newest {shown} of {kept}: <a href=\"?full=true#{anchor}\">show all</a>."
        )
    }
}

fn cell(cells: &[(String, String)], id: &str) -> String {
    let text = cells
        .iter()
        .find(|(k, _)| k == id)
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    format!("<span id=\"s-{}\">{}</span>", esc(id), esc(text))
}

fn query(q: &FleetQuery, sort: SortKey, desc: bool, page: usize) -> String {
    let key = |k: SortKey| {
        serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let state = serde_json::to_value(q.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "?q={}&amp;state={}&amp;sort={}&amp;desc={desc}&amp;page={page}",
        enc(&q.q),
        state,
        key(sort).unwrap_or_default()
    )
}

#[allow(clippy::too_many_arguments)]
pub fn page(
    view: &View,
    q: &FleetQuery,
    fleet: &FleetPage,
    snapshot: &Snapshot,
    broker: &str,
    (problems, problems_kept): (Vec<Problem>, usize),
    (entries, entries_kept): (Vec<Entry>, usize),
) -> String {
    let cells = status_cells(snapshot, broker);
    let mut h = String::with_capacity(64 * 1024);
    let healthy = snapshot.health().is_ok();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>vehicle2mqtt</title><link rel=\"stylesheet\" href=\"assets/status.css\">{}</head>\
         <body data-tiles=\"{}\"><header><h1>vehicle2mqtt</h1>\
         <p class=\"{}\">{}</p><nav><a href=\"#fleet\">Fleet</a> <a href=\"#whynot\">Why not</a> \
         <a href=\"#links\">Connectors and MQTT</a> <a href=\"#events\">Events and results</a></nav>",
        if view.map_tiles.is_empty() {
            ""
        } else {
            "<link rel=\"stylesheet\" href=\"assets/leaflet.css\">"
        },
        esc(view.map_tiles),
        if healthy { "ok" } else { "bad" },
        cell(&cells, "health"),
    );
    // Who may act, and how to enable it.
    h.push_str("<div id=\"auth\">");
    if let Some(csrf) = view.csrf {
        if view.logged_in {
            let _ = write!(
                h,
                "Actions enabled. <form method=\"post\" action=\"logout\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
                esc(csrf)
            );
        } else {
            h.push_str("Actions enabled (Home Assistant ingress).");
        }
    } else if view.has_token {
        h.push_str("Read-only. <a href=\"login\">Log in</a> to lock, unlock, refresh and purge.");
    } else if view.ingress {
        h.push_str(
            "Read-only here: open this page from the add-on's panel in Home Assistant to act.",
        );
    } else {
        h.push_str(
            "Read-only: set <code>bridge.http_token</code> (16 characters or more) and log in, \
             or open this page from the Home Assistant add-on's panel, to lock, unlock, refresh and purge.",
        );
    }
    h.push_str("</div>");
    if let Some(n) = view.notice {
        let _ = write!(h, "<p id=\"notice\">{}</p>", esc(n));
    }
    h.push_str("</header><main>");

    // Fleet.
    let _ = write!(
        h,
        "<section id=\"fleet\"><h2>Fleet</h2><p>{} vehicles, {} online; {} match, page {} of {}.</p>\
         <form method=\"get\" action=\"./#fleet\" id=\"filter\"><input type=\"search\" name=\"q\" value=\"{}\" \
         placeholder=\"name, id or upstream\" maxlength=\"100\"> <select name=\"state\">",
        cell(&cells, "vehicles"),
        cell(&cells, "vehicles_online"),
        fleet.matched,
        fleet.page,
        fleet.pages,
        esc(&q.q),
    );
    for (s, label) in [
        (StateFilter::All, "all"),
        (StateFilter::Online, "online"),
        (StateFilter::Offline, "offline"),
    ] {
        let _ = write!(
            h,
            "<option value=\"{label}\"{}>{label}</option>",
            if q.state == s { " selected" } else { "" }
        );
    }
    h.push_str("</select> <select name=\"sort\">");
    let sorts = [
        (SortKey::Name, "name"),
        (SortKey::Upstream, "upstream"),
        (SortKey::State, "state"),
        (SortKey::Reported, "reported"),
        (SortKey::Battery, "battery"),
    ];
    for (s, label) in sorts {
        let _ = write!(
            h,
            "<option value=\"{label}\"{}>by {label}</option>",
            if q.sort == s { " selected" } else { "" }
        );
    }
    let _ = write!(
        h,
        "</select> <label><input type=\"checkbox\" name=\"desc\" value=\"true\"{}> descending</label> \
         <button>Show</button></form>",
        if q.desc { " checked" } else { "" }
    );
    if let Some(csrf) = view.csrf {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"action\" id=\"act\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>PIN (where one is set) <input type=\"password\" name=\"pin\" autocomplete=\"off\" maxlength=\"32\"></label> \
             <button name=\"do\" value=\"purge\">Purge stale entities</button></form>",
            esc(csrf)
        );
    }
    h.push_str("<table id=\"fleet-table\"><thead><tr>");
    for (label, key) in [
        ("Name", Some(SortKey::Name)),
        ("Upstream", Some(SortKey::Upstream)),
        ("State", Some(SortKey::State)),
        ("Since", None),
        ("Last report", Some(SortKey::Reported)),
        ("Position", None),
        ("Lock", None),
        ("Battery / fuel", Some(SortKey::Battery)),
        ("Last command", None),
    ] {
        match key {
            Some(k) => {
                let desc = q.sort == k && !q.desc;
                let _ = write!(
                    h,
                    "<th><a href=\"{}#fleet\">{label}</a></th>",
                    query(q, k, desc, 1)
                );
            }
            None => {
                let _ = write!(h, "<th>{label}</th>");
            }
        }
    }
    if view.csrf.is_some() {
        h.push_str("<th>Actions</th>");
    }
    h.push_str("</tr></thead><tbody>");
    for r in &fleet.rows {
        let online = online_text(r.online);
        let _ = write!(
            h,
            "<tr data-id=\"{id}\"{pos}><td><b>{name}</b> <small>{id}</small></td><td>{}</td>\
             <td class=\"c-online {online}\">{online}</td><td class=\"c-since\">{}</td>\
             <td class=\"c-reported\">{}</td><td class=\"c-pos\">{}</td><td class=\"c-lock\">{}</td>\
             <td class=\"c-energy\">{}</td><td class=\"c-cmd\">{}</td>",
            r.upstream,
            esc(opt(&r.since)),
            esc(opt(&r.reported_at)),
            position(r),
            esc(opt(&r.lock)),
            esc(opt(&r.energy)),
            esc(opt(&r.command)),
            id = esc(&r.id),
            name = esc(&r.name),
            pos = match (r.latitude, r.longitude) {
                (Some(lat), Some(lon)) => format!(" data-lat=\"{lat}\" data-lon=\"{lon}\""),
                _ => String::new(),
            },
        );
        if view.csrf.is_some() {
            h.push_str("<td>");
            let id = esc(&r.id);
            if r.actions.contains(&"lock") {
                let _ = write!(
                    h,
                    "<button form=\"act\" name=\"do\" value=\"lock:{id}\">Lock</button>\
                     <button form=\"act\" name=\"do\" value=\"unlock:{id}\">Unlock</button>"
                );
            }
            if r.actions.contains(&"refresh") {
                let _ = write!(
                    h,
                    "<button form=\"act\" name=\"do\" value=\"refresh:{id}\">Refresh</button>"
                );
            }
            h.push_str("</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table><nav class=\"pages\">");
    if fleet.page > 1 {
        let _ = write!(
            h,
            "<a href=\"{}#fleet\">previous</a> ",
            query(q, q.sort, q.desc, fleet.page - 1)
        );
    }
    let _ = write!(h, "page {} of {}", fleet.page, fleet.pages);
    if fleet.page < fleet.pages {
        let _ = write!(
            h,
            " <a href=\"{}#fleet\">next</a>",
            query(q, q.sort, q.desc, fleet.page + 1)
        );
    }
    h.push_str("</nav>");
    if !view.map_tiles.is_empty() {
        h.push_str(
            "<div id=\"map\" aria-label=\"Map of this page's vehicles\"></div>\
             <p class=\"small\">Map: every vehicle with a position (this page's first, the rest from positions.json). Tiles © OpenStreetMap contributors (or as bridge.map_tiles says).</p>",
        );
    }
    h.push_str("</section>");

    // Why not.
    let _ = write!(
        h,
        "<section id=\"whynot\"><h2>Why not</h2><p>Why a device may not show: the newest first \
         (unknown ids, links that send only plain frames, refused logins, cloud errors and holds).{}</p>\
         <table><thead><tr><th>Time</th><th>What</th><th>Peer</th><th>Detail</th></tr></thead><tbody id=\"problems\">",
        more(problems.len(), problems_kept, "whynot")
    );
    for p in &problems {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.at),
            esc(p.kind),
            esc(&p.peer),
            esc(&p.detail)
        );
    }
    h.push_str("</tbody></table></section>");

    // Connectors and MQTT.
    let _ = write!(
        h,
        "<section id=\"links\"><h2>Connectors and MQTT</h2><table><tbody>\
         <tr><th>Broker</th><td>{} ({}, {})</td></tr>\
         <tr><th>Published / dropped / reconnects</th><td>{} / {} / {}</td></tr>\
         <tr><th>Retry queue / states waiting</th><td>{} / {}</td></tr>\
         <tr><th>Embedded broker: refused logins</th><td>{}</td></tr>\
         <tr><th>Command results</th><td>{}</td></tr><tr><th>Wrong PINs</th><td>{}</td></tr>\
         </tbody></table><table><thead><tr><th>Connector</th><th>State</th><th>Links</th><th>Error</th><th>Counters</th></tr></thead><tbody>",
        cell(&cells, "broker"),
        cell(&cells, "mqtt_connected"),
        cell(&cells, "mqtt_protocol"),
        cell(&cells, "mqtt_published"),
        cell(&cells, "mqtt_dropped"),
        cell(&cells, "mqtt_reconnects"),
        cell(&cells, "retry_queue"),
        cell(&cells, "unsent_states"),
        cell(&cells, "refused_logins"),
        cell(&cells, "commands"),
        cell(&cells, "pin_failures"),
    );
    for c in &snapshot.connectors {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.name,
            cell(&cells, &format!("c-{}-state", c.name)),
            cell(&cells, &format!("c-{}-links", c.name)),
            cell(&cells, &format!("c-{}-error", c.name)),
            cell(&cells, &format!("c-{}-counters", c.name)),
        );
    }
    h.push_str("</tbody></table></section>");

    // Events and results.
    let _ = write!(
        h,
        "<section id=\"events\"><h2>Events and results</h2><p>The newest first (the last {} are kept).{}</p>\
         <table><thead><tr><th>Time</th><th>Vehicle</th><th>Kind</th><th>What</th><th>Detail</th></tr></thead>\
         <tbody id=\"entries\">",
        super::feed::ENTRIES,
        more(entries.len(), entries_kept, "events")
    );
    for e in &entries {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.at),
            esc(&e.vehicle),
            e.kind,
            esc(&e.what),
            esc(&clip(&e.detail, 200))
        );
    }
    h.push_str("</tbody></table></section></main>");
    if !view.map_tiles.is_empty() {
        h.push_str("<script src=\"assets/leaflet.js\"></script>");
    }
    h.push_str("<script src=\"assets/status.js\"></script></body></html>");
    h
}

/// The login form.
pub fn login(message: Option<&str>) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vehicle2mqtt: log in</title>\
         <link rel=\"stylesheet\" href=\"assets/status.css\"></head><body><main><h1>vehicle2mqtt</h1>\
         {}<form method=\"post\" action=\"login\"><label>Token (bridge.http_token) \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" maxlength=\"256\" autofocus></label> \
         <button>Log in</button></form><p><a href=\"./\">Back to the page</a> (read-only)</p></main></body></html>",
        message.map(|m| format!("<p id=\"notice\">{}</p>", esc(m))).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(map_tiles: &str) -> View<'_> {
        View {
            csrf: None,
            has_token: false,
            ingress: false,
            logged_in: false,
            map_tiles,
            notice: None,
        }
    }

    #[test]
    fn the_map_is_there_only_with_tiles() {
        let empty = FleetPage::default();
        let q = FleetQuery::default();
        let s = Snapshot::default();
        let off = page(&view(""), &q, &empty, &s, "b", (vec![], 0), (vec![], 0));
        assert!(!off.contains("leaflet") && !off.contains("id=\"map\""));
        let on = page(
            &view("https://t.example/{z}/{x}/{y}.png"),
            &q,
            &empty,
            &s,
            "b",
            (vec![], 0),
            (vec![], 0),
        );
        assert!(on.contains("assets/leaflet.js") && on.contains("<div id=\"map\""));
        assert!(on.contains("data-tiles=\"https://t.example/{z}/{x}/{y}.png\""));
    }

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(
            esc("<img src=x onerror=\"alert('1')\">&"),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn a_hostile_name_is_text_in_the_page() {
        let row = FleetRow {
            id: "kx1".into(),
            name: "<script>alert(1)</script>".into(),
            upstream: "kingxun",
            online: Some(true),
            since: None,
            reported_at: None,
            latitude: None,
            longitude: None,
            lock: Some("<b>".into()),
            energy: None,
            command: None,
            actions: vec![],
        };
        let fleet = FleetPage {
            rows: vec![row],
            matched: 1,
            total: 1,
            online: 1,
            page: 1,
            pages: 1,
        };
        let view = View {
            csrf: None,
            has_token: false,
            ingress: false,
            logged_in: false,
            map_tiles: "",
            notice: None,
        };
        let html = page(
            &view,
            &FleetQuery::default(),
            &fleet,
            &Snapshot::default(),
            "b",
            (vec![], 0),
            (vec![], 0),
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("<td class=\"c-lock\">&lt;b&gt;</td>"));
        assert!(html.contains("Read-only: set <code>bridge.http_token</code>"));
    }
}
