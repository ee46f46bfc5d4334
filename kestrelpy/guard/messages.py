"""Every sentence the startup guard shows a user, in one place.

A `Message` pairs a stable finding code with a summary template and remedy templates, most targeted
first. Several messages may share a code when the cause is the same and only the wording differs (for
example the two directions of a dual-stack conflict). Templates use `str.format` fields; the verdict
supplies them. `FACT_*` templates describe the evidence a finding rests on.
"""

# ruff: noqa: E501  (a catalogue of prose: sentences stay whole rather than being cut to fit)
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    code: str
    summary: str
    remedies: tuple[str, ...] = ()


# Remedies shared by several messages --------------------------------------------------------------

_HIGH_PORT = (
    "Use port {suggested_port} (or any port from {threshold} up) and put a reverse proxy or a port mapping in "
    "front of it: `--port {suggested_port}`. Nothing then needs privileges."
)
_SOCKET_ACTIVATION = (
    "Let systemd bind the port and hand it over: a socket unit with `ListenStream={port}` plus a service with "
    "`User=` that runs kestrelpy on the inherited socket (`--bind fd://3`); kestrelpy itself never needs "
    "the privilege."
)
_AMBIENT = (
    "Grant this one capability and nothing else, in the service unit: `AmbientCapabilities=CAP_NET_BIND_SERVICE` "
    "with `User=` (`CapabilityBoundingSet=CAP_NET_BIND_SERVICE` and `NoNewPrivileges=yes` both work with it). "
    "Outside systemd: `sudo setpriv --reuid=USER --regid=GROUP --init-groups --inh-caps=+net_bind_service "
    "--ambient-caps=+net_bind_service kestrelpy ...`."
)
_SYSCTL = (
    "Lower the floor to exactly this port: `sudo sysctl -w net.ipv4.ip_unprivileged_port_start={port}`, kept "
    "across reboots with `echo net.ipv4.ip_unprivileged_port_start={port} | sudo tee "
    "/etc/sysctl.d/50-kestrelpy.conf`. This applies to the whole network namespace: every local user may "
    "then bind ports {port} to {threshold_last}."
)
_CONTAINER = (
    "In a container, set it for the container's own network instead of the host: `docker run --sysctl "
    "net.ipv4.ip_unprivileged_port_start={port} ...` (Podman: the same flag), or in Kubernetes "
    '`securityContext.sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: "{port}"}}]`. Docker 20.10+ '
    "already uses 0 unless the container shares the host network."
)
_NO_SETCAP = (
    "Do not run `setcap cap_net_bind_service=+ep` on the Python interpreter: every script any user runs with "
    "it gets the capability, Python still honours PYTHONPATH so anyone can load code into that privileged "
    "process, a venv's `python` is a symlink so the capability lands on the shared system binary, "
    "`NoNewPrivileges=yes` ignores it, and the next package upgrade silently removes it."
)
_OTHER_PORT = "Or choose another port, for example `--port {free_port}`."
_ATTACH = (
    "If none of this fits, run `kestrelpy check --host {host} --port {port} --dump-facts DIR` and attach DIR "
    "to a bug report."
)

# Per-OS commands that show who holds a port.
WHO_HOLDS = {
    "linux": "`sudo ss -ltnp 'sport = :{port}'` (or `sudo lsof -nP -iTCP:{port} -sTCP:LISTEN`)",
    "darwin": "`sudo lsof -nP -iTCP:{port} -sTCP:LISTEN`",
    "win32": '`netstat -ano -p TCP | findstr :{port}` and then `tasklist /svc /fi "PID eq <pid>"`',
}
STOP_PID = {
    "linux": "Stop it: `kill {pid}`.",
    "darwin": "Stop it: `kill {pid}`.",
    "win32": "Stop it: `taskkill /PID {pid}`.",
}
TASKKILL = "`taskkill /PID {pid}`"
FIND_AND_STOP = "Find it with {who_holds} and stop it."


# The catalogue ------------------------------------------------------------------------------------

