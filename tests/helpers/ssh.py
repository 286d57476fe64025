"""OpenSSH on loopback for the install tests: a server whose one key runs a
forced command, as the README tells operators to set it up."""

import getpass
import os
import socket
import subprocess
import time
from contextlib import contextmanager

from helpers.ports import free_port


@contextmanager
def sshd_forcing(command, tmp_path):
    """An OpenSSH server on loopback whose one key runs `command`; yields the
    ssh command line to reach it."""
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir(mode=0o700)
    host_key, user_key = ssh_dir / "host_ed25519", ssh_dir / "operator_ed25519"
    for k in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True, timeout=30)
    auth = ssh_dir / "authorized_keys"
    auth.write_text('restrict,command="%s" %s' % (command, open(str(user_key) + ".pub").read()))
    os.chmod(auth, 0o600)
    port = free_port()
    conf = ssh_dir / "sshd_config"
    conf.write_text("\n".join([
        "Port %d" % port, "ListenAddress 127.0.0.1", "HostKey %s" % host_key,
        "AuthorizedKeysFile %s" % auth, "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "PidFile %s" % (ssh_dir / "sshd.pid"), "LogLevel ERROR", ""]))
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield ["ssh", "-i", str(user_key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               "%s@127.0.0.1" % getpass.getuser()]
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
