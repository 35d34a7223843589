#!/usr/bin/env python3
"""Lab Redfish BMC: a small, documented test fixture for what sushy-tools' fake driver lacks.

sushy-tools 2.2.0 with the fake driver answers 501 for BIOS, has no Storage for fake systems,
and its UpdateService.SimpleUpdate route is unreachable; it has no SessionService either. This
BMC implements exactly those parts of Redfish (DSP0266 / DSP8010 schemas, only the fields the
rack agent uses), over HTTPS with basic or session auth, with sushy's quirks reproduced where
they matter (a 307 from /Systems/<name> to /Systems/<uuid>; power changes that land late):

  /redfish/v1/                                  service root
  /redfish/v1/SessionService/Sessions           POST login (X-Auth-Token), DELETE logout;
                                                at most --max-sessions, then 503
                                                Base.1.0.SessionLimitExceeded
  /redfish/v1/Systems[/<uuid>|/<name> -> 307]   power (Actions/ComputerSystem.Reset), Boot PATCH
  /redfish/v1/Systems/<uuid>/Bios[/Settings]    current + pending attributes (applied at reboot)
  /redfish/v1/Systems/<uuid>/Storage/RAID.1     drives, Volumes (POST with RAIDType, DELETE)
  /redfish/v1/Managers/bmc                      EthernetInterfaces/eth0, VirtualMedia/Cd
  /redfish/v1/UpdateService                     SimpleUpdate: downloads ImageURI in the
                                                background, a Task reports progress; the
                                                firmware version becomes the image's sha256[:12]
  /redfish/v1/TaskService/Tasks/<n>

--power-hook SCRIPT is called like ipmi_sim's chassis_control (`set power 1|0`, `set reset 1`,
`set boot pxe|default|cdrom`) on every change, so chassis_control.sh can power a QEMU VM; its
`get power` answer is the PowerState reported (a VM that powered itself off reads Off).

The password comes from the VBMC_PASSWORD environment variable (never argv).
Usage: redfish_bmc.py --port N --cert C --key K [--user admin] [--serial SN]
                      [--power-delay SECS] [--max-sessions N] [--power-hook SCRIPT]
                      [--require-if-match]   (PATCH needs If-Match with the current ETag)
                      [--lan-ip IP [--lan-netmask MASK]] [--lan-mac MAC]
                                             (what EthernetInterfaces/eth0 reports)
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

UUID = "3f3a1c2e-8d47-4b6f-9a0e-5c1d2e3f4a5b"
NAME = "lab-node"
SYS = f"/redfish/v1/Systems/{UUID}"
MGR = "/redfish/v1/Managers/bmc"
STG = f"{SYS}/Storage/RAID.1"
LOCK = threading.Lock()

STATE = {
    "power": "Off",
    "pending_power": None,  # (state, apply_at)
    "boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled",
             "BootSourceOverrideMode": "UEFI"},
    "bios": {"BootMode": "Uefi", "ProcVirtualization": "Enabled", "SriovEnable": "Disabled",
             "NumaNodesPerSocket": 1},
    "bios_pending": {},
    "volumes": {},  # id -> dict
    "next_volume": 1,
    "media": None,
    "firmware": "1.0.0",
    "tasks": {},  # id -> dict
    "sessions": {},  # id -> token
    "next_id": 1,
}
DRIVES = {f"Disk.{i}": 960 * 1000**3 for i in range(4)}
RAID_TYPES = ["RAID0", "RAID1", "RAID10"]
ARGS = None


def etag_of(body):
    return '"' + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16] + '"'


def error(code, message, message_id="Base.1.0.GeneralError"):
    return code, {"error": {"code": message_id, "message": message,
                            "@Message.ExtendedInfo": [{"MessageId": message_id,
                                                       "Message": message}]}}


def hook(*args):
    if ARGS.power_hook:
        subprocess.run([ARGS.power_hook, *args], check=False, timeout=60)


def settle_power():
    p = STATE["pending_power"]
    if p and time.time() >= p[1]:
        STATE["power"] = p[0]
        STATE["pending_power"] = None
    if not STATE["pending_power"]:
        # With a hook the "hardware" has the last word: a VM that powered itself off (or
        # crashed) reads Off, like a real BMC reports a server that shut down.
        hw = hook_power()
        if hw is not None:
            STATE["power"] = hw


def hook_power():
    """The hook's `get power` answer ("On"/"Off"), or None without a hook or an answer."""
    if not ARGS.power_hook:
        return None
    try:
        out = subprocess.run([ARGS.power_hook, "get", "power"], capture_output=True,
                             text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip() == "power:1":
            return "On"
        if line.strip() == "power:0":
            return "Off"
    return None


def reboot_applies_bios():
    STATE["bios"].update(STATE["bios_pending"])
    STATE["bios_pending"] = {}


def system():
    settle_power()
    return {
        "@odata.id": SYS, "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": UUID, "Name": NAME, "UUID": UUID, "Manufacturer": "Metalfleet Lab",
        "Model": "vbmc-redfish", "SerialNumber": ARGS.serial, "AssetTag": "LAB-1",
        "PowerState": STATE["power"],
        "Boot": dict(STATE["boot"], **{"BootSourceOverrideTarget@Redfish.AllowableValues":
                                       ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]}),
        "Bios": {"@odata.id": f"{SYS}/Bios"},
        "Storage": {"@odata.id": f"{SYS}/Storage"},
        "Links": {"ManagedBy": [{"@odata.id": MGR}]},
        "Actions": {"#ComputerSystem.Reset": {
            "target": f"{SYS}/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown",
                                                  "ForceRestart", "PowerCycle"]}},
        "Oem": {"Lab": {"Note": "vendor extras are ignored by the agent"}},
    }