MESSAGES: dict[str, Message] = {
    "linux_privileged_port": Message(
        "KP-LINUX-PRIVILEGED-PORT",
        "Port {port} is privileged on this host: binding a port below {threshold} needs root or the "
        "CAP_NET_BIND_SERVICE capability, and kestrelpy runs as {who} without it.",
        (_HIGH_PORT, _SOCKET_ACTIVATION, _AMBIENT, _SYSCTL, _CONTAINER, _NO_SETCAP),
    ),
    "linux_userns_not_owner": Message(
        "KP-LINUX-USERNS-NOT-OWNER",
        "kestrelpy holds CAP_NET_BIND_SERVICE, but only inside a user namespace that does not own this network "
        "namespace (it runs as {who} of a user namespace whose network belongs to the parent), so the kernel "
        "still treats port {port} as privileged: ports below {threshold} need the capability in the parent.",
        (
            _HIGH_PORT,
            "Give the user namespace its own network namespace, which it then owns: `unshare --user "
            "--map-root-user --net` or a rootless container with its own network, and publish the port from "
            "outside.",
            "Or grant the privilege in the parent namespace (the host): systemd socket activation, "
            "`AmbientCapabilities=CAP_NET_BIND_SERVICE`, or `net.ipv4.ip_unprivileged_port_start={port}` set "
            "by the parent for this network namespace.",
            _NO_SETCAP,
        ),
    ),
    "linux_authbind_denied": Message(
        "KP-LINUX-AUTHBIND-DENIED",
        "authbind refused port {port} (the bind failed with EPERM): no /etc/authbind/byport/{port} rule lets "
        "{who} bind it.",
        (
            "Allow this user: `sudo touch /etc/authbind/byport/{port} && sudo chown {user} "
            "/etc/authbind/byport/{port} && sudo chmod 500 /etc/authbind/byport/{port}`.",
            _HIGH_PORT,
        ),
    ),
    "linux_lsm_denied": Message(
        "KP-LINUX-LSM-DENIED",
        "The kernel's port rules allow this bind ({allowed_because}), yet it was refused with EACCES; a "
        "security module is active ({lsm}) and is the likely cause.",
        (
            "Look for the denial: `sudo ausearch -m avc -ts recent` (SELinux) or `sudo journalctl -k | grep "
            "DENIED` (AppArmor).",
            "SELinux: label the port for the confined domain, e.g. `sudo semanage port -a -t http_port_t -p "
            "tcp {port}`, or pick a port the policy already allows (`semanage port -l | grep http_port_t`). "
            "AppArmor: allow `network inet stream,` in the profile, or run kestrelpy unconfined.",
        ),
    ),
    "container_publish_hint": Message(
        "KP-CONTAINER-PUBLISH-HINT",
        "Inside this {container} container port {port} binds without privileges (its "
        "ip_unprivileged_port_start is {threshold}). If publishing it from a rootless engine (`-p "
        "{port}:{port}`) fails, the refusal comes from the host side, which kestrelpy cannot see.",
        (
            "Publish a high host port instead: `-p 8080:{port}`.",
            "Or, on the host: `sudo sysctl -w net.ipv4.ip_unprivileged_port_start={port}` (host-wide).",
        ),
    ),
    "bind_denied": Message(
        "KP-BIND-DENIED",
        "The operating system refused to let kestrelpy bind {endpoint} ({error}), and none of the causes the "
        "guard knows about applies.",
        (
            _OTHER_PORT,
            "Check security software or policy on this host (an LSM, seccomp, an endpoint-protection product).",
            _ATTACH,
        ),
    ),
    "port_in_use": Message(
        "KP-PORT-IN-USE",
        "Port {port} on {address} is already in use by {holder}.",
        ("{stop}", _OTHER_PORT),
    ),
    "port_in_use_hidden": Message(
        "KP-PORT-IN-USE",
        "Port {port} on {address} is already in use by {holder}; this user cannot see which process it is.",
        ("See the process with {who_holds} and stop it.", _OTHER_PORT),
    ),
    "port_in_use_unseen": Message(
        "KP-PORT-IN-USE",
        "Port {port} on {address} is already in use, but the listener is not visible from here (another "
        "network namespace or container, or it closed in the meantime).",
        ("See what holds it with {who_holds} (run it where the other server runs).", _OTHER_PORT),
    ),
    "dualstack_v6_holder": Message(
        "KP-PORT-IN-USE-DUAL-STACK",
        "Port {port} is taken for IPv4 as well: {holder} listens on [::]:{port}, and an IPv6 wildcard socket "
        "without IPV6_V6ONLY also receives IPv4 connections, so {address}:{port} conflicts with it.",
        (
            "{stop}",
            "If that server should serve IPv6 only, make it set IPV6_V6ONLY on its [::] socket; then "
            "{address}:{port} is free.",
            _OTHER_PORT,
        ),
    ),
    "dualstack_v4_holder": Message(
        "KP-PORT-IN-USE-DUAL-STACK",
        "kestrelpy listens on [::]:{port} as a dual-stack socket, which also covers IPv4 port {port}; {holder} "
        "already listens there on {holder_address}.",
        (
            "{stop}",
            "Or listen on specific addresses that do not overlap it (for example `--bind [::1]:{port}`).",
            _OTHER_PORT,
        ),
    ),
    "port_time_wait": Message(
        "KP-PORT-TIME-WAIT",
        "Nothing listens on port {port}, but {count} connection(s) of a previous server on it are still in "
        "TIME_WAIT for up to {seconds} more seconds; because that server did not set SO_REUSEADDR, the kernel "
        "keeps the port reserved until they expire.",
        (
            "Wait {seconds} seconds and start again.",
            "If the previous server is yours, make it set SO_REUSEADDR on its listener (kestrelpy always does "
            "on Unix), and the next restart will not wait.",
            _OTHER_PORT,
        ),
    ),
    "port_time_wait_warning": Message(
        "KP-PORT-TIME-WAIT",
        "Port {port} has {count} connection(s) in TIME_WAIT ({seconds} s left). kestrelpy sets SO_REUSEADDR, so "
        "they only block the bind if the server that left them did not.",
        ("If the bind fails, wait {seconds} seconds or choose another port: `--port {free_port}`.",),
    ),
    "reuseport_shared": Message(
        "KP-PORT-REUSEPORT-SHARED",
        "{holder} already listens on port {port} as the same user; with SO_REUSEPORT the kernel will silently "
        "split incoming connections between it and kestrelpy.",
        ("{stop} Or start kestrelpy without --reuse-port.",),
    ),
    "endpoints_overlap": Message(
        "KP-ENDPOINTS-OVERLAP",
        "{endpoint} overlaps {other}, which is also in this command's endpoint list; the second bind will fail "
        "with 'address already in use'.",
        ("Remove one of them. A wildcard (0.0.0.0 or [::]) already covers every specific address on the same port.",),
    ),
    "addr_not_available": Message(
        "KP-ADDR-NOT-AVAILABLE",
        "{address} is not assigned to any network interface of this machine, so nothing can listen on it.",
        (
            "Listen on 0.0.0.0 or [::] (every interface: `--host 0.0.0.0`) or on 127.0.0.1 (this machine only) "
            "instead.",
            "Or use an address this machine has; list them with {list_addresses}.",
            "In a container, the host's addresses are not the container's own: listen on 0.0.0.0 inside it and "
            "publish the port on the host's address (`docker run -p {publish}:{port}:{port} ...`; Podman takes "
            "the same flag).",
            "{ipv6_note}",
        ),
    ),
    "host_unresolved": Message(
        "KP-HOST-UNRESOLVED",
        "The host name {host} does not resolve to any address, so kestrelpy cannot tell where to listen.",
        (
            "Check the spelling, DNS and the hosts file, or give an IP address instead (`--host 127.0.0.1`, "
            "`--host 0.0.0.0`).",
        ),
    ),
    "mac_privileged_address": Message(
        "KP-MAC-PRIVILEGED-ADDRESS",
        "macOS lets a process without root bind ports below 1024 only on the wildcard address (0.0.0.0 or ::); "
        "{host} is a specific address, so port {port} needs root there.",
        (
            "Use port {suggested_port} (any port from 1024 up): `--port {suggested_port}`.",
            "Or listen on the wildcard: `--host 0.0.0.0 --port {port}` works without root, but it exposes the "
            "server to your network and the application firewall will ask whether Python may accept incoming "
            "connections.",
            "Or let launchd bind the port and pass the socket (a LaunchDaemon with a `Sockets` entry); run the "
            "whole server with `sudo` only as a last resort.",
        ),
    ),
    "mac_airplay": Message(
        "KP-MAC-AIRPLAY",
        "Port {port} is held by {holder}: macOS's AirPlay Receiver listens on ports 5000 and 7000 since macOS 12 "
        "Monterey.",
        (
            "Turn it off: System Settings, General, AirDrop & Handoff, AirPlay Receiver.",
            _OTHER_PORT,
        ),
    ),
    "win_http_sys": Message(
        "KP-WIN-HTTP-SYS",
        'Port {port} is held by the Windows HTTP driver (http.sys, shown as PID 4 "System") on behalf of {registrant}.',
        (
            "Stop or reconfigure what registered the URL: {stop_service}.",
            "To share the port, make http.sys listen only on chosen addresses, as administrator: `netsh http "
            "add iplisten ipaddress=ADDRESS-HTTP.SYS-KEEPS` (once the list has an entry http.sys listens only "
            "there; restart the HTTP service or reboot to apply), then bind kestrelpy to another address.",
            "Last resort, stop the driver: `net stop http /y`, and `sc config http start= disabled` to keep it "
            "off. That stops everything using http.sys: IIS, WinRM and PowerShell remoting, SQL Server Reporting "
            "Services, BranchCache and every other registration `netsh http show servicestate` lists; Windows "
            "Update has been reported failing on servers where it was left disabled.",
            "`netsh http add urlacl` does not help here: it only lets non-administrator http.sys clients register "
            "URLs, and never frees a port for kestrelpy, which does not use http.sys.",
            _OTHER_PORT,
        ),
    ),
    "win_excluded_range": Message(
        "KP-WIN-EXCLUDED-RANGE",
        "Windows has reserved ports {start}-{end} (an excluded port range{administered}, usually taken by "
        "Hyper-V, WinNAT, WSL 2 or Docker Desktop); nothing listens on port {port}, yet no program may bind it.",
        (
            "Pick a port outside every excluded range; the nearest is {free_port}: `--port {free_port}`. List the "
            "ranges with `netsh interface ipv4 show excludedportrange protocol=tcp`.",
            "As administrator, reserve the port before WinNAT takes it: `net stop winnat`, then `netsh int ipv4 "
            "add excludedportrange protocol=tcp startport={port} numberofports=1`, then `net start winnat`.",
            "{dynamic_remedy}",
        ),
    ),
    "win_exclusive_holder": Message(
        "KP-WIN-EXCLUSIVE-HOLDER",
        "{holder} holds port {port} exclusively: Windows answered WSAEACCES (10013) rather than 10048, which "
        "means the holder bound it with SO_EXCLUSIVEADDRUSE or is a kernel driver.",
        ("{stop}", _OTHER_PORT),
    ),
    "win_denied_unexplained": Message(
        "KP-WIN-ACCESS-DENIED",
        "Windows refused port {port} with WSAEACCES (10013), but no listener holds it and it is in no excluded "
        "range the guard could read{probe_note}.",
        (
            "Run `netsh interface ipv4 show excludedportrange protocol=tcp` and `netstat -ano -p TCP | findstr "
            ":{port}`; ranges can change after a reboot or when Hyper-V, WSL 2 or Docker Desktop start.",
            _OTHER_PORT,
            _ATTACH,
        ),
    ),
    "win_firewall_prompt": Message(
        "KP-WIN-FIREWALL-PROMPT",
        "Listening on {host} (not loopback) makes Windows Defender Firewall ask whether {executable} may accept "
        "incoming connections. The bind succeeds either way, but other machines stay blocked until it is "
        "allowed, and once the prompt is cancelled Windows stops asking.",
        ("For local use, listen on 127.0.0.1 and no prompt appears.",),
    ),
    "wsl_windows_holds_port": Message(
        "KP-WSL-WINDOWS-HOLDS-PORT",
        "Windows itself already listens on port {port} ({holder}). kestrelpy can listen on it inside WSL 2, but "
        "http://localhost:{port} opened on Windows will reach the Windows program, not kestrelpy.",
        ("Choose a port Windows does not use: `--port {free_port}`.", "{stop}"),
    ),
    "fd_not_socket": Message(
        "KP-FD-NOT-SOCKET",
        "Inherited descriptor {fd} is not an open socket, so there is nothing to listen on.",
        (
            "Check the socket unit or the parent process that should pass it (systemd: `ListenStream=` and "
            "`LISTEN_FDS`), and that the descriptor number matches.",
        ),
    ),
    "fd_not_listening": Message(
        "KP-FD-NOT-LISTENING",
        "Inherited descriptor {fd} is a socket{bound} but is not listening.",
        ("Pass a listening stream socket (systemd: a `ListenStream=` socket unit without `Accept=yes`).",),
    ),
    "unix_in_use": Message(
        "KP-UNIX-SOCKET-IN-USE",
        "The socket path {path} already exists{holder_note}.",
        (
            "If another server still listens there, stop it; if the file is left over from a crash, remove it: "
            "`rm {path}`.",
            "Or choose another path.",
        ),
    ),
    "unix_denied": Message(
        "KP-UNIX-SOCKET-DENIED",
        "kestrelpy may not create the socket {path} ({error}).",
        (
            "Make its directory writable for this user, or choose a path in a directory it owns "
            "(for example under $XDG_RUNTIME_DIR).",
        ),
    ),
    "bind_failed": Message(
        "KP-BIND-FAILED",
        "Binding {endpoint} failed: {error}.",
        (_ATTACH,),
    ),
    # TLS: the certificate and key of the https endpoints (tlsrules.py) ----------------------------------
    "tls_file_missing": Message(
        "KP-TLS-FILE-MISSING",
        "{role} {path} does not exist.",
        (
            "Give the path of the PEM file that exists, for example {setting} (a relative path is taken from "
            "the directory kestrelpy starts in).",
        ),
    ),
    "tls_file_unreachable": Message(
        "KP-TLS-FILE-UNREADABLE",
        "{role} {path} cannot be reached by {who}: a directory on its path does not let this user through.",
        (
            "Give the directories on the path search permission for this user (`namei -l {path}` shows which one "
            "stops it); for Let's Encrypt: `sudo setfacl -m u:{user}:x /etc/letsencrypt/live "
            "/etc/letsencrypt/archive`. Or copy the file where {who} can read it.",
        ),
    ),
    "tls_file_unreadable": Message(
        "KP-TLS-FILE-UNREADABLE",
        "{role} {path} is not readable by {who}: it belongs to {owner}:{group} with mode {mode:04o}.",
        (
            "Let this one user read it: `sudo setfacl -m u:{user}:r {path}` (a renewal writes a new file, so "
            "repeat it in a certbot --deploy-hook).",
            "Or give it to a group the user is in: `sudo chgrp ssl-cert {path} && sudo chmod 0640 {path}` and "
            "`sudo usermod -aG ssl-cert {user}` (certbot keeps these settings on renewal of privkey.pem).",
            "Or copy it where {who} can read it on each renewal (a certbot --deploy-hook running `install -m 0600 "
            "-o {user} {path} DEST`) and point {role} at the copy.",
        ),
    ),
    "tls_key_mismatch": Message(
        "KP-TLS-KEY-MISMATCH",
        "The private key in {keyfile} does not belong to any certificate in {certfile}.",
        (
            "Use the key that was generated with this certificate's request (with Let's Encrypt, privkey.pem and "
            "fullchain.pem from the same live/NAME directory), or reissue the certificate for this key.",
        ),
    ),
    "tls_key_no_password": Message(
        "KP-TLS-KEY-PASSWORD",
        "The private key in {keyfile} is encrypted and no password was given.",
        (
            "Give its password in the environment: `KESTRELPY_SSL_KEYFILE_PASSWORD=... kestrelpy ...` (or "
            "--ssl-keyfile-password, which other users can see in the process list).",
            "Or store the key unencrypted, readable by this user only: `openssl pkey -in {keyfile} -out KEY.pem && "
            "chmod 0600 KEY.pem`.",
        ),
    ),
    "tls_endpoint_key_no_password": Message(
        "KP-TLS-KEY-PASSWORD",
        "The private key in {keyfile} is encrypted and no password was given.",
        (
            "Name the environment variable that holds its password in the endpoint's certificate, "
            '`certificate = {{ ..., password_env = "KEY_PASSWORD" }}` in [{origin}], and set that variable.',
            "Or store the key unencrypted, readable by this user only: `openssl pkey -in {keyfile} -out KEY.pem && "
            "chmod 0600 KEY.pem`.",
        ),
    ),
    "tls_endpoint_key_wrong_password": Message(
        "KP-TLS-KEY-PASSWORD",
        "The password given for the encrypted private key in {keyfile} is wrong.",
        (
            "Check the variable that password_env names in [{origin}]: `openssl pkey -in {keyfile} -noout` asks "
            "for the password and says whether it opens the key.",
        ),
    ),
    "tls_key_wrong_password": Message(
        "KP-TLS-KEY-PASSWORD",
        "The password given for the encrypted private key in {keyfile} is wrong.",
        (
            "Check KESTRELPY_SSL_KEYFILE_PASSWORD (or --ssl-keyfile-password): `openssl pkey -in {keyfile} "
            "-noout` asks for the password and says whether it opens the key.",
        ),
    ),
    "tls_unloadable": Message(
        "KP-TLS-UNLOADABLE",
        "The certificate and key cannot be loaded from {files}: {error}.",
        (
            "Both must be PEM (text starting with -----BEGIN); convert DER or PKCS#12 with `openssl x509 -inform "
            "der` or `openssl pkcs12 -nodes`.",
        ),
    ),
    "tls_leaf_not_first": Message(
        "KP-TLS-CHAIN-ORDER",
        "The certificate the key belongs to ({subject}) is number {position} in {certfile}; the server's own "
        "certificate must come first, or clients are sent the wrong one.",
        (
            "Put the certificates in order, the server's own first and then each issuer: with Let's Encrypt use "
            "fullchain.pem as it is, or `cat cert.pem chain.pem > fullchain.pem`.",
        ),
    ),
    "tls_chain_order": Message(
        "KP-TLS-CHAIN-ORDER",
        "In {certfile}, certificate {position} ({subject}) is not signed by the one after it ({next_subject}); "
        "clients that build the chain in the order sent will reject it.",
        (
            "Order the file leaf first, then the certificate that signed it, and so on towards the root (the root "
            "itself may be left out): `cat cert.pem intermediate.pem > fullchain.pem`.",
        ),
    ),
    "tls_expired": Message(
        "KP-TLS-EXPIRED",
        "The certificate {subject} in {certfile} expired on {date} ({days} day(s) ago); clients refuse it.",
        (
            "Renew it (Let's Encrypt: `sudo certbot renew`, then restart kestrelpy) and check that renewal is "
            "scheduled (`systemctl list-timers certbot.timer`).",
        ),
    ),
    "tls_not_yet_valid": Message(
        "KP-TLS-NOT-YET-VALID",
        "The certificate {subject} in {certfile} is not valid before {date}; clients refuse it until then.",
        (
            "Check this host's clock (`timedatectl`; enable NTP with `sudo timedatectl set-ntp true`), or use the "
            "certificate that is valid now.",
        ),
    ),
    "tls_expiring": Message(
        "KP-TLS-EXPIRING",
        "The certificate {subject} in {certfile} expires on {date}, in {days} day(s).",
        (
            "Renew it now (Let's Encrypt renews from 30 days before: `sudo certbot renew --dry-run` shows why it "
            "has not) and restart kestrelpy to load the new one.",
        ),
    ),
    "tls_name_mismatch": Message(
        "KP-TLS-NAME-MISMATCH",
        "The certificate in {certfile} does not name {host}: clients connecting to https://{host_port}/ will "
        "reject it. It names {names}.",
        (
            "Issue it for this name too (`certbot certonly -d {host} -d ...`), or listen on, and connect to, one "
            "of the names it covers.",
        ),
    ),
    "tls_self_signed": Message(
        "KP-TLS-SELF-SIGNED",
        "The certificate {subject} in {certfile} is self-signed: browsers and clients warn or refuse unless "
        "they are told to trust it.",
        (
            "Fine for development. For others to connect, use a certificate from a CA (Let's Encrypt: `sudo "
            "certbot certonly --standalone -d NAME`), or a local CA the clients are told to trust.",
        ),
    ),
}

