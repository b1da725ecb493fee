#!/usr/bin/python3
"""A minimal system tray for tests: a StatusNotifierWatcher with a host, on the session bus, so
the app's tray icon registers as it would with a desktop panel; then its menu is read and clicked
over D-Bus (com.canonical.dbusmenu), as the panel does when a user clicks.

One JSON object per line:
  out {"ready": true}                               the watcher's name is owned
  out {"registered": SERVICE, "path": PATH}         an item registered
  in  {"menu": true}     out {"items": [{"id", "label", "toggle"}]}   toggle: 1 on, 0 off, -1 none
  in  {"click": ID}      out {"clicked": ID}
  out {"error": TEXT}                               a call failed

Runs with Debian's python3 and python3-gi (Gio), nothing else.
"""
import json
import sys
import threading

from gi.repository import Gio, GLib

WATCHER = "org.kde.StatusNotifierWatcher"
INTROSPECTION = """
<node>
  <interface name="org.kde.StatusNotifierWatcher">
    <method name="RegisterStatusNotifierItem"><arg type="s" direction="in"/></method>
    <method name="RegisterStatusNotifierHost"><arg type="s" direction="in"/></method>
    <property name="RegisteredStatusNotifierItems" type="as" access="read"/>
    <property name="IsStatusNotifierHostRegistered" type="b" access="read"/>
    <property name="ProtocolVersion" type="i" access="read"/>
    <signal name="StatusNotifierItemRegistered"><arg type="s"/></signal>
    <signal name="StatusNotifierItemUnregistered"><arg type="s"/></signal>
    <signal name="StatusNotifierHostRegistered"/>
  </interface>
</node>
"""

out_lock = threading.Lock()
items: list[tuple[str, str]] = []


def say(obj) -> None:
    with out_lock:
        print(json.dumps(obj), flush=True)


def on_call(conn, sender, _path, _iface, method, params, invocation):
    if method == "RegisterStatusNotifierItem":
        (arg,) = params.unpack()
        # An object path means "this path on the caller's connection"; otherwise a bus name.
        service, path = (sender, arg) if arg.startswith("/") else (arg, "/StatusNotifierItem")
        items.append((service, path))
        conn.emit_signal(None, "/StatusNotifierWatcher", WATCHER, "StatusNotifierItemRegistered",
                         GLib.Variant("(s)", (f"{service}{path}",)))
        say({"registered": service, "path": path})
    invocation.return_value(None)


def on_get(_conn, _sender, _path, _iface, prop):
    if prop == "RegisteredStatusNotifierItems":
        return GLib.Variant("as", [f"{s}{p}" for s, p in items])
    if prop == "IsStatusNotifierHostRegistered":
        return GLib.Variant("b", True)
    return GLib.Variant("i", 0)


def menu_path(bus) -> tuple[str, str]:
    service, path = items[-1]
    reply = bus.call_sync(service, path, "org.freedesktop.DBus.Properties", "Get",
                          GLib.Variant("(ss)", ("org.kde.StatusNotifierItem", "Menu")),
                          GLib.VariantType("(v)"), Gio.DBusCallFlags.NONE, 5000, None)
    return service, reply.unpack()[0]


def flatten(node, acc) -> None:
    ident, props, children = node
    if ident != 0 and props.get("type") != "separator":
        acc.append({"id": ident, "label": props.get("label", ""),
                    "toggle": props.get("toggle-state", -1) if "toggle-type" in props else -1})
    for child in children:
        flatten(child, acc)


def serve_stdin(bus) -> None:
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            service, path = menu_path(bus)
            if cmd.get("menu"):
                reply = bus.call_sync(service, path, "com.canonical.dbusmenu", "GetLayout",
                                      GLib.Variant("(iias)", (0, -1, [])), None,
                                      Gio.DBusCallFlags.NONE, 5000, None)
                acc: list = []
                flatten(reply.unpack()[1], acc)
                say({"items": acc})
            elif "click" in cmd:
                bus.call_sync(service, path, "com.canonical.dbusmenu", "Event",
                              GLib.Variant("(isvu)", (cmd["click"], "clicked",
                                                      GLib.Variant("i", 0), 0)),
                              None, Gio.DBusCallFlags.NONE, 5000, None)
                say({"clicked": cmd["click"]})
        except Exception as e:  # reported to the test, which fails with it
            say({"error": str(e)})
    loop.quit()


bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
node = Gio.DBusNodeInfo.new_for_xml(INTROSPECTION)
bus.register_object("/StatusNotifierWatcher", node.interfaces[0], on_call, on_get, None)
loop = GLib.MainLoop()


def owned(*_):
    say({"ready": True})
    threading.Thread(target=serve_stdin, args=(bus,), daemon=True).start()


def lost(*_):
    say({"error": f"could not own {WATCHER}"})
    loop.quit()


Gio.bus_own_name_on_connection(bus, WATCHER, Gio.BusNameOwnerFlags.NONE, owned, lost)
loop.run()
