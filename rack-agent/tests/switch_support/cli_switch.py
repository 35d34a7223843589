#!/usr/bin/env python3
"""Simulated switch CLI served over SSH (asyncssh): the test fixture for the SSH CLI driver.

Implements enough of four vendor grammars (Cisco NX-OS, Arista EOS, Dell OS10, Juniper Junos)
to keep per-port VLAN state, answer the `show` commands the driver uses in each vendor's
format, and reject bad commands with that vendor's error text. Password authentication
against --password-file; a fresh ed25519 host key whose public half is written, with the
listening port, to --ready-file ("<port>\\n<key type> <base64>\\n").

State is shared by all sessions of one server. Each received line is appended to
<state-dir>/transcript. A file <state-dir>/behind_back holding "<port> <mode>" (mode:
"access:<vlan>" or "down") is applied and removed before each answer: an operator changing
the switch behind the driver's back. A port named "*-ignore" in --ignore-ports silently keeps
its state whatever is configured (a switch that accepts config but does not take it).
While <state-dir>/hang exists, received lines are not answered (an unresponsive switch).
"""

import argparse
import asyncio
import os
import re
import sys

import asyncssh


def vlan_ok(text):
    return text.isdigit() and 1 <= int(text) <= 4094


def parse_list(text):
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not (vlan_ok(lo) and vlan_ok(hi)) or int(lo) > int(hi):
                return None
            out.update(range(int(lo), int(hi) + 1))
        elif vlan_ok(part):
            out.add(int(part))
        else:
            return None
    return out


def compact(vlans):
    vs = sorted(vlans)
    out = []
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(str(vs[i]) if i == j else "%d-%d" % (vs[i], vs[j]))
        i = j + 1
    return ",".join(out)


class Port:
    def __init__(self):
        self.shutdown = True
        self.trunk = False
        self.access = None  # None = default (VLAN 1)
        self.native = None  # IOS-like trunk native (None = default 1)
        self.allowed = None  # None = default (all on NX-OS/EOS, none on OS10)
        # Junos view
        self.disable = False
        self.esw = False
        self.jmode = None
        self.members = set()
        self.jnative = None

    def copy(self):
        p = Port()
        p.__dict__.update({k: (set(v) if isinstance(v, set) else v) for k, v in self.__dict__.items()})
        return p


class Switch:
    def __init__(self, dialect, ports, state_dir, ignore):
        self.dialect = dialect
        self.ports = {p: Port() for p in ports}
        if dialect == "junos":
            # Junos shows only configured interfaces; a factory-default access switch
            # config here disables the unused ports so they are listed.
            for port in self.ports.values():
                port.disable = True
        self.state_dir = state_dir
        self.ignore = ignore
        self.hostname = {"nxos": "n9k", "eos": "leaf1", "os10": "OS10", "junos": "ex4300"}[dialect]

    def log(self, line):
        with open(os.path.join(self.state_dir, "transcript"), "a") as f:
            f.write(line + "\n")

    def behind_back(self):
        path = os.path.join(self.state_dir, "behind_back")
        try:
            with open(path) as f:
                text = f.read().strip()
            os.remove(path)
        except FileNotFoundError:
            return
        port, mode = text.split()
        p = self.ports[port]
        if mode == "down":
            p.shutdown = True
            p.disable = True
        else:
            vlan = int(mode.split(":")[1])
            p.shutdown = False
            p.trunk = False
            p.access = vlan
            p.disable = False
            p.esw = True
            p.jmode = "access"
            p.members = {vlan}


# ---------------------------------------------------------------- IOS-like (NX-OS, EOS, OS10)

IOS_ERRORS = {
    "nxos": {
        "invalid": "% Invalid command at '^' marker.",
        "badif": "% Invalid interface format at '^' marker.",
        "badvlan": "% Invalid number, range is (1-3967)",
    },
    "eos": {
        "invalid": "% Invalid input",
        "badif": "% Invalid input (at token 1: '{arg}')",
        "badvlan": "% Invalid input (at token 3: '{arg}')",
    },
    "os10": {
        "invalid": "% Error: Unrecognized command.",
        "badif": "% Error: Interface {arg} not found.",
        "badvlan": "% Error: Invalid VLAN {arg}.",
    },
}