# Evidence lines -----------------------------------------------------------------------------------

FACT_THRESHOLD = "net.ipv4.ip_unprivileged_port_start is {threshold} (read from {path})"
FACT_THRESHOLD_DEFAULT = "no ip_unprivileged_port_start sysctl (kernel older than 4.11): the floor is 1024"
FACT_IDENTITY = "running as {who}; CapEff {capeff:016x}, so CAP_NET_BIND_SERVICE is {cap_state}"
FACT_IDENTITY_MAC = "running as {who}, not root"
FACT_AMBIENT = "ambient capabilities {capamb:016x}; NoNewPrivs {nnp}"
FACT_NETNS_OUTSIDE = "the user namespace owning this network namespace is outside ours (NS_GET_USERNS answered EPERM)"
FACT_NETNS_UNKNOWN = "network namespace owner unknown; uid_map is {uid_map}"
FACT_LISTENER = "{state} {where} {owner} (from {source})"
FACT_TIME_WAIT = "{count} TIME_WAIT connection(s) on port {port}, the longest with {seconds} s left"
FACT_ERROR = "the bind failed with {error}"
FACT_AUTHBIND = "authbind is active (AUTHBIND_LIB is set)"
FACT_LSM = "security module: {lsm}"
FACT_RANGE = "excluded port range {start}-{end}{administered}"
FACT_DYNAMIC = "dynamic port range starts at {start} with {count} ports"
FACT_HTTPSYS_QUEUE = "http.sys request queue served by {processes}: {urls}"
FACT_HTTPSYS_URLS = "http.sys URL registrations on this port: {urls} (processes not linked in this view)"
FACT_IPLISTEN = "http.sys IP listen list: {addresses}"
FACT_RESERVATIONS = "URL reservations on this port (permissions only, not listeners): {urls}"
FACT_NOT_VISIBLE = "the process table of other users is hidden from this user"
FACT_FD = "descriptor {fd}: {state}"
FACT_RESOLVED = "{host} resolves to {addresses}"
FACT_NOT_LOCAL = "no network interface here has {address}: a trial bind to it (port 0, nothing sent) failed with 'address not available'"
ADDRESS_OF_NAME = "{host} (resolved to {address})"
FACT_OTHER_ENDPOINT = "also requested: {other}"
FACT_TLS_FILE = "{role} {path}: owner {owner}:{group}, mode {mode:04o}; running as {who}"
FACT_TLS_CERT = "certificate {position}: {subject}, issued by {issuer}, valid {start} to {end}"
FACT_TLS_NAMES = "names in the certificate: {names}"
FACT_WINDOWS_SIDE = "Windows side (through WSL interop): {state} {where} {owner}"

