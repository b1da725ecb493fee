//! The system tray: one check item per saved tunnel (toggles it), "Copy URL" for online ones,
//! "Open ggrok" and "Quit". The icon shows whether any tunnel is online.
//!
//! The menu is computed by [`entries`] (plain, tested) and rebuilt only when what it shows
//! changes, so request counts ticking do not churn the menu.

use tauri::{
    image::Image,
    menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem},
    tray::TrayIconBuilder,
    AppHandle, Runtime,
};

use crate::state::TunnelView;

/// Id of the one tray icon.
pub const TRAY_ID: &str = "ggrok-tray";
/// Menu id: show the window.
pub const MENU_OPEN: &str = "open";
/// Menu id: quit the app.
pub const MENU_QUIT: &str = "quit";
/// Menu id prefix: toggle tunnel `toggle:<id>`.
pub const MENU_TOGGLE_PREFIX: &str = "toggle:";
/// Menu id prefix: copy the URL of tunnel `copy:<id>`.
pub const MENU_COPY_PREFIX: &str = "copy:";

const ICON_ONLINE: &[u8] = include_bytes!("../../icons/tray-online.png");
const ICON_OFFLINE: &[u8] = include_bytes!("../../icons/tray-offline.png");

/// One line of the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A saved tunnel's check item, checked while it runs.
    Toggle {
        id: String,
        text: String,
        checked: bool,
    },
    /// "Copy URL" of an online tunnel.
    Copy {
        id: String,
        text: String,
    },
    Separator,
    /// Shows the window.
    Open,
    /// Stops the tunnels and exits.
    Quit,
}

/// What a click means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start or stop a tunnel.
    Toggle(String),
    /// Copy a tunnel's URL.
    Copy(String),
    Open,
    Quit,
}

/// The menu for `tunnels`.
pub fn entries(tunnels: &[TunnelView]) -> Vec<Entry> {
    let mut out: Vec<Entry> = tunnels
        .iter()
        .map(|t| Entry::Toggle {
            id: format!("{MENU_TOGGLE_PREFIX}{}", t.id),
            text: format!("{} → {}", t.label(), t.target),
            checked: !matches!(t.status, ggrok_tunnel::Status::Stopped),
        })
        .collect();
    let copies: Vec<Entry> = tunnels
        .iter()
        .filter_map(|t| {
            t.url().map(|url| Entry::Copy {
                id: format!("{MENU_COPY_PREFIX}{}", t.id),
                text: format!("Copy URL {url}"),
            })
        })
        .collect();
    if !out.is_empty() {
        out.push(Entry::Separator);
    }
    if !copies.is_empty() {
        out.extend(copies);
        out.push(Entry::Separator);
    }
    out.push(Entry::Open);
    out.push(Entry::Quit);
    out
}

/// Whether any tunnel is online (the icon).
pub fn any_online(tunnels: &[TunnelView]) -> bool {
    tunnels.iter().any(|t| t.url().is_some())
}

/// The action behind menu id `id`.
pub fn parse(id: &str) -> Option<Action> {
    match id {
        MENU_OPEN => Some(Action::Open),
        MENU_QUIT => Some(Action::Quit),
        _ => id
            .strip_prefix(MENU_TOGGLE_PREFIX)
            .map(|t| Action::Toggle(t.to_owned()))
            .or_else(|| {
                id.strip_prefix(MENU_COPY_PREFIX)
                    .map(|t| Action::Copy(t.to_owned()))
            }),
    }
}

fn icon(online: bool) -> tauri::Result<Image<'static>> {
    Image::from_bytes(if online { ICON_ONLINE } else { ICON_OFFLINE })
}

fn menu<R: Runtime>(app: &AppHandle<R>, entries: &[Entry]) -> tauri::Result<Menu<R>> {
    let menu = Menu::new(app)?;
    for e in entries {
        match e {
            Entry::Toggle { id, text, checked } => {
                menu.append(&CheckMenuItem::with_id(
                    app,
                    id,
                    text,
                    true,
                    *checked,
                    None::<&str>,
                )?)?;
            }
            Entry::Copy { id, text } => {
                menu.append(&MenuItem::with_id(app, id, text, true, None::<&str>)?)?
            }
            Entry::Separator => menu.append(&PredefinedMenuItem::separator(app)?)?,
            Entry::Open => menu.append(&MenuItem::with_id(
                app,
                MENU_OPEN,
                "Open ggrok",
                true,
                None::<&str>,
            )?)?,
            Entry::Quit => menu.append(&MenuItem::with_id(
                app,
                MENU_QUIT,
                "Quit",
                true,
                None::<&str>,
            )?)?,
        }
    }
    Ok(menu)
}

