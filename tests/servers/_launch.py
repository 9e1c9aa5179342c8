"""`python -I -S _launch.py SOCKET SCRIPT [ARGS...]`: the fixture server SCRIPT, forked by the fork
server listening on SOCKET (`_forkserver.py`) with this process's stdin, stdout and stderr; this
process ends with it and with its exit status, and stopping this process stops it."""

import json
import os
import socket
import sys

with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
    connection.connect(sys.argv[1])
    request = {"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}
    socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
    # The server alone holds the pipes now: its exit is their end.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    status = connection.recv(1)
sys.exit(status[0] if status else 1)