def reset(kind):
    delay = ARGS.power_delay
    if kind == "On":
        target = "On"
        hook("set", "power", "1")
        if STATE["power"] == "Off":
            reboot_applies_bios()
    elif kind in ("ForceOff", "GracefulShutdown"):
        target = "Off"
        hook("set", "power", "0")
    elif kind in ("ForceRestart", "PowerCycle"):
        target = "On"
        hook("set", "reset", "1")
        reboot_applies_bios()
    else:
        return error(400, f"ResetType {kind} is not supported",
                     "Base.1.0.ActionParameterValueNotInList")
    if delay > 0:
        STATE["pending_power"] = (target, time.time() + delay)
    else:
        STATE["power"] = target
    return 204, None


def download(task_id, uri):
    task = STATE["tasks"][task_id]
    try:
        with urllib.request.urlopen(uri, timeout=30) as r:
            data = r.read()
        digest = hashlib.sha256(data).hexdigest()
        with LOCK:
            STATE["firmware"] = digest[:12]
            task.update(TaskState="Completed", TaskStatus="OK", PercentComplete=100)
            task["Messages"].append({"Message": f"Image {uri} applied: {len(data)} bytes, "
                                                f"sha256 {digest}"})
    except Exception as e:  # noqa: BLE001 - any failure is the task's failure
        with LOCK:
            task.update(TaskState="Exception", TaskStatus="Critical")
            task["Messages"].append({"Message": f"Download of {uri} failed: {e}"})


def volume_json(vid):
    v = STATE["volumes"][vid]
    return {"@odata.id": f"{STG}/Volumes/{vid}", "Id": vid, "Name": v["Name"],
            "RAIDType": v["RAIDType"], "CapacityBytes": v["CapacityBytes"],
            "Links": {"Drives": [{"@odata.id": d} for d in v["Drives"]]}}