/// Creates the tray; `on_action` handles clicks.
pub fn create<R: Runtime>(
    app: &AppHandle<R>,
    tunnels: &[TunnelView],
    on_action: impl Fn(&AppHandle<R>, Action) + Send + Sync + 'static,
) -> tauri::Result<()> {
    TrayIconBuilder::with_id(TRAY_ID)
        .icon(icon(any_online(tunnels))?)
        .tooltip("ggrok")
        .menu(&menu(app, &entries(tunnels))?)
        .on_menu_event(move |app, event| {
            if let Some(action) = parse(event.id().as_ref()) {
                on_action(app, action);
            }
        })
        .build(app)?;
    Ok(())
}

/// Brings the tray in line with `tunnels`.
pub fn update<R: Runtime>(app: &AppHandle<R>, tunnels: &[TunnelView]) -> tauri::Result<()> {
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        let online = any_online(tunnels);
        tray.set_menu(Some(menu(app, &entries(tunnels))?))?;
        tray.set_icon(Some(icon(online)?))?;
        tray.set_tooltip(Some(if online {
            "ggrok: online"
        } else {
            "ggrok: offline"
        }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ggrok_tunnel::Status;

    fn view(id: &str, status: Status) -> TunnelView {
        TunnelView {
            id: id.into(),
            kind: ggrok_tunnel::saved::Kind::Http,
            remote_port: None,
            given_port: None,
            server_id: "local".into(),
            server_name: "This computer".into(),
            subdomain: Some(id.into()),
            local_host: "localhost".into(),
            local_port: 3000,
            target: "localhost:3000".into(),
            start_on_launch: false,
            status,
            requests: 0,
            connections: 0,
            local_warning: None,
            given_name: None,
            basic_auth_user: None,
            allow_ips: Vec::new(),
            keep_host: false,
            local_tls: false,
            upstream_insecure: false,
            upstream_http2: false,
            host_header: None,
        }
    }

    #[test]
    fn menu_has_toggles_copies_open_quit() {
        let tunnels = [
            view(
                "a",
                Status::Online {
                    url: "http://a.localhost:7070".into(),
                    name: "a".into(),
                },
            ),
            view("b", Status::Stopped),
        ];
        let e = entries(&tunnels);
        assert_eq!(
            e,
            vec![
                Entry::Toggle {
                    id: "toggle:a".into(),
                    text: "a → localhost:3000".into(),
                    checked: true
                },
                Entry::Toggle {
                    id: "toggle:b".into(),
                    text: "b → localhost:3000".into(),
                    checked: false
                },
                Entry::Separator,
                Entry::Copy {
                    id: "copy:a".into(),
                    text: "Copy URL http://a.localhost:7070".into()
                },
                Entry::Separator,
                Entry::Open,
                Entry::Quit,
            ]
        );
        assert!(any_online(&tunnels));
        assert!(!any_online(&tunnels[1..]));
        assert_eq!(entries(&[]), vec![Entry::Open, Entry::Quit]);
    }

    #[test]
    fn tcp_tunnels_are_listed_by_port() {
        let online = TunnelView {
            kind: ggrok_tunnel::saved::Kind::Tcp,
            subdomain: None,
            local_port: 22,
            target: "localhost:22".into(),
            ..view(
                "ssh",
                Status::Online {
                    url: "tcp://localhost:20022".into(),
                    name: "tcp:20022".into(),
                },
            )
        };
        let stopped = TunnelView {
            kind: ggrok_tunnel::saved::Kind::Tcp,
            subdomain: None,
            given_port: Some(20001),
            local_port: 5432,
            target: "localhost:5432".into(),
            ..view("db", Status::Stopped)
        };
        let e = entries(&[online, stopped]);
        assert_eq!(
            e[..4],
            [
                Entry::Toggle {
                    id: "toggle:ssh".into(),
                    text: "tcp:20022 → localhost:22".into(),
                    checked: true
                },
                Entry::Toggle {
                    id: "toggle:db".into(),
                    text: "tcp:20001 → localhost:5432".into(),
                    checked: false
                },
                Entry::Separator,
                Entry::Copy {
                    id: "copy:ssh".into(),
                    text: "Copy URL tcp://localhost:20022".into()
                },
            ]
        );
    }

    #[test]
    fn ids_parse_back() {
        assert_eq!(parse(MENU_OPEN), Some(Action::Open));
        assert_eq!(parse(MENU_QUIT), Some(Action::Quit));
        assert_eq!(parse("toggle:abc"), Some(Action::Toggle("abc".into())));
        assert_eq!(parse("copy:abc"), Some(Action::Copy("abc".into())));
        assert_eq!(parse("other"), None);
    }
}
