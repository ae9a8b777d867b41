"""`ray start` for a second node on 127.0.0.1 (the tests' cluster only).

With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray keeps every process on 127.0.0.1, but `ray start --address`
then refuses to add a node ("Multi-node Ray clusters are not supported on Windows and OSX"), and with the
variable at 1 it replaces 127.0.0.1 by the machine's outward address. This wrapper lifts only that refusal
and keeps the node's address at 127.0.0.1; the processes `ray start` spawns inherit the variable at 0, so
they stay on loopback as the head's do. Usage: python tests/ray_node.py start --address 127.0.0.1:PORT ...
"""

from __future__ import annotations

import sys

import ray._private.ray_constants as constants
import ray._private.services as services

constants.ENABLE_RAY_CLUSTER = True  # the refusal in `ray start`; nothing else of this process reads it after
services.get_node_ip_address = lambda address=None: "127.0.0.1"
services.resolve_ip_for_localhost = lambda host: host

from ray.scripts.scripts import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["ray", *sys.argv[1:]]
    main()