class IosSession:
    def __init__(self, sw):
        self.sw = sw
        self.mode = "exec"  # exec | config | if
        self.iface = None
        self.pending = None  # EOS configure session: copy of ports

    def prompt(self):
        h = self.sw.hostname
        if self.mode == "exec":
            return h + "#"
        if self.sw.dialect == "eos" and self.pending is not None:
            sess = "config-s-" + self.session_name[:6]
            return "%s(%s%s)#" % (h, sess, "-if-" + self.iface if self.mode == "if" else "")
        return "%s(%s)#" % (h, "config-if" if self.mode == "if" else "config")

    def err(self, kind, arg=""):
        text = IOS_ERRORS[self.sw.dialect][kind].format(arg=arg)
        if self.sw.dialect == "nxos" and "^" in text:
            return " " * 20 + "^\n" + text + "\n"
        return text + "\n"

    def ports(self):
        return self.pending if self.pending is not None else self.sw.ports

    def handle(self, line):
        words = line.split()
        d = self.sw.dialect
        if not words:
            return ""
        if line in ("terminal length 0",):
            return ""
        if self.mode == "exec":
            if line == "configure terminal" and d in ("nxos", "os10"):
                self.mode = "config"
                return ""
            m = re.fullmatch(r"configure session (\S+)", line)
            if m and d == "eos":
                self.session_name = m.group(1)
                self.pending = {k: v.copy() for k, v in self.sw.ports.items()}
                self.mode = "config"
                return ""
            show = {
                "nxos": r"show running-config interface(?: (\S+))?",
                "eos": r"show running-config(?: interfaces (\S+))?",
                "os10": r"show running-configuration interface(?: (\S+))?",
            }[d]
            m = re.fullmatch(show, line)
            if m:
                name = m.group(1)
                if name is not None and name not in self.sw.ports:
                    return self.err("badif", name)
                return self.show(name)
            return self.err("invalid")
        # config / interface modes
        if line == "end" and d in ("nxos", "os10"):
            self.mode = "exec"
            return ""
        if line == "commit" and d == "eos":
            for name, p in self.pending.items():
                if name not in self.sw.ignore:
                    self.sw.ports[name] = p
            self.pending = None
            self.mode = "exec"
            return ""
        if line == "abort" and d == "eos":
            self.pending = None
            self.mode = "exec"
            return ""
        if line == "exit":
            self.mode = "config" if self.mode == "if" else "exec"
            return ""
        if words[0] == "interface" and len(words) == 2:
            if words[1] not in self.sw.ports:
                return self.err("badif", words[1])
            self.iface = words[1]
            self.mode = "if"
            return ""
        if self.mode != "if":
            return self.err("invalid")
        p = self.ports()[self.iface]
        if self.iface in self.sw.ignore and self.pending is None:
            p = p.copy()  # accepted, not kept
        if line == "shutdown":
            p.shutdown = True
        elif line == "no shutdown":
            p.shutdown = False
        elif line == "switchport" and d == "nxos":
            pass
        elif line == "switchport mode access":
            p.trunk = False
        elif line == "switchport mode trunk":
            p.trunk = True
        elif line == "no switchport access vlan":
            p.access = None
        elif line == "no switchport trunk native vlan" and d != "os10":
            p.native = None
        elif line == "no switchport trunk allowed vlan":
            p.allowed = None
        elif len(words) == 4 and words[:3] == ["switchport", "access", "vlan"]:
            if not vlan_ok(words[3]) or (d == "nxos" and int(words[3]) > 3967):
                return self.err("badvlan", words[3])
            p.access = int(words[3])
        elif len(words) == 5 and words[:4] == ["switchport", "trunk", "native", "vlan"] and d != "os10":
            if not vlan_ok(words[4]) or (d == "nxos" and int(words[4]) > 3967):
                return self.err("badvlan", words[4])
            p.native = int(words[4])
        elif len(words) == 5 and words[:4] == ["switchport", "trunk", "allowed", "vlan"]:
            s = parse_list(words[4])
            if s is None or (d == "nxos" and any(v > 3967 for v in s)):
                return self.err("badvlan", words[4])
            p.allowed = s
        else:
            return self.err("invalid")
        return ""

    def show(self, only):
        d = self.sw.dialect
        out = []
        if d == "nxos":
            out += ["", "!Command: show running-config interface", "!Time: Sat Nov 21 13:00:00 2026", "",
                    "version 9.3(8) Bios:version 05.45", ""]
            out += ["interface mgmt0", "  vrf member management", "  ip address 10.0.0.10/24", ""] if only is None else []
        elif d == "eos":
            out += ["! Command: show running-config", "! device: leaf1 (DCS-7050SX3-48YC8, EOS-4.28.3M)", "!",
                    "hostname leaf1", "!"]
        else:
            out += ["!"]
        ind = {"nxos": "  ", "eos": "   ", "os10": " "}[d]
        for name, p in self.sw.ports.items():
            if only is not None and name != only:
                continue
            out.append("interface " + name)
            body = []
            if d == "nxos":
                body.append("switchport")
            if p.trunk:
                body.append("switchport mode trunk")
            if p.access is not None and (not p.trunk or d == "os10"):
                body.append("switchport access vlan %d" % p.access)
            if p.trunk and p.native is not None and d != "os10":
                body.append("switchport trunk native vlan %d" % p.native)
            if p.trunk and p.allowed is not None:
                body.append("switchport trunk allowed vlan " + (compact(p.allowed) or "none"))
            if d == "eos":
                if p.shutdown:
                    body.append("shutdown")
            else:
                body.append("shutdown" if p.shutdown else "no shutdown")
            if d == "os10":
                body.append("flowcontrol receive off")
            out += [ind + b for b in body]
            out.append("!" if d != "nxos" else "")
        if d == "eos" and only is None:
            out += ["interface Management1", "   ip address 10.0.0.11/24", "!", "end"]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------- Junos