def route(method, path, body):
    """Returns (status, json or None, extra headers)."""
    coll = lambda ids: {"Members": [{"@odata.id": i} for i in ids],
                        "Members@odata.count": len(ids)}
    p = path.rstrip("/") or "/"
    if p == "/redfish/v1" and method == "GET":
        return 200, {"@odata.id": "/redfish/v1/", "RedfishVersion": "1.11.0",
                     "Systems": {"@odata.id": "/redfish/v1/Systems"},
                     "Managers": {"@odata.id": "/redfish/v1/Managers"},
                     "UpdateService": {"@odata.id": "/redfish/v1/UpdateService"},
                     "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                     "TaskService": {"@odata.id": "/redfish/v1/TaskService"},
                     "Links": {"Sessions": {"@odata.id":
                                            "/redfish/v1/SessionService/Sessions"}}}, {}
    if p == "/redfish/v1/Systems":
        return 200, coll([SYS]), {}
    if p == f"/redfish/v1/Systems/{NAME}":
        return 307, None, {"Location": SYS}
    if p == SYS and method == "GET":
        return 200, system(), {}
    if p == SYS and method == "PATCH":
        boot = (body or {}).get("Boot", {})
        allowed = ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]
        t = boot.get("BootSourceOverrideTarget")
        if t is not None and t not in allowed:
            return (*error(400, f"BootSourceOverrideTarget {t} is not allowed",
                           "Base.1.0.PropertyValueNotInList"), {})
        STATE["boot"].update({k: v for k, v in boot.items() if k in STATE["boot"]})
        if t:
            hook("set", "boot", {"Pxe": "pxe", "Cd": "cdrom"}.get(t, "default"))
        return 204, None, {}
    if p == f"{SYS}/Actions/ComputerSystem.Reset" and method == "POST":
        return (*reset((body or {}).get("ResetType")), {})
    if p == f"{SYS}/Bios":
        return 200, {"@odata.id": p, "Id": "Bios", "Attributes": STATE["bios"],
                     "@Redfish.Settings": {"SettingsObject": {"@odata.id": f"{p}/Settings"}}}, {}
    if p == f"{SYS}/Bios/Settings" and method == "GET":
        return 200, {"@odata.id": p, "Attributes": dict(STATE["bios"], **STATE["bios_pending"])}, {}
    if p == f"{SYS}/Bios/Settings" and method == "PATCH":
        attrs = (body or {}).get("Attributes") or {}
        unknown = [k for k in attrs if k not in STATE["bios"]]
        if unknown:
            return (*error(400, f"Unknown BIOS attribute {unknown[0]}",
                           "Base.1.0.PropertyUnknown"), {})
        STATE["bios_pending"].update(attrs)
        return 204, None, {}
    if p == f"{SYS}/Storage":
        return 200, coll([STG]), {}
    if p == STG:
        return 200, {"@odata.id": STG, "Id": "RAID.1", "Name": "Lab RAID controller",
                     "StorageControllers": [{"MemberId": "0", "SupportedRAIDTypes": RAID_TYPES}],
                     "Drives": [{"@odata.id": f"{STG}/Drives/{d}"} for d in DRIVES],
                     "Volumes": {"@odata.id": f"{STG}/Volumes"}}, {}
    for d, size in DRIVES.items():
        if p == f"{STG}/Drives/{d}":
            return 200, {"@odata.id": p, "Id": d, "Name": d, "CapacityBytes": size}, {}
    if p == f"{STG}/Volumes" and method == "GET":
        return 200, coll([f"{STG}/Volumes/{v}" for v in STATE["volumes"]]), {}
    if p == f"{STG}/Volumes" and method == "POST":
        b = body or {}
        raid = b.get("RAIDType")
        if raid not in RAID_TYPES:
            return (*error(400, f"RAIDType {raid} is not supported",
                           "Base.1.0.PropertyValueNotInList"), {})
        drives = [d.get("@odata.id") for d in (b.get("Links") or {}).get("Drives", [])]
        if any(d.rsplit("/", 1)[-1] not in DRIVES for d in drives):
            return (*error(400, "unknown drive in Links.Drives"), {})
        vid = str(STATE["next_volume"])
        STATE["next_volume"] += 1
        STATE["volumes"][vid] = {"Name": b.get("Name", f"vol{vid}"), "RAIDType": raid,
                                 "CapacityBytes": b.get("CapacityBytes") or 960 * 1000**3,
                                 "Drives": drives}
        return 201, volume_json(vid), {"Location": f"{STG}/Volumes/{vid}"}
    if p.startswith(f"{STG}/Volumes/"):
        vid = p.rsplit("/", 1)[-1]
        if vid not in STATE["volumes"]:
            return (*error(404, f"Volume {vid} not found", "Base.1.0.ResourceMissingAtURI"), {})
        if method == "DELETE":
            del STATE["volumes"][vid]
            return 204, None, {}
        return 200, volume_json(vid), {}
    if p == "/redfish/v1/Managers":
        return 200, coll([MGR]), {}
    if p == MGR:
        return 200, {"@odata.id": MGR, "Id": "bmc", "ManagerType": "BMC",
                     "FirmwareVersion": STATE["firmware"],
                     "EthernetInterfaces": {"@odata.id": f"{MGR}/EthernetInterfaces"},
                     "VirtualMedia": {"@odata.id": f"{MGR}/VirtualMedia"}}, {}
    if p == f"{MGR}/EthernetInterfaces":
        return 200, coll([f"{MGR}/EthernetInterfaces/eth0"]), {}
    if p == f"{MGR}/EthernetInterfaces/eth0":
        return 200, {"@odata.id": p, "Id": "eth0", "MACAddress": ARGS.lan_mac,
                     "IPv4Addresses": [lan_address()]}, {}
    if p == f"{MGR}/VirtualMedia":
        return 200, coll([f"{MGR}/VirtualMedia/Cd"]), {}
    if p == f"{MGR}/VirtualMedia/Cd":
        return 200, {"@odata.id": p, "Id": "Cd", "MediaTypes": ["CD", "DVD"],
                     "Image": STATE["media"] or "", "Inserted": STATE["media"] is not None,
                     "Actions": {
                         "#VirtualMedia.InsertMedia": {"target": f"{p}/Actions/VirtualMedia.InsertMedia"},
                         "#VirtualMedia.EjectMedia": {"target": f"{p}/Actions/VirtualMedia.EjectMedia"}}}, {}
    if p == f"{MGR}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia":
        STATE["media"] = (body or {}).get("Image")
        return 204, None, {}
    if p == f"{MGR}/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia":
        STATE["media"] = None
        return 204, None, {}
    if p == "/redfish/v1/UpdateService":
        return 200, {"@odata.id": p, "Actions": {"#UpdateService.SimpleUpdate": {
            "target": f"{p}/Actions/UpdateService.SimpleUpdate"}}}, {}
    if p == "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate" and method == "POST":
        uri = (body or {}).get("ImageURI")
        if not uri:
            return (*error(400, "ImageURI is required", "Base.1.0.ActionParameterMissing"), {})
        tid = str(STATE["next_id"])
        STATE["next_id"] += 1
        STATE["tasks"][tid] = {"@odata.id": f"/redfish/v1/TaskService/Tasks/{tid}", "Id": tid,
                               "TaskState": "Running", "TaskStatus": "OK",
                               "PercentComplete": 0,
                               "Messages": [{"Message": f"Downloading {uri}"}]}
        threading.Thread(target=download, args=(tid, uri), daemon=True).start()
        loc = f"/redfish/v1/TaskService/Tasks/{tid}"
        return 202, STATE["tasks"][tid], {"Location": loc}
    if p.startswith("/redfish/v1/TaskService/Tasks/"):
        t = STATE["tasks"].get(p.rsplit("/", 1)[-1])
        if t is None:
            return (*error(404, "no such task", "Base.1.0.ResourceMissingAtURI"), {})
        return 200, t, {}
    return (*error(404, f"{method} {path} not found", "Base.1.0.ResourceMissingAtURI"), {})


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("redfish_bmc: " + (fmt % args) + "\n")

    def reply(self, status, body, headers):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self):
        token = self.headers.get("X-Auth-Token")
        if token and token in STATE["sessions"].values():
            return True
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:  # noqa: BLE001
                return False
            return secrets.compare_digest(user, ARGS.user) and \
                secrets.compare_digest(pw, os.environ.get("VBMC_PASSWORD", ""))
        return False

    def handle_any(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self.reply(*error(400, "malformed JSON", "Base.1.0.MalformedJSON"), {})
        path = self.path.split("?", 1)[0]
        with LOCK:
            if path.rstrip("/") == "/redfish/v1/SessionService/Sessions" and method == "POST":
                b = body or {}
                if b.get("UserName") != ARGS.user or \
                        b.get("Password") != os.environ.get("VBMC_PASSWORD", ""):
                    return self.reply(*error(401, "Invalid username or password",
                                             "Base.1.0.NoValidSession"), {})
                if len(STATE["sessions"]) >= ARGS.max_sessions:
                    return self.reply(*error(503, "Maximum number of sessions reached",
                                             "Base.1.0.SessionLimitExceeded"), {})
                sid = str(STATE["next_id"])
                STATE["next_id"] += 1
                token = secrets.token_hex(16)
                STATE["sessions"][sid] = token
                loc = f"/redfish/v1/SessionService/Sessions/{sid}"
                return self.reply(201, {"@odata.id": loc, "Id": sid, "UserName": ARGS.user},
                                  {"X-Auth-Token": token, "Location": loc})
            if path.rstrip("/") != "/redfish/v1" and not self.authorised():
                return self.reply(*error(401, "Invalid username or password",
                                         "Base.1.0.NoValidSession"),
                                  {"WWW-Authenticate": 'Basic realm="vbmc"'})
            if path.startswith("/redfish/v1/SessionService/Sessions/") and method == "DELETE":
                sid = path.rstrip("/").rsplit("/", 1)[-1]
                if STATE["sessions"].pop(sid, None) is None:
                    return self.reply(*error(404, "no such session"), {})
                return self.reply(204, None, {})
            if path.rstrip("/") == "/redfish/v1/SessionService/Sessions":
                return self.reply(200, {"Members": [
                    {"@odata.id": f"/redfish/v1/SessionService/Sessions/{s}"}
                    for s in STATE["sessions"]]}, {})
            if method == "PATCH" and ARGS.require_if_match:
                # Like BMCs that refuse blind PATCHes: If-Match must carry the current ETag.
                cur_status, cur, _ = route("GET", path, None)
                tag = self.headers.get("If-Match")
                if tag is None:
                    return self.reply(*error(428, "If-Match header required",
                                             "Base.1.0.PreconditionRequired"), {})
                if cur_status == 200 and tag != etag_of(cur):
                    return self.reply(*error(412, "ETag does not match",
                                             "Base.1.0.PreconditionFailed"), {})
            status, out, headers = route(method, path, body)
            if method == "GET" and status == 200 and out is not None:
                headers = dict(headers, ETag=etag_of(out))
        self.reply(status, out, headers)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")


def lan_address():
    """The manager's IPv4 address: --lan-ip (static, no gateway: the lab's BMC VLAN has no
    router) or the fixed DHCP-style answer the rack agent's own tests expect."""
    if ARGS.lan_ip:
        return {"Address": ARGS.lan_ip, "SubnetMask": ARGS.lan_netmask,
                "Gateway": "0.0.0.0", "AddressOrigin": "Static"}
    return {"Address": "10.20.0.15", "SubnetMask": "255.255.255.0",
            "Gateway": "10.20.0.1", "AddressOrigin": "DHCP"}


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", default="admin")
    ap.add_argument("--serial", default="LAB-SN-0001")
    ap.add_argument("--power-delay", type=float, default=0.0)
    ap.add_argument("--max-sessions", type=int, default=4)
    ap.add_argument("--power-hook")
    ap.add_argument("--require-if-match", action="store_true")
    ap.add_argument("--lan-ip", help="the BMC's own address, reported by EthernetInterfaces/eth0")
    ap.add_argument("--lan-netmask", default="255.255.255.0")
    ap.add_argument("--lan-mac", default="52:54:00:AB:CD:EF")
    ARGS = ap.parse_args()
    srv = http.server.ThreadingHTTPServer((ARGS.listen, ARGS.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(f"redfish_bmc: listening on https://{ARGS.listen}:{ARGS.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