DYNAMIC_REMEDY_WIDENED = (
    "The dynamic port range was widened (it starts at {start} with {count} ports; the default is 49152 with "
    "16384), which lets WinNAT reserve low ports. As administrator restore it: `netsh int ipv4 set dynamicport "
    "tcp start=49152 num=16384` (and the same for ipv6), then restart winnat."
)
DYNAMIC_REMEDY_DEFAULT = (
    "Ranges move after a reboot. If this keeps happening, check the dynamic port range with `netsh int ipv4 "
    "show dynamicport tcp` (the default is 49152 with 16384 ports)."
)
ADMINISTERED_NOTE = " added by an administrator; remove it with `netsh int ipv4 delete excludedportrange protocol=tcp startport={start} numberofports={count}`"
LIST_ADDRESSES = {"linux": "`ip -brief address`", "darwin": "`ifconfig`", "win32": "`ipconfig`"}
ADDR_IPV6_NOTE = (
    "For an IPv6 address: IPv6 may be disabled here (Linux: `sysctl net.ipv6.conf.all.disable_ipv6`, 1 means "
    "disabled), or the address may still be under duplicate address detection just after its interface came "
    "up; use an IPv4 address then, or retry a few seconds later."
)

# Layout of a rendered finding -----------------------------------------------------------------------

HEADLINE = {
    "explain": "kestrelpy cannot listen on {endpoint} [{code}]",
    "error": "Listening on {endpoint} will fail [{code}]",
    "warning": "Listening on {endpoint} may not work as expected [{code}]",
    "info": "Note about {endpoint} [{code}]",
}
FACTS_HEADING = "What the guard found:"
REMEDIES_HEADING = "How to fix it:"
CHECK_CLEAR = "No problems found: kestrelpy should be able to listen on {endpoints}."
CHECK_CLEAR_NOTES = "No bind on {endpoints} is expected to fail; see the notes above."
CHECK_SUMMARY = "{errors} error(s), {warnings} warning(s)."
CHECK_DUMPED = "Wrote {count} raw probe input file(s) to {directory}; attach them to a bug report."