class JunosSession:
    def __init__(self, sw):
        self.sw = sw
        self.config = False
        self.candidate = None

    def prompt(self):
        return ("\n[edit]\n" if self.config else "") + "metalfleet@ex4300" + ("#" if self.config else ">")

    def handle(self, line):
        words = line.split()
        if not words:
            return ""
        if not self.config:
            if line == "set cli screen-length 0":
                return "Screen length set to 0\n"
            if line == "configure private":
                self.config = True
                self.candidate = {k: v.copy() for k, v in self.sw.ports.items()}
                self.unknown = []
                return "warning: uncommitted changes will be discarded on exit\nEntering configuration mode\n"
            m = re.fullmatch(r"show configuration interfaces(?: (\S+))? \| display set", line)
            if m:
                return self.show(m.group(1))
            return "                    ^\nunknown command.\n"
        if line == "commit and-quit":
            if self.unknown:
                name = self.unknown[0]
                return ("[edit interfaces %s]\n  'unit 0'\n    error: device %s not found\n"
                        "error: configuration check-out failed\n" % (name, name))
            for name, p in self.candidate.items():
                if name not in self.sw.ignore:
                    self.sw.ports[name] = p
            self.config = False
            return "commit complete\nExiting configuration mode\n"
        if line == "rollback 0":
            self.candidate = {k: v.copy() for k, v in self.sw.ports.items()}
            self.unknown = []
            return "load complete\n"
        if line == "exit configuration-mode":
            self.config = False
            return "Exiting configuration mode\n"
        if len(words) >= 3 and words[0] in ("set", "delete") and words[1] == "interfaces":
            name = words[2]
            rest = words[3:]
            if name not in self.candidate:
                if re.fullmatch(r"(ge|xe|et)-\d+/\d+/\d+", name):
                    # Valid syntax for a port this chassis lacks: fails at commit.
                    self.unknown.append(name)
                    self.candidate[name] = Port()
                else:
                    return "                    ^\nsyntax error.\n"
            p = self.candidate[name]
            esw = ["unit", "0", "family", "ethernet-switching"]
            if words[0] == "delete":
                if rest == esw:
                    if not p.esw:
                        return "warning: statement not found\n"
                    p.esw, p.jmode, p.members = False, None, set()
                elif rest == ["native-vlan-id"]:
                    if p.jnative is None:
                        return "warning: statement not found\n"
                    p.jnative = None
                elif rest == ["disable"]:
                    if not p.disable:
                        return "warning: statement not found\n"
                    p.disable = False
                else:
                    return "                    ^\nsyntax error.\n"
                return ""
            if rest == ["disable"]:
                p.disable = True
            elif len(rest) == 2 and rest[0] == "native-vlan-id":
                if not vlan_ok(rest[1]):
                    return "error: Value %s is not within range (1..4094)\n" % rest[1]
                p.jnative = int(rest[1])
            elif rest[:4] == esw and rest[4:5] == ["interface-mode"] and len(rest) == 6 and rest[5] in ("access", "trunk"):
                p.esw, p.jmode = True, rest[5]
            elif rest[:4] == esw and rest[4:6] == ["vlan", "members"] and len(rest) == 7:
                s = parse_list(rest[6])
                if s is None:
                    return "error: vlan members %s: invalid VLAN id\n" % rest[6]
                p.esw = True
                p.members |= s
            else:
                return "                    ^\nsyntax error.\n"
            return ""
        return "                    ^\nsyntax error.\n"

    def show(self, only):
        out = []
        for name, p in self.sw.ports.items():
            if only is not None and name != only:
                continue
            if p.disable:
                out.append("set interfaces %s disable" % name)
            if p.jnative is not None:
                out.append("set interfaces %s native-vlan-id %d" % (name, p.jnative))
            if p.esw:
                base = "set interfaces %s unit 0 family ethernet-switching" % name
                if p.jmode:
                    out.append(base + " interface-mode " + p.jmode)
                for part in compact(p.members).split(","):
                    if part:
                        out.append(base + " vlan members " + part)
        if only is None:
            out.append("set interfaces me0 unit 0 family inet address 10.0.0.13/24")
        return "\n".join(out) + ("\n" if out else "")


