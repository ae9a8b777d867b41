"""`python -m cotforge.sim CONFIG_JSON`: how `SimProcess` starts the simulator (users run `cotforge teacher-sim`)."""

import sys

from cotforge.sim.config import SimConfig
from cotforge.sim.server import serve

if len(sys.argv) != 2:
    sys.exit("usage: python -m cotforge.sim '<SimConfig as JSON>' (or run `cotforge teacher-sim --help`)")
serve(SimConfig.model_validate_json(sys.argv[1]))