# ---------------------------------------------------------------- SSH server


class Server(asyncssh.SSHServer):
    def __init__(self, password):
        self.password = password

    def begin_auth(self, username):
        return True

    def password_auth_supported(self):
        return True

    def validate_password(self, username, password):
        return username == "metalfleet" and password == self.password


def make_process_handler(sw):
    async def handle(process):
        sess = JunosSession(sw) if sw.dialect == "junos" else IosSession(sw)
        banner = "\nUser Access Verification\n\n" if sw.dialect != "junos" else "--- JUNOS 21.4R3 built 2022-09-01\n"
        process.stdout.write(banner + sess.prompt() + " ")
        try:
            while True:
                line = await process.stdin.readline()
                if not line:
                    break
                line = line.rstrip("\r\n")
                sw.log(line)
                sw.behind_back()
                # An unresponsive switch: while <state-dir>/hang exists, no answers.
                while os.path.exists(os.path.join(sw.state_dir, "hang")):
                    await asyncio.sleep(0.05)
                if line.strip() in ("exit", "logout", "quit") and (
                    (isinstance(sess, IosSession) and sess.mode == "exec")
                    or (isinstance(sess, JunosSession) and not sess.config)
                ):
                    break
                out = sess.handle(line.strip())
                process.stdout.write(out + sess.prompt() + " ")
        except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, ConnectionError):
            pass
        process.exit(0)

    return handle


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", required=True, choices=["nxos", "eos", "os10", "junos"])
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--ignore-ports", default="")
    args = ap.parse_args()
    with open(args.password_file) as f:
        password = f.readline().rstrip("\n")
    ignore = set(p for p in args.ignore_ports.split(",") if p)
    sw = Switch(args.dialect, args.ports.split(","), args.state_dir, ignore)
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        lambda: Server(password),
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=make_process_handler(sw),
        encoding="utf-8",
        line_editor=False,
    )
    port = server.sockets[0].getsockname()[1]
    pub = key.export_public_key("openssh").decode().split()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n%s %s\n" % (port, pub[0], pub[1]))
    os.rename(tmp, args.ready_file)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
